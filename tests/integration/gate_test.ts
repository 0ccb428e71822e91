/**
 * The runtime gate end to end: a private dockerd with `egresstrator runtime` registered as an OCI runtime
 * (a wrapper script running `deno run -A main.ts runtime "$@"`), a real Consul agent, and where needed the
 * real daemon. The proof that matters: an opted-in container whose very first action is a connection to a
 * destination its ACLs forbid never gets through, over many starts; without the gate some do (the window).
 *
 * EGT_GATE_STARTS (default 100) and EGT_GATE_CONCURRENCY (default 4) size the hostile runs; CI uses the
 * defaults. The window figure goes to bench/results/gate_window.json for bench/README.md.
 */
import { BLOCKED, CONNECTED, hostileScript, OTHER } from "../support/hostile.ts";
import assert from "node:assert/strict";
import { type PrivateDockerd, type PrivateNetwork, startPrivateDockerd } from "../support/dockerd.ts";
import { type ConsulAgent, startConsul } from "../support/consul.ts";
import {
  type DaemonProc,
  iptablesIn,
  REJECT_ALL_LINE,
  rejectLine,
  REPO_ROOT,
  startDaemon,
  waitFor,
} from "../support/egresstrator.ts";
import {
  BUSYBOX_IMAGE,
  containerIp,
  dockerCli,
  HELPER_IMAGE,
  requireImage,
  RUN_ID,
  TEST_LABEL,
} from "../support/docker.ts";
import { shimPath, writeGateWrapper } from "../support/gate.ts";
import { pool } from "../support/live.ts";
import type { CliResult } from "../support/run_cli.ts";
import { freePort } from "../support/ports.ts";
import { fetchStatus } from "../../src/daemon/status_server.ts";
import { startTestDns } from "../support/dns_server.ts";

await requireImage(BUSYBOX_IMAGE);

const STARTS = Number(Deno.env.get("EGT_GATE_STARTS") ?? "100");
const CONCURRENCY = Number(Deno.env.get("EGT_GATE_CONCURRENCY") ?? "4");
const KV_PREFIX = "egress/acl/";
const GATE = "egresstrator";
const dec = new TextDecoder();

/** What a test has to work with. */
interface Env {
  dir: string;
  dockerd: PrivateDockerd;
  consul: ConsulAgent;
  net: PrivateNetwork;
  serverIp: string;
  /** The server container's name, which Docker's embedded DNS answers on the test network. */
  serverName: string;
  daemon?: DaemonProc;
  listen: string;
  gateLog: string;
  docker(args: string[], timeoutMs?: number): Promise<CliResult>;
  /** (Re)write the gate's env file: the defaults below, then `extra` (undefined removes a key). */
  writeGateEnv(extra?: Record<string, string | undefined>): Promise<void>;
  gateLines(id?: string): Promise<Record<string, unknown>[]>;
}

async function inspectState(d: PrivateDockerd, id: string) {
  const c = d.client();
  try {
    const raw = await c.rawJson<
      { Id: string; State: { Running: boolean; StartedAt: string; Error: string } }
    >({
      what: `inspect ${id}`,
      path: `/containers/${id}/json`,
    });
    return { ...raw.State, Id: raw.Id };
  } finally {
    c.close();
  }
}

/**
 * Start everything a test needs, run `fn`, and take it all down again (dockerd with its containers,
 * network and host FORWARD rule; Consul; the daemon; the temp dir).
 */
