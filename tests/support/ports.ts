/**
 * Free TCP ports on 127.0.0.1, for agents and servers the tests start and for addresses where nothing must
 * answer. A port is released before it is returned: something else may take it meanwhile (rarely).
 */

/** `n` distinct ports that were free a moment ago; all are held until every one is picked. */
export function freePorts(n: number): number[] {
  const listeners = Array.from({ length: n }, () => Deno.listen({ hostname: "127.0.0.1", port: 0 }));
  const ports = listeners.map((l) => l.addr.port);
  for (const l of listeners) l.close();
  return ports;
}

/** A port that was free a moment ago, so nothing answers there (until something takes it). */
export function freePort(): number {
  return freePorts(1)[0];
}
