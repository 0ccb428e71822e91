/**
 * Time to enforce (issue "Enforcement"): from a container's start to its rules being in its network
 * namespace, under the running daemon, for 1 and 30 concurrent `docker start`s of opted-in containers, in
 * both apply modes (nsenter, and `--mode helper -i egresstrator-test/helper:1`). Two clocks per case:
 *   - the daemon's own egresstrator_time_to_enforce_seconds histogram (Docker's start event time to
 *     rules in place): sum/count per run, i.e. one mean per run;
 *   - an external check per container: from the `POST /containers/{id}/start` call's return, a host shell
 *     in the container's netns polls `iptables-save` until the key's REJECT line is there.
 * Beside them, in the same run and on the same dockerd, the bare cost of writing the same text with no
 * daemon: `nsenter --net=/proc/<pid>/ns/net iptables-restore` of the IPv4 text, the same with both
 * families (`iptables-restore` then `ip6tables-restore`, one nsenter), and the nsenter applier's script
 * (both restores at once; and with the save it makes when it does not know what is there), N=30 each.
 * Bounded: fixed counts, 60 s per poll, 180 s per run; containers removed after each run.
 *
 *   deno run -A bench/enforce_bench.ts        (as root)
 *
 * Writes bench/results/enforce.json.
 */
import { applyPayload, EMPTY_RULES } from "../src/apply/applier.ts";
import { BUSYBOX_IMAGE, createTestContainer, HELPER_IMAGE, testName } from "../tests/support/docker.ts";
import { containerPid, type DaemonProc, runCli, waitFor } from "../tests/support/egresstrator.ts";
import {
  getMetrics,
  type LiveEnv,
  machine,
  metricValue,
  optIn,
  type Stats,
  stats,
  withLive,
} from "../tests/support/live.ts";

const COMMAND = "deno run -A bench/enforce_bench.ts";
const CASES: { batch: number; runs: number; pollS: number }[] = [
  { batch: 1, runs: 10, pollS: 0.02 },
  { batch: 30, runs: 3, pollS: 0.1 },
];
const BARE_N = 30;
const KEY_CIDR = "10.50.100.0/24";
const dec = new TextDecoder();
const wallNow = () => performance.timeOrigin + performance.now();

async function create(host: string, env: string[]): Promise<string> {
  const opts = { host, name: testName("enf"), cmd: ["sleep", "3600"], env, stopTimeout: 1 };
  return (await createTestContainer(opts)).id;
}