async function withGateEnv(
  opts: { daemon: boolean; acl?: boolean; daemonArgs?: string[]; images?: string[] },
  fn: (env: Env) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "egt-gate-" });
  const cleanups: (() => Promise<unknown>)[] = [() => Deno.remove(dir, { recursive: true })];
  let failure: { err: unknown } | undefined;
  try {
    const runtime = await writeGateWrapper(dir);
    const [d, c] = await Promise.allSettled([
      startPrivateDockerd({ runtimes: { [GATE]: runtime }, images: opts.images }),
      startConsul({ acl: opts.acl }),
    ]);
    if (d.status === "fulfilled") cleanups.unshift(() => d.value.stop());
    if (c.status === "fulfilled") cleanups.unshift(() => c.value.stop());
    if (d.status === "rejected") throw d.reason;
    if (c.status === "rejected") throw c.reason;
    const [dockerd, consul] = [d.value, c.value];
    const net = await dockerd.createNetwork();
    const server = await dockerd.run({
      cmd: ["nc", "-ll", "-p", "8080", "-e", "echo", "hi"],
      network: net.name,
    });
    const serverIp = await containerIp(server.id, net.name, dockerd.host);
    await consul.putKv(`${KV_PREFIX}srv`, `${serverIp}/32:tcp/8080\n`);
    await consul.putKv(`${KV_PREFIX}other`, "10.99.99.99/32:tcp/9\n");
    const listen = `unix://${dir}/egt.sock`;
    const gateLog = `${dir}/gate.log`;
    let daemon: DaemonProc | undefined;
    if (opts.daemon) {
      daemon = await startDaemon({
        args: [
          "-c",
          consul.address,
          "-k",
          KV_PREFIX,
          "-H",
          dockerd.host,
          "--listen",
          listen,
          "--log-level",
          "debug",
          ...(opts.daemonArgs ?? []),
        ],
      });
      cleanups.unshift(() => daemon!.stop());
      await daemon.waitForLog((e) => e.msg === "connected to docker", 30_000, "connected to docker");
      await daemon.waitForLog((e) => e.msg === "status server listening", 5_000, "status server");
    }
    const docker = (args: string[], timeoutMs?: number) => dockerCli(args, { host: dockerd.host, timeoutMs });
    const writeGateEnv = async (extra: Record<string, string | undefined> = {}) => {
      const vars: Record<string, string | undefined> = {
        CONSUL_HTTP_ADDR: consul.address,
        CONSUL_PATH: KV_PREFIX,
        EGRESSTRATOR_LISTEN: listen,
        EGRESSTRATOR_GATE_LOG: gateLog,
        EGRESSTRATOR_GATE_TIMEOUT: "3s",
        ...extra,
      };
      const text = Object.entries(vars).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${v}`)
        .join("\n");
      await Deno.writeTextFile(`${dir}/gate.env.tmp`, text + "\n");
      await Deno.rename(`${dir}/gate.env.tmp`, `${dir}/gate.env`);
    };
    const gateLines = async (id?: string) => {
      const text = await Deno.readTextFile(gateLog).catch(() => "");
      const all = text.split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
      return id ? all.filter((l) => l.id === id) : all;
    };
    await writeGateEnv();
    await fn({
      dir,
      dockerd,
      consul,
      net,
      serverIp,
      serverName: server.name,
      daemon,
      listen,
      gateLog,
      docker,
      writeGateEnv,
      gateLines,
    });
  } catch (err) {
    failure = { err };
  }
  const problems: string[] = [];
  for (const c of cleanups) await c().catch((err) => problems.push(String(err?.message ?? err)));
  if (failure) throw failure.err;
  if (problems.length) throw new Error(`cleanup: ${problems.join("; ")}`);
}

/** `docker run` options: the test network and the label that cleanup goes by. */
function onNetwork(env: Env): string[] {
  return ["--network", env.net.name, "--label", `${TEST_LABEL}=${RUN_ID}`];
}

/** `docker run` words from `--runtime` to the image: the gate, the test network, opted in with key `acl`. */
function gated(env: Env, acl: string, args: string[]): string[] {
  return ["--runtime", GATE, ...onNetwork(env), ...optedIn(acl), ...args, BUSYBOX_IMAGE];
}

/** `docker run --rm` through the gate, opted in with key `acl`; `args` before the image. */
function gatedRun(env: Env, acl: string, args: string[], cmd: string[]) {
  return env.docker(["run", "--rm", ...gated(env, acl, args), ...cmd]);
}

/** `docker run` options that opt the container in with one ACL key. */
function optedIn(acl: string): string[] {
  return ["-e", "EGRESSTRATOR_ENABLE=1", "-e", `EGRESSTRATOR_ACL=${acl}`];
}

type Style = "run" | "detached" | "create-start";
const STYLES: Style[] = ["run", "detached", "create-start"];

interface Outcome {
  style: Style;
  code: number;
  out: string;
  ms: number;
}

/** Start one container and wait for it to end, in one of three ways users start containers. */
async function startOnce(env: Env, style: Style, runArgs: string[], cmd: string[]): Promise<Outcome> {
  const t0 = performance.now();
  const common = [
    ...onNetwork(env),
    ...runArgs,
    BUSYBOX_IMAGE,
    ...cmd,
  ];
  let code: number, out: string;
  if (style === "run") {
    const r = await env.docker(["run", "--rm", ...common]);
    [code, out] = [r.code, r.stdout + r.stderr];
  } else {
    const first = style === "detached" ? await env.docker(["run", "-d", ...common]) : await env.docker([
      "create",
      ...common,
    ]);
    if (first.code !== 0) return { style, code: first.code, out: first.stderr, ms: performance.now() - t0 };
    const id = first.stdout.trim();
    if (style === "detached") {
      const w = await env.docker(["wait", id]);
      code = w.code === 0 ? Number(w.stdout.trim()) : w.code;
      const logs = await env.docker(["logs", id]);
      out = logs.stdout + logs.stderr;
    } else {
      const s = await env.docker(["start", "-a", id]);
      [code, out] = [s.code, s.stdout + s.stderr];
    }
    await env.docker(["rm", "-f", id]);
  }
  return { style, code, out: out.trim(), ms: performance.now() - t0 };
}

interface Tally {
  starts: number;
  concurrency: number;
  connected: number;
  blocked: number;
  other: number;
  errors: number;
  medianMs: number;
  examples: string[];
}

function tally(outcomes: Outcome[]): Tally {
  const count = (code: number) => outcomes.filter((o) => o.code === code).length;
  const odd = outcomes.filter((o) => ![CONNECTED, BLOCKED, OTHER].includes(o.code));
  const ms = outcomes.map((o) => o.ms).sort((a, b) => a - b);
  return {
    starts: outcomes.length,
    concurrency: CONCURRENCY,
    connected: count(CONNECTED),
    blocked: count(BLOCKED),
    other: count(OTHER),
    errors: odd.length,
    medianMs: Math.round(ms[Math.floor(ms.length / 2)] ?? 0),
    examples: [
      ...new Set(outcomes.filter((o) => o.code !== BLOCKED).map((o) => `${o.style} ${o.code} ${o.out}`)),
    ]
      .slice(0, 5),
  };
}

async function hostileRuns(env: Env, runtime: string[]): Promise<Tally> {
  const opted = [...runtime, ...optedIn("other")];
  const outcomes = await pool(
    Array.from({ length: STARTS }, (_, i) => STYLES[i % STYLES.length]),
    CONCURRENCY,
    (style) => startOnce(env, style, opted, ["sh", "-c", hostileScript(env.serverIp)]),
  );
  return tally(outcomes);
}

/** A control: a container that does not opt in reaches the server (so "blocked" means the rules). */
async function assertServerReachable(env: Env): Promise<void> {
  const r = await startOnce(env, "run", [], ["sh", "-c", hostileScript(env.serverIp)]);
  assert.equal(r.code, CONNECTED, `control container could not reach the server: ${r.code} ${r.out}`);
}

async function recordWindow(key: "withGate" | "withoutGate", t: Tally): Promise<void> {
  const dir = `${REPO_ROOT}/bench/results`;
  await Deno.mkdir(dir, { recursive: true });
  const path = `${dir}/gate_window.json`;
  const prev = JSON.parse(await Deno.readTextFile(path).catch(() => "{}"));
  const { examples: _, ...figures } = t;
  prev[key] = { ...figures, at: new Date().toISOString() };
  prev.what =
    "hostile opted-in containers whose first action is a connection to a destination their ACLs forbid; " +
    "connected = got through (gate_test.ts)";
  await Deno.writeTextFile(path, JSON.stringify(prev, null, 2) + "\n");
}

Deno.test(`gate: ${STARTS} hostile starts through the gate, none gets through`, async () => {
  await withGateEnv({ daemon: true }, async (env) => {
    await assertServerReachable(env);
    const t = await hostileRuns(env, ["--runtime", GATE]);
    console.log(`with the gate: ${t.connected}/${t.starts} got through (median start ${t.medianMs} ms)`);
    await recordWindow("withGate", t);
    assert.equal(t.connected, 0, `hostile connections got through the gate: ${JSON.stringify(t)}`);
    assert.equal(t.blocked, t.starts, `not every start was blocked cleanly: ${JSON.stringify(t)}`);
    const lines = await env.gateLines();
    assert.equal(lines.length, t.starts, "one gate log line per opted-in start");
    assert.ok(
      lines.every((l) => l.decision === "applied"),
      JSON.stringify(lines.find((l) => l.decision !== "applied")),
    );
    await assertServerReachable(env);
  });
});

Deno.test(`no gate: ${STARTS} hostile starts under plain runc with the daemon (the window)`, async () => {
  await withGateEnv({ daemon: true }, async (env) => {
    await assertServerReachable(env);
    const t = await hostileRuns(env, []);
    console.log(
      `without the gate (runc + daemon, nsenter): ${t.connected}/${t.starts} got through, ${t.blocked} blocked, ` +
        `${t.other} other, ${t.errors} errors (median start ${t.medianMs} ms)`,
    );
    await recordWindow("withoutGate", t);
    assert.equal(t.starts, STARTS);
    assert.equal((await env.gateLines()).length, 0, "plain runc must not go through the gate");
  });
});

/** A behaviour script for a container that does not opt in; the same under both runtimes. */
async function plainBehaviour(env: Env, runtime: string[]): Promise<Record<string, unknown>> {
  const d = (args: string[]) => env.docker(args);
  const label = onNetwork(env);
  const out: Record<string, unknown> = {};
  const run = await d([
    "run",
    "--rm",
    ...runtime,
    ...label,
    BUSYBOX_IMAGE,
    "sh",
    "-c",
    "echo out; echo err >&2",
  ]);
  out.run = [run.code, run.stdout, run.stderr];
  const exit7 = await d(["run", "--rm", ...runtime, ...label, BUSYBOX_IMAGE, "sh", "-c", "exit 7"]);
  out.exit7 = exit7.code;
  const bg = await d([
    "run",
    "-d",
    ...runtime,
    ...label,
    BUSYBOX_IMAGE,
    "sh",
    "-c",
    "echo started; exec sleep 600",
  ]);
  assert.equal(bg.code, 0, bg.stderr);
  const id = bg.stdout.trim();
  const exec = await d(["exec", id, "echo", "x"]);
  out.exec = [exec.code, exec.stdout];
  const exec3 = await d(["exec", id, "sh", "-c", "exit 3"]);
  out.exec3 = exec3.code;
  out.stop = (await d(["stop", "-t", "1", id])).code;
  out.stoppedExit = (await d(["inspect", "-f", "{{.State.ExitCode}}", id])).stdout.trim();
  out.restart = (await d(["restart", "-t", "1", id])).code;
  out.runningAfterRestart = (await d(["inspect", "-f", "{{.State.Running}}", id])).stdout.trim();
  out.execAfterRestart = (await d(["exec", id, "echo", "y"])).stdout;
  out.kill = (await d(["kill", id])).code;
  out.killedExit = (await d(["wait", id])).stdout.trim();
  out.logs = (await d(["logs", id])).stdout;
  out.start = (await d(["start", id])).code;
  out.logsAfterStart = await waitFor(
    async () => {
      const l = (await d(["logs", id])).stdout;
      return l.split("\n").filter(Boolean).length >= 3 ? l : undefined;
    },
    10_000,
    "third start's log line",
  );
  out.rm = (await d(["rm", "-f", id])).code;
  return out;
}

Deno.test("gate: a container that does not opt in behaves exactly as under plain runc", async () => {
  await withGateEnv({ daemon: false }, async (env) => {
    const [plain, gated] = [await plainBehaviour(env, []), await plainBehaviour(env, ["--runtime", GATE])];
    assert.deepEqual(gated, plain);
    assert.deepEqual(plain, {
      run: [0, "out\n", "err\n"],
      exit7: 7,
      exec: [0, "x\n"],
      exec3: 3,
      stop: 0,
      stoppedExit: "137",
      restart: 0,
      runningAfterRestart: "true",
      execAfterRestart: "y\n",
      kill: 0,
      killedExit: "137",
      logs: "started\nstarted\n",
      start: 0,
      logsAfterStart: "started\nstarted\nstarted\n",
      rm: 0,
    });
    assert.equal((await env.gateLines()).length, 0, "no gate decision for containers that do not opt in");
  });
});

/** Start a long-running hostile container; wait for its first-action verdict. */
async function startHostileDetached(env: Env, acl: string, extra: string[] = []): Promise<string> {
  const r = await env.docker([
    "run",
    "-d",
    ...gated(env, acl, extra),
    "sh",
    "-c",
    hostileScript(env.serverIp, "sleep"),
  ]);
  assert.equal(r.code, 0, `docker run -d: ${r.stderr}`);
  return r.stdout.trim();
}

async function verdicts(env: Env, id: string, n: number): Promise<string[]> {
  return await waitFor(
    async () => {
      const lines = (await env.docker(["logs", id])).stdout.split("\n").filter(Boolean);
      return lines.length >= n ? lines : undefined;
    },
    15_000,
    `${n} verdict line(s) from ${id.slice(0, 12)}`,
  );
}

Deno.test("gate: daemon and Consul down: deny-all by default, refused with EGRESSTRATOR_GATE_ON_FAILURE=refuse", async () => {
  await withGateEnv({ daemon: false }, async (env) => {
    await env.writeGateEnv({
      CONSUL_HTTP_ADDR: `127.0.0.1:${freePort()}`,
      EGRESSTRATOR_LISTEN: `unix://${env.dir}/missing.sock`,
      EGRESSTRATOR_GATE_TIMEOUT: "2s",
    });
    // Allowed to the server by its ACL: only the deny-all set can block it.
    const id = await startHostileDetached(env, "srv");
    assert.match((await verdicts(env, id, 1))[0], /^BLOCKED: .*refused/);
    const saved = await iptablesIn(id, "ipv4", env.dockerd.host);
    assert.ok(saved.includes(REJECT_ALL_LINE), saved);
    assert.ok(!saved.includes(env.serverIp), `deny-all names no destination:\n${saved}`);
    const [line] = await env.gateLines(id);
    assert.equal(line.decision, "denied", JSON.stringify(line));
    assert.equal(line.source, "deny");
    assert.match(String(line.error), /daemon: .*; consul: /);

    // A container that does not opt in is not affected by the outage.
    const plain = await env.docker(["run", "--rm", "--runtime", GATE, BUSYBOX_IMAGE, "echo", "fine"]);
    assert.deepEqual([plain.code, plain.stdout], [0, "fine\n"], plain.stderr);

    await env.writeGateEnv({
      CONSUL_HTTP_ADDR: `127.0.0.1:${freePort()}`,
      EGRESSTRATOR_LISTEN: `unix://${env.dir}/missing.sock`,
      EGRESSTRATOR_GATE_TIMEOUT: "2s",
      EGRESSTRATOR_GATE_ON_FAILURE: "refuse",
    });
    const mark = `${env.dir}/mark`;
    await Deno.mkdir(mark);
    const name = `${TEST_LABEL}-${RUN_ID}-refused`;
    const r = await env.docker([
      "run",
      "--name",
      name,
      "--runtime",
      GATE,
      ...onNetwork(env),
      "-v",
      `${mark}:/mark`,
      ...optedIn("srv"),
      BUSYBOX_IMAGE,
      "sh",
      "-c",
      "touch /mark/ran; " + hostileScript(env.serverIp),
    ]);
    assert.notEqual(r.code, 0, `refused start must fail: ${r.stdout}`);
    assert.match(
      r.stderr,
      /egresstrator gate: refusing to start [0-9a-f]{12}: no rules could be had/,
      r.stderr,
    );
    console.log(`refused: docker run exit ${r.code}: ${r.stderr.trim()}`);
    const state = await inspectState(env.dockerd, name);
    assert.equal(state.Running, false);
    assert.match(state.StartedAt, /^0001-01-01/, `container never started: ${JSON.stringify(state)}`);
    await assert.rejects(Deno.stat(`${mark}/ran`), Deno.errors.NotFound, "the refused container ran");
    // Nothing is left behind: no shim or `runc init` for it, and it can be removed.
    const rm = await env.docker(["rm", "-f", name]);
    assert.equal(rm.code, 0, rm.stderr);
    await waitFor(
      async () => {
        const ps = await new Deno.Command("pgrep", { args: ["-f", state.Id], stdout: "piped" }).output();
        return dec.decode(ps.stdout).trim() === "";
      },
      10_000,
      `no process left for the refused container ${state.Id.slice(0, 12)}`,
    );
    const refused = (await env.gateLines()).filter((l) => l.decision === "refused");
    assert.equal(refused.length, 1, JSON.stringify(refused));
    assert.match(String(refused[0].error), /no rules could be had/);
  });
});

