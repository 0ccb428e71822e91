/** The hostile first-packet client of the gate and hook tests: its very first action connects to the server. */

/** Exit codes of the hostile script. */
export const CONNECTED = 42, BLOCKED = 43, OTHER = 44;

/**
 * The hostile client's shell script. Busybox nc prints the server's "hi" when it got through; a REJECT
 * (tcp-reset) reads "Connection refused". `then: "sleep"` keeps the container up after the verdict.
 */
export function hostileScript(ip: string, then: "exit" | "sleep" = "exit"): string {
  const end = (code: number) => (then === "exit" ? `exit ${code}` : "exec sleep 600");
  return `r=$(nc -w 1 ${ip} 8080 </dev/null 2>&1); case "$r" in ` +
    `hi) echo CONNECTED; ${end(CONNECTED)};; ` +
    `*refused*) echo "BLOCKED: $r"; ${end(BLOCKED)};; ` +
    `*) echo "OTHER: $r"; ${end(OTHER)};; esac`;
}