/** Poll from the host, inside the container's netns, until the REJECT line shows; the wall time in ms. */
async function seenAt(host: string, id: string, pollS: number): Promise<number> {
  const pid = await containerPid(id, host);
  const script = `n=0; until iptables-save -t filter | grep -q -- "-d $1 "; do ` +
    `n=$((n+1)); [ "$n" -gt "$3" ] && exit 9; sleep "$2"; done; date +%s%N`;
  const out = await new Deno.Command("nsenter", {
    args: [
      `--net=/proc/${pid}/ns/net`,
      "--",
      "sh",
      "-c",
      script,
      "sh",
      KEY_CIDR,
      String(pollS),
      String(60 / pollS),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`poll ${id.slice(0, 12)}: exit ${out.code} ${dec.decode(out.stderr)}`);
  return Number(dec.decode(out.stdout).trim()) / 1e6;
}

async function histogram(listen: string, mode: string): Promise<{ sum: number; count: number }> {
  const text = await getMetrics(listen);
  return {
    sum: metricValue(text, "egresstrator_time_to_enforce_seconds_sum", { mode }),
    count: metricValue(text, "egresstrator_time_to_enforce_seconds_count", { mode }),
  };
}

/** One run: create `batch` containers, start them all at once, time both clocks, remove them. */
async function run(env: LiveEnv, mode: string, batch: number, pollS: number) {
  const c = env.d.client();
  const ids: string[] = [];
  try {
    for (let i = 0; i < batch; i++) ids.push(await create(env.d.host, optIn([], "protect")));
    const h0 = await histogram(env.listen, mode);
    const external = await Promise.all(ids.map(async (id) => {
      await c.startContainer(id);
      const started = wallNow();
      return (await seenAt(env.d.host, id, pollS)) - started;
    }));
    await waitFor(
      async () => (await histogram(env.listen, mode)).count - h0.count >= batch,
      30_000,
      `${batch} time-to-enforce observations`,
    );
    const h1 = await histogram(env.listen, mode);
    const daemonMeanMs = ((h1.sum - h0.sum) / (h1.count - h0.count)) * 1000;
    return { external, daemonMeanMs };
  } finally {
    await Promise.all(ids.map((id) => c.removeContainer(id, { force: true }).catch(() => {})));
    c.close();
  }
}

async function timedNsenter(pid: number, args: string[], stdin?: string, envs?: Record<string, string>) {
  const t = performance.now();
  const child = new Deno.Command("nsenter", {
    args: [`--net=/proc/${pid}/ns/net`, "--", ...args],
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: envs,
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const ms = performance.now() - t;
  if (!out.success) throw new Error(`nsenter ${args.join(" ")}: ${dec.decode(out.stderr)}`);
  return ms;
}

/** The same rules written without the daemon, into a container that does not opt in. */
async function bare(env: LiveEnv) {
  const [ref, target] = await env.runMany([{ env: optIn([], "protect") }, { env: [] }]);
  const render = async (family: string) => {
    const r = await runCli(
      ["-c", env.consul.address, "-k", env.prefix, "-H", env.d.host, "render", ref.name, "--family", family],
      { timeoutMs: 60_000 },
    );
    if (r.code !== 0) throw new Error(`render: ${r.stderr}`);
    return r.stdout;
  };
  const ipv4 = await render("ipv4");
  const ipv6 = await render("ipv6");
  if (!ipv4.includes(KEY_CIDR)) throw new Error(`rendered text lacks ${KEY_CIDR}:\n${ipv4}`);
  const pid = await containerPid(target.id, env.d.host);
  // The daemon's first write into a fresh namespace (rollback text known: empty), and the same without it
  // (a save of both families first), beside the bare restores of the same texts.
  const fresh = applyPayload({ ipv4, ipv6 }, true, EMPTY_RULES);
  const saved = applyPayload({ ipv4, ipv6 });
  const path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  const bothScript = `printf '%s' "$V4" | iptables-restore && printf '%s' "$V6" | ip6tables-restore`;
  const restore: number[] = [];
  const restoreBoth: number[] = [];
  const applyScript: number[] = [];
  const applyScriptSaved: number[] = [];
  for (let i = 0; i < BARE_N; i++) {
    restore.push(await timedNsenter(pid, ["iptables-restore"], ipv4));
    restoreBoth.push(
      await timedNsenter(pid, ["sh", "-c", bothScript], undefined, { PATH: path, V4: ipv4, V6: ipv6 }),
    );
    applyScript.push(
      await timedNsenter(pid, ["sh", "-c", fresh.script], undefined, { PATH: path, ...fresh.env }),
    );
    applyScriptSaved.push(
      await timedNsenter(pid, ["sh", "-c", saved.script], undefined, { PATH: path, ...saved.env }),
    );
  }
  const c = env.d.client();
  await Promise.all([ref, target].map((x) => c.removeContainer(x.id, { force: true }).catch(() => {})));
  c.close();
  return {
    restoreV4: stats(restore),
    restoreBoth: stats(restoreBoth),
    applyScript: stats(applyScript),
    applyScriptWithSave: stats(applyScriptSaved),
    ipv4TextLines: ipv4.split("\n").length,
  };
}

/** One mode x batch case. */
interface CaseResult {
  mode: string;
  batch: number;
  runs: number;
  pollIntervalMs: number;
  daemonRunMeansMs: number[];
  daemon: Stats;
  external: Stats;
  externalSamplesMs: number[];
}

/** ENFORCE_BENCH_MODES=nsenter (or helper) runs one mode only. */
const MODES: { mode: string; args: string[] }[] = [
  { mode: "nsenter", args: [] },
  { mode: "helper", args: ["--mode", "helper", "-i", HELPER_IMAGE] },
].filter((m) => (Deno.env.get("ENFORCE_BENCH_MODES") ?? "nsenter,helper").split(",").includes(m.mode));

const results = await withLive({ images: [BUSYBOX_IMAGE, HELPER_IMAGE] }, async (env) => {
  await env.put("k", `${KEY_CIDR}:tcp/443\n`);
  const out: CaseResult[] = [];
  const bareByMode: Record<string, unknown> = {};
  for (const { mode, args } of MODES) {
    const p: DaemonProc = await env.daemon(args);
    await p.waitForLog((e) => e.msg === "connected to docker", 30_000, "connected to docker");
    await run(env, mode, 1, 0.02); // warm-up: first helper container, first template render
    for (const { batch, runs, pollS } of CASES) {
      const external: number[] = [];
      const daemonMeans: number[] = [];
      for (let r = 0; r < runs; r++) {
        const res = await run(env, mode, batch, pollS);
        external.push(...res.external);
        daemonMeans.push(res.daemonMeanMs);
        console.log(
          `${mode} x${batch} run ${r + 1}: daemon mean ${res.daemonMeanMs.toFixed(0)} ms, external median ${
            stats(res.external).median
          } ms, max ${stats(res.external).max} ms`,
        );
      }
      out.push({
        mode,
        batch,
        runs,
        pollIntervalMs: pollS * 1000,
        daemonRunMeansMs: daemonMeans.map((x) => Math.round(x * 10) / 10),
        daemon: stats(daemonMeans),
        external: stats(external),
        externalSamplesMs: external.map((x) => Math.round(x * 10) / 10),
      });
    }
    bareByMode[mode] = await bare(env);
    console.log(`bare (${mode} run): ${JSON.stringify(bareByMode[mode])}`);
    await p.stop();
  }
  return { cases: out, bare: bareByMode };
});

const report = { command: COMMAND, machine: await machine(), bareN: BARE_N, ...results };
await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  new URL("./results/enforce.json", import.meta.url),
  JSON.stringify(report, null, 2) + "\n",
);
console.log("\ncase          daemon (run means) median / p90   external (per container) median / p90");
for (const c of results.cases) {
  const cell = (s: { median: number; p90: number }) => `${s.median} / ${s.p90} ms`.padEnd(34);
  console.log(`${`${c.mode} x${c.batch}`.padEnd(14)}${cell(c.daemon)}${cell(c.external)}`);
}
for (const [mode, b] of Object.entries(results.bare)) console.log(`bare (${mode} run): ${JSON.stringify(b)}`);
console.log("wrote bench/results/enforce.json");