Deno.test("gate: daemon down, Consul up: the gate renders the rules itself", async () => {
  await withGateEnv({ daemon: false }, async (env) => {
    const id = await startHostileDetached(env, "other");
    assert.match((await verdicts(env, id, 1))[0], /^BLOCKED: /);
    const [line] = await env.gateLines(id);
    assert.deepEqual([line.decision, line.source], ["applied", "consul"], JSON.stringify(line));
    const saved = await iptablesIn(id, "ipv4", env.dockerd.host);
    assert.ok(saved.includes(rejectLine(`${env.serverIp}/32`, 8080)), saved);
  });
});

Deno.test("gate: daemon down, an ACL-protected prefix: the gate reads Consul with CONSUL_HTTP_TOKEN_FILE", async () => {
  await withGateEnv({ daemon: false, acl: true }, async (env) => {
    const token = await env.consul.createToken(`key_prefix "${KV_PREFIX}" { policy = "read" }`);
    const tokenFile = `${env.dir}/consul.token`;
    await Deno.writeTextFile(tokenFile, token + "\n", { mode: 0o600 });
    await env.writeGateEnv({ CONSUL_HTTP_TOKEN_FILE: tokenFile });
    const id = await startHostileDetached(env, "other");
    assert.match((await verdicts(env, id, 1))[0], /^BLOCKED: /, "srv is protected: the gate read the keys");
    const [line] = await env.gateLines(id);
    assert.deepEqual([line.decision, line.source], ["applied", "consul"], JSON.stringify(line));
    const saved = await iptablesIn(id, "ipv4", env.dockerd.host);
    assert.ok(saved.includes(rejectLine(`${env.serverIp}/32`, 8080)), saved);
    assert.ok(!(await Deno.readTextFile(env.gateLog)).includes(token), "the token is never logged");
  });
});

