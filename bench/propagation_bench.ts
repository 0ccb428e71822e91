/**
 * How long a KV change takes to reach 50 running containers. One private dockerd, one Consul agent, one
 * daemon (nsenter mode); 50 opted-in containers that all use the changed key (25 protect not listing it,
 * 25 allowlist listing it). Each change is a PUT of a new CIDR; the clock runs from just before the PUT to
 * the 50th "applied" log line after it (the daemon's own timestamp, and when this process saw the line).
 * After each change every container's iptables-save is checked for the new CIDR and against the old one
 * (not timed). Bounded: fixed counts, 60 s per change, everything removed at the end.
 *
 *   deno run -A bench/propagation_bench.ts        (as root; PROPAGATION_BENCH_CHANGES=10)
 *
 * Writes bench/results/propagation.json.
 */
import { iptablesIn, type LogEntry, ruleLines, waitFor } from "../tests/support/egresstrator.ts";
import { appliedCount, machine, optIn, pool, stats, withLive } from "../tests/support/live.ts";

const CONTAINERS = 50;
const CHANGES = Number(Deno.env.get("PROPAGATION_BENCH_CHANGES") ?? "10");
const WARMUP = 2;
const CHANGE_TIMEOUT_MS = 60_000;
const COMMAND = "deno run -A bench/propagation_bench.ts";
const cidr = (i: number) => `10.50.${100 + i}.0/24`;

interface Sample {
  change: number;
  /** PUT start to the 50th applied line, by the daemon's log timestamps (ms resolution). */
  daemonMs: number;
  /** PUT start to this process seeing the 50th line (includes log pipe and 10 ms polling). */
  observedMs: number;
  /** PUT start to the first applied line (daemon timestamp). */
  firstMs: number;
  /** How long the PUT itself took. */
  putMs: number;
}

const result = await withLive({}, async (env) => {
  await env.put("k", `${cidr(0)}:tcp/443\n`);
  await env.put("other", "10.50.1.0/24:tcp/443\n");
  const p = await env.daemon();
  await p.waitForLog((e) => e.msg === "connected to docker", 30_000, "connected to docker");
  const specs = Array.from(
    { length: CONTAINERS },
    (_, i) => i % 2 ? { env: optIn(["other"], "protect") } : { env: optIn(["k"], "allowlist") },
  );
  const t0 = performance.now();
  const cs = await env.runMany(specs, 10);
  await waitFor(() => cs.every((c) => appliedCount(p, c.name) > 0), 180_000, "all containers applied");
  const setupMs = performance.now() - t0;
  console.log(`${CONTAINERS} containers enforced ${setupMs.toFixed(0)} ms after the first start request`);
  const names = new Set(cs.map((c) => c.name));

  const samples: Sample[] = [];
  for (let i = 1; i <= WARMUP + CHANGES; i++) {
    const from = p.logs().length;
    const wall0 = Date.now();
    const t = performance.now();
    await env.put("k", `${cidr(i)}:tcp/443\n`);
    const putMs = performance.now() - t;
    let done: LogEntry[] = [];
    const observedMs = await (async () => {
      while (performance.now() - t < CHANGE_TIMEOUT_MS) {
        const seen = new Map<string, LogEntry>();
        for (const e of p.logs().slice(from)) {
          if (e.msg === "applied" && names.has(String(e.container)) && !seen.has(String(e.container))) {
            seen.set(String(e.container), e);
          }
        }
        if (seen.size === CONTAINERS) {
          done = [...seen.values()];
          return performance.now() - t;
        }
        await new Promise((r) => setTimeout(r, 10));
      }
      throw new Error(`change ${i}: not every container applied within ${CHANGE_TIMEOUT_MS} ms`);
    })();
    const times = done.map((e) => Date.parse(String(e.time)) - wall0);
    // Verify in the namespaces (not timed): the new CIDR everywhere, the previous one nowhere.
    const bad: string[] = [];
    await pool(cs, 8, async (c) => {
      const lines = ruleLines(await iptablesIn(c.id, "ipv4", env.d.host));
      const ok = lines.some((l) => l.includes(`-d ${cidr(i)} `)) &&
        !lines.some((l) => l.includes(`-d ${cidr(i - 1)} `));
      if (!ok) bad.push(c.name);
    });
    if (bad.length) {
      throw new Error(`change ${i}: ${bad.length} containers lack ${cidr(i)}: ${bad.join(", ")}`);
    }
    const s = { change: i, daemonMs: Math.max(...times), observedMs, firstMs: Math.min(...times), putMs };
    console.log(
      `${i <= WARMUP ? "warm-up" : "change"} ${i}: 50th apply ${s.daemonMs} ms (seen ${
        observedMs.toFixed(0)
      } ms), first ${s.firstMs} ms, PUT ${putMs.toFixed(1)} ms`,
    );
    if (i > WARMUP) samples.push(s);
    await new Promise((r) => setTimeout(r, 500));
  }
  await p.stop();
  return { setupMs, samples };
});

const summary = {
  daemonMs: stats(result.samples.map((s) => s.daemonMs)),
  observedMs: stats(result.samples.map((s) => s.observedMs)),
  firstMs: stats(result.samples.map((s) => s.firstMs)),
  putMs: stats(result.samples.map((s) => s.putMs)),
};
const out = {
  command: COMMAND,
  machine: await machine(),
  containers: CONTAINERS,
  changes: CHANGES,
  warmup: WARMUP,
  mode: "nsenter",
  concurrency: 8,
  setupMs: Math.round(result.setupMs),
  summary,
  samples: result.samples,
};
await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  new URL("./results/propagation.json", import.meta.url),
  JSON.stringify(out, null, 2) + "\n",
);
console.log("\nPUT -> all 50 containers applied (ms):");
for (const [k, v] of Object.entries(summary)) {
  console.log(`  ${k.padEnd(11)} median ${v.median}  p90 ${v.p90}  min ${v.min}  max ${v.max}`);
}
console.log("wrote bench/results/propagation.json");
