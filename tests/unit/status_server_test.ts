/** The status server: gate endpoints on the unix socket only, bounded bodies, a bind failure is fatal. */
import assert from "node:assert/strict";
import {
  fetchStatus,
  MAX_BODY_BYTES,
  serveStatus,
  type StatusSource,
} from "../../src/daemon/status_server.ts";
import { createLogger } from "../../src/log.ts";
import { AppError } from "../../src/errors.ts";

const log = createLogger({ level: "error", format: "text", write: () => {} });

function source(seen: unknown[]): StatusSource {
  return {
    report: () => ({ docker: { connected: true } }) as never,
    metrics: () => "x 1\n",
    gateRender: (body) => (seen.push(body), Promise.resolve(Response.json({ ok: true }))),
    gateApplied: (body) => (seen.push(body), new Response(null, { status: 204 })),
  };
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

Deno.test("status server: over tcp:// it is read-only; the gate endpoints answer on the unix socket only", async () => {
  const dir = await Deno.makeTempDir({ prefix: "egt-status-" });
  const stop = new AbortController();
  const seen: unknown[] = [];
  try {
    const tcp = `tcp://127.0.0.1:${freePort()}`;
    const unix = `unix://${dir}/s.sock`;
    const servers = [
      await serveStatus(tcp, source(seen), log, stop.signal),
      await serveStatus(unix, source(seen), log, stop.signal),
    ];
    assert.equal((await Deno.stat(`${dir}/s.sock`)).mode! & 0o777, 0o600);
    const report = {
      id: "a".repeat(12),
      hash: "h",
      acls: [],
      policy: "protect",
      ruleCount: 1,
      denied: false,
    };
    for (const path of ["/v1/gate/applied", "/v1/gate/render"]) {
      const viaTcp = await fetchStatus(tcp, path, 2000, report);
      assert.equal(viaTcp.status, 405, `${path} over tcp`);
      await viaTcp.body?.cancel();
    }
    assert.deepEqual(seen, [], "nothing reached the gate handlers over tcp");
    assert.equal((await fetchStatus(tcp, "/metrics")).status, 200);
    const viaUnix = await fetchStatus(unix, "/v1/gate/applied", 2000, report);
    assert.equal(viaUnix.status, 204);
    assert.equal(seen.length, 1);
    const big = await fetchStatus(unix, "/v1/gate/render", 2000, {
      env: ["X=" + "y".repeat(MAX_BODY_BYTES)],
    });
    assert.equal(big.status, 400, "a body over the limit is refused");
    await big.body?.cancel();
    assert.equal(seen.length, 1);
    stop.abort();
    await Promise.all(servers.map((s) => s.finished));
  } finally {
    stop.abort();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("status server: an address it cannot bind is an error, not a warning", async () => {
  const held = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const stop = new AbortController();
  try {
    await assert.rejects(
      serveStatus(`tcp://127.0.0.1:${(held.addr as Deno.NetAddr).port}`, source([]), log, stop.signal),
      (err) =>
        err instanceof AppError &&
        /status server cannot listen on tcp:\/\/127\.0\.0\.1:\d+/.test(err.message),
    );
  } finally {
    held.close();
    stop.abort();
  }
});