async function gateMetric(listen: string, denied: boolean): Promise<number> {
  const text = await (await fetchStatus(listen, "/metrics")).text();
  const m = new RegExp(`^egresstrator_gate_applies_total\\{denied="${denied}"\\} (\\d+)$`, "m").exec(text);
  return m ? Number(m[1]) : 0;
}

/**
 * Start a hostile container with the daemon up; its gate log line once its verdict is in. `client`: how
 * the shim must have asked the daemon (perl, the host's default here; curl; or neither, and then the
 * binary did the create).
 */
async function gatedWithDaemon(
  env: Env,
  client: "perl" | "curl" | "binary" = "perl",
): Promise<{ id: string; short: string; line: Record<string, unknown> }> {
  const id = await startHostileDetached(env, "other");
  assert.match((await verdicts(env, id, 1))[0], /^BLOCKED: /);
  const [line] = await env.gateLines(id);
  assert.deepEqual([line.decision, line.source], ["applied", "daemon"], JSON.stringify(line));
  if (client === "binary") {
    assert.equal(line.via, undefined, JSON.stringify(line));
  } else {
    // The shim did it over the daemon's socket: no egresstrator process for this create; the rules went
    // in from its prestart hook, while runc was still creating.
    assert.deepEqual([line.via, line.client, line.hook], ["shim", client, true], JSON.stringify(line));
  }
  return { id, short: id.slice(0, 12), line };
}

