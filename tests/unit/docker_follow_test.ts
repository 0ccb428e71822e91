/** Following Docker's events: a stream that ends cleanly is re-opened with a growing backoff, like a broken one. */
import assert from "node:assert/strict";
import { followEvents } from "../../src/daemon/events.ts";
import type { DockerClient } from "../../src/docker/client.ts";
import type { Reconciler } from "../../src/daemon/reconcile.ts";
import { createLogger } from "../../src/log.ts";

Deno.test("followEvents: a cleanly ended event stream reconnects with backoff, not in a loop", async () => {
  const ac = new AbortController();
  const opened: number[] = [];
  const warnings: number[] = [];
  const docker = {
    negotiate: () => Promise.resolve(),
    // deno-lint-ignore require-yield
    events: async function* () {
      opened.push(performance.now());
    },
  } as unknown as DockerClient;
  const reconciler = { markAll: () => Promise.resolve(0), mark() {}, forget() {} } as unknown as Reconciler;
  const log = createLogger({
    level: "warn",
    format: "json",
    write: (line) => {
      const e = JSON.parse(line);
      if (e.msg === "docker event stream ended; reconnecting") warnings.push(e.retryMs);
    },
  });
  const done = followEvents({
    docker,
    reconciler,
    log,
    signal: ac.signal,
    state: { dockerConnected: false },
  });
  await new Promise((r) => setTimeout(r, 1600));
  ac.abort();
  await done;
  assert.ok(opened.length >= 2 && opened.length <= 4, `${opened.length} streams opened in 1.6 s`);
  assert.ok(warnings.every((ms) => ms >= 500), `every reconnect waits at least 500 ms: ${warnings}`);
  assert.ok(warnings.length >= 2 && warnings[1] >= warnings[0] * 0.5, `backoff grows: ${warnings}`);
});