Deno.test("gate: daemon up: the gate takes the daemon's rules and reports them (/status, metric)", async () => {
  await withGateEnv({ daemon: true }, async (env) => {
    assert.equal(await gateMetric(env.listen, false), 0);
    const { id, short, line } = await gatedWithDaemon(env);
    assert.equal(await gateMetric(env.listen, false), 1);
    // Once the start event is handled, /status shows the container with the gate's rule set.
    await env.daemon!.waitForLog(
      (e) => e.id === short && (e.msg === "unchanged" || e.msg === "applied"),
      20_000,
      `the start event of ${short} handled`,
    );
    const status = await (await fetchStatus(env.listen, "/status")).json() as {
      containers: { id: string; hash?: string; ruleCount: number; denied: boolean; lastApplied?: string }[];
    };
    const entry = status.containers.find((c) => c.id === id);
    assert.ok(entry, `container missing from /status: ${JSON.stringify(status.containers)}`);
    assert.match(entry.hash ?? "", /^[0-9a-f]{32}$/);
    assert.equal(entry.ruleCount, line.rules);
    assert.equal(entry.denied, false);
    assert.ok(entry.lastApplied);
    const saved = await iptablesIn(id, "ipv4", env.dockerd.host);
    assert.ok(saved.includes(rejectLine(`${env.serverIp}/32`, 8080)), saved);
    // A refusal the shim gets from the daemon is in the gate log too.
    const admin = await gatedRun(env, "other", ["--cap-add", "NET_ADMIN"], ["true"]);
    assert.notEqual(admin.code, 0, "a NET_ADMIN container started");
    assert.match(admin.stderr, /refusing to start .*holds CAP_NET_ADMIN/);
    const refused = (await env.gateLines()).filter((l) => l.decision === "refused");
    assert.equal(refused.length, 1, JSON.stringify(refused));
    assert.equal(refused[0].via, "shim");
    assert.match(String(refused[0].id), /^[0-9a-f]{64}$/);
    assert.match(String(refused[0].error), /holds CAP_NET_ADMIN/);
  });
});

Deno.test("gate: daemon up: without perl the shim asks with curl, without both the binary does the create", async () => {
  await withGateEnv({ daemon: true }, async (env) => {
    for (const [tools, client] of [[["curl"], "curl"], [[], "binary"]] as const) {
      await shimPath(env.dir, [...tools]);
      const { id } = await gatedWithDaemon(env, client);
      const saved = await iptablesIn(id, "ipv4", env.dockerd.host);
      assert.ok(saved.includes(rejectLine(`${env.serverIp}/32`, 8080)), `${client}: ${saved}`);
    }
    await shimPath(env.dir, undefined);
    await gatedWithDaemon(env, "perl");
  });
});

Deno.test("gate: the hook's rules go in beside Docker's own: its embedded DNS answers from the first instruction", async () => {
  // The hook's apply runs while Docker's libnetwork-setkey hook writes its DNS rules (nat) into the same
  // namespace: both must land, every time.
  await withGateEnv({ daemon: true }, async (env) => {
    const starts = 10;
    for (let i = 0; i < starts; i++) {
      const r = await gatedRun(env, "other", [], ["nslookup", env.serverName]);
      assert.equal(r.code, 0, `start ${i}: ${r.stdout}${r.stderr}`);
      assert.match(r.stdout, new RegExp(`Address: ${env.serverIp.replace(/\./g, "\\.")}\n`), r.stdout);
    }
    // A spec the gate rewrites keeps what runc reads as uint64 (Docker writes unlimited as 2^64-1).
    // (core: its hard limit is unlimited already, so raising it needs no CAP_SYS_RESOURCE)
    const big = await gatedRun(env, "other", ["--ulimit", "core=-1:-1"], ["sh", "-c", "ulimit -c"]);
    assert.deepEqual([big.code, big.stdout.trim()], [0, "unlimited"], big.stderr);
    const lines = await env.gateLines();
    assert.deepEqual(
      lines.map((l) => [l.decision, l.hook]),
      Array.from({ length: starts + 1 }, () => ["applied", true]),
      JSON.stringify(lines),
    );
  });
});

Deno.test("gate: a daemon in helper mode: the shim leaves the create to the gate binary, which applies itself", async () => {
  await withGateEnv(
    {
      daemon: true,
      daemonArgs: ["--mode", "helper", "-i", HELPER_IMAGE],
      images: [BUSYBOX_IMAGE, HELPER_IMAGE],
    },
    async (env) => {
      const id = await startHostileDetached(env, "other");
      assert.match((await verdicts(env, id, 1))[0], /^BLOCKED: /);
      const [line] = await env.gateLines(id);
      assert.equal(line.decision, "applied", JSON.stringify(line));
      assert.equal(line.via, undefined, `not the shim's: ${JSON.stringify(line)}`);
      const saved = await iptablesIn(id, "ipv4", env.dockerd.host);
      assert.ok(saved.includes(rejectLine(`${env.serverIp}/32`, 8080)), saved);
    },
  );
});

Deno.test({
  name: "gate: daemon up: the daemon does not apply the gate's rules again on the start event",
  // Regression (fixed): the daemon renders with the container's name (src/reconcile.ts work -> enforce), the gate with
  // id[:12] (src/daemon.ts:248 gateRender, src/gate/start.ts:55); templates/partials/header.eta:2 puts the
  // name in a comment and src/render.ts:180 rulesHash hashes comments, so the adopted hash never matches
  // and every gated start is applied a second time. Fix: hash the rules without `#` lines (verified in a
  // scratch copy: this test then passes). Do not inspect the container in gateRender instead: dockerd
  // holds the container while starting it (the gate runs inside that), so the inspect waits until the
  // gate gives up on the daemon (2 s) and renders from Consul itself.
  fn: async () => {
    await withGateEnv({ daemon: true }, async (env) => {
      const { short } = await gatedWithDaemon(env);
      await env.daemon!.waitForLog(
        (e) => e.id === short && (e.msg === "unchanged" || e.msg === "applied"),
        20_000,
        `the start event of ${short} handled`,
      );
      const applied = env.daemon!.logs().filter((e) =>
        e.id === short && (e.msg === "applied" || /deny/.test(e.msg))
      );
      assert.deepEqual(applied, [], "the daemon applied the gate's rules again");
      assert.ok(env.daemon!.logs().some((e) => e.id === short && e.msg === "unchanged"));
    });
  },
});

Deno.test("gate: docker restart and docker stop + start of an opted-in container are gated again", async () => {
  await withGateEnv({ daemon: true }, async (env) => {
    const id = await startHostileDetached(env, "other");
    const reject = rejectLine(`${env.serverIp}/32`, 8080);
    assert.match((await verdicts(env, id, 1))[0], /^BLOCKED: /);
    const restart = await env.docker(["restart", "-t", "1", id]);
    assert.equal(restart.code, 0, restart.stderr);
    assert.match((await verdicts(env, id, 2))[1], /^BLOCKED: /);
    assert.ok((await iptablesIn(id, "ipv4", env.dockerd.host)).includes(reject));
    assert.equal((await env.docker(["stop", "-t", "1", id])).code, 0);
    const start = await env.docker(["start", id]);
    assert.equal(start.code, 0, start.stderr);
    const lines = await verdicts(env, id, 3);
    assert.deepEqual(lines.map((l) => l.split(":")[0]), ["BLOCKED", "BLOCKED", "BLOCKED"]);
    assert.ok((await iptablesIn(id, "ipv4", env.dockerd.host)).includes(reject));
    const gate = await env.gateLines(id);
    assert.deepEqual(gate.map((l) => [l.decision, l.source]), [
      ["applied", "daemon"],
      ["applied", "daemon"],
      ["applied", "daemon"],
    ]);
    // The daemon sees three start events; with the gate's report adopted, each should find nothing to do.
    const short = id.slice(0, 12);
    const handled = await waitFor(
      () => {
        const l = env.daemon!.logs().filter((e) => e.id === short && /^(applied|unchanged)$/.test(e.msg));
        return l.length >= 3 ? l : undefined;
      },
      20_000,
      `the daemon handling the 3 start events of ${short}`,
    );
    const reapplied = handled.filter((e) => e.msg === "applied").length;
    if (reapplied) console.log(`note: the daemon applied again after ${reapplied} of 3 gated starts`);
  });
});

Deno.test("gate: an unwritable gate log does not refuse a start whose rules are in place", async () => {
  await withGateEnv({ daemon: false }, async (env) => {
    await env.writeGateEnv({ EGRESSTRATOR_GATE_LOG: `${env.dir}/no/such/dir/gate.log` });
    const id = await startHostileDetached(env, "other");
    assert.match((await verdicts(env, id, 1))[0], /^BLOCKED: /);
    const saved = await iptablesIn(id, "ipv4", env.dockerd.host);
    assert.ok(saved.includes(rejectLine(`${env.serverIp}/32`, 8080)), saved);
  });
});

Deno.test("gate: rules by DNS name are in force at the first instruction (steering, sets, listeners)", async () => {
  // The test DNS server must be up before the daemon, which is told to use it for its own lookups.
  const dir = await Deno.makeTempDir({ prefix: "egt-gate-fqdn-" });
  let dnsIp = "";
  try {
    await withGateEnv({ daemon: false, images: [BUSYBOX_IMAGE, HELPER_IMAGE] }, async (env) => {
      const dns = await startTestDns({
        network: env.net.name,
        zone: { "srv.test": { a: [env.serverIp], ttl: 1 } },
        host: env.dockerd.host,
      });
      dnsIp = dns.ip;
      try {
        const daemon = await startDaemon({
          args: [
            "-c",
            env.consul.address,
            "-k",
            KV_PREFIX,
            "-H",
            env.dockerd.host,
            "--listen",
            env.listen,
            "--fqdn-upstream",
            dns.ip,
          ],
        });
        try {
          await daemon.waitForLog((e) => e.msg === "status server listening", 30_000, "status server");
          await env.consul.putKv(`${KV_PREFIX}fq`, "srv.test:tcp/8080\n");
          const run = (script: string) =>
            env.docker([
              "run",
              "--rm",
              "--runtime",
              GATE,
              ...onNetwork(env),
              "--dns",
              dns.ip,
              ...optedIn("fq"),
              "-e",
              "EGRESSTRATOR_POLICY=allowlist",
              BUSYBOX_IMAGE,
              "sh",
              "-c",
              script,
            ]);
          // First instruction: look the name up and connect to what it answered.
          const named = await run(
            `a=$(nslookup -type=a srv.test | sed -n 's/^Address: *\\([0-9.]*\\)$/\\1/p' | tail -n 1); ` +
              `echo "addr $a"; echo | nc -w 2 "$a" 8080 && echo REACHED || echo REFUSED`,
          );
          assert.equal(named.code, 0, named.stderr);
          assert.match(
            named.stdout,
            new RegExp(`addr ${env.serverIp.replace(/\./g, "\\.")}\n`),
            named.stdout,
          );
          assert.match(named.stdout, /hi\nREACHED/, named.stdout);
          // First instruction, no lookup: the same address is not in this new container's set.
          const direct = await run(`echo | nc -w 2 ${env.serverIp} 8080 && echo REACHED || echo REFUSED`);
          assert.match(direct.stdout, /REFUSED/, direct.stdout);
          // Not from the shim's hook, which leaves rules by DNS name to after the create (the listeners
          // read the container's resolv.conf, not in place before then): the enforce applied them.
          const gate = await env.gateLines();
          assert.deepEqual(gate.map((l) => [l.decision, l.source, l.via, l.hook]), [
            ["applied", "daemon", "shim", false],
            ["applied", "daemon", "shim", false],
          ]);
        } finally {
          await daemon.stop();
        }
      } finally {
        await dns.stop();
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  assert.ok(dnsIp);
});
