/**
 * The gate under Podman, as an OCI hook (hooks.d, stage createRuntime): installed by `install.sh
 * --podman-hook` from a local release directory whose binary is the stand-in (main.ts with exactly the
 * compiled binary's permissions), into a private `podman system service`'s hooks dir. The proof that
 * matters, as in gate_test.ts: an opted-in container whose very first action is a connection its ACLs
 * forbid never gets through, over many starts in the three ways Podman users start containers; without
 * the hook some do (the daemon alone reacts to the start event, after the process already runs).
 *
 * EGT_HOOK_STARTS (default 60) and EGT_HOOK_CONCURRENCY (default 4) size the hostile runs.
 */
import { BLOCKED, CONNECTED, hostileScript } from "../support/hostile.ts";
import assert from "node:assert/strict";
import { type ConsulAgent, startConsul } from "../support/consul.ts";
import { BUSYBOX_IMAGE, containerIp, RUN_ID, TEST_LABEL } from "../support/docker.ts";
import {
  type DaemonProc,
  iptablesIn,
  REJECT_ALL_LINE,
  rejectLine,
  startDaemon,
} from "../support/egresstrator.ts";
import { pool } from "../support/live.ts";
import { type PodmanService, startPodman } from "../support/podman.ts";
import { freePort } from "../support/ports.ts";
import { REPO_ROOT } from "../support/run_cli.ts";
import { standInRelease } from "../support/standin.ts";

const STARTS = Number(Deno.env.get("EGT_HOOK_STARTS") ?? "60");
const CONCURRENCY = Number(Deno.env.get("EGT_HOOK_CONCURRENCY") ?? "4");

interface Env {
  pm: PodmanService;
  consul: ConsulAgent;
  dir: string;
  prefix: string;
  serverIp: string;
  listen: string;
  gateLog: string;
  hookFile: string;
  daemon?: DaemonProc;
  writeGateEnv(extra?: Record<string, string>): Promise<void>;
  gateLines(id?: string): Promise<Record<string, unknown>[]>;
  /** `podman run` options: the label and the opt-in with one ACL key. */
  optedIn(acl: string): string[];
}

async function withHookEnv(opts: { daemon: boolean }, fn: (env: Env) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "egt-hook-" });
  const [p, c] = await Promise.allSettled([startPodman(), startConsul()]);
  let daemon: DaemonProc | undefined;
  const cleanup = async () => {
    await daemon?.stop();
    const problems: string[] = [];
    if (p.status === "fulfilled") await p.value.stop().catch((e) => problems.push(e.message));
    if (c.status === "fulfilled") await c.value.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    if (problems.length) throw new Error(problems.join("; "));
  };
  try {
    if (p.status === "rejected") throw p.reason;
    if (c.status === "rejected") throw c.reason;
    const [pm, consul] = [p.value, c.value];
    const bin = await standInRelease(`${dir}/release`);
    const envFile = `${dir}/gate.env`;
    const install = await new Deno.Command("sh", {
      args: [
        `${REPO_ROOT}/install.sh`,
        "--no-systemd",
        "--prefix",
        `${dir}/prefix`,
        "--from",
        bin,
        "--podman-hook",
        "--hooks-dir",
        pm.hooksDir,
        "--env-file",
        envFile,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(install.stdout) + new TextDecoder().decode(install.stderr);
    assert.equal(install.code, 0, out);
    assert.match(out, /verified .* against .*sha256sums/);
    assert.match(out, /installed podman hook /);

    const prefix = `egress/${RUN_ID}/${crypto.randomUUID().slice(0, 8)}/`;
    const server = await pm.run({ cmd: ["nc", "-ll", "-p", "8080", "-e", "echo", "hi"] });
    const serverIp = await containerIp(server.id, pm.network.name, pm.host);
    await consul.putKv(`${prefix}srv`, `${serverIp}/32:tcp/8080\n`);
    await consul.putKv(`${prefix}other`, "10.50.128.0/24:tcp/443\n");
    const listen = `unix://${dir}/egt.sock`;
    const gateLog = `${dir}/gate.log`;
    const writeGateEnv = async (extra: Record<string, string> = {}) => {
      const vars = {
        CONSUL_HTTP_ADDR: consul.address,
        CONSUL_PATH: prefix,
        EGRESSTRATOR_LISTEN: listen,
        EGRESSTRATOR_GATE_LOG: gateLog,
        EGRESSTRATOR_GATE_TIMEOUT: "3s",
        ...extra,
      };
      const text = Object.entries(vars).map(([k, v]) => `${k}=${v}`).join("\n") + "\n";
      await Deno.writeTextFile(`${envFile}.tmp`, text);
      await Deno.rename(`${envFile}.tmp`, envFile);
    };
    await writeGateEnv();
    if (opts.daemon) {
      daemon = await startDaemon({
        args: ["-c", consul.address, "-k", prefix, "-H", pm.host, "--listen", listen],
      });
      await daemon.waitForLog((e) => e.msg === "connected to docker", 30_000, "connected to docker");
      await daemon.waitForLog((e) => e.msg === "status server listening", 5_000, "status server");
    }
    await fn({
      pm,
      consul,
      dir,
      prefix,
      serverIp,
      listen,
      gateLog,
      hookFile: `${pm.hooksDir}/egresstrator.json`,
      daemon,
      writeGateEnv,
      gateLines: async (id) => {
        const text = await Deno.readTextFile(gateLog).catch(() => "");
        const all = text.split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
        return id ? all.filter((l) => l.id === id) : all;
      },
      optedIn: (acl) => [
        "--label",
        `${TEST_LABEL}=${RUN_ID}`,
        "-e",
        "EGRESSTRATOR_ENABLE=1",
        "-e",
        `EGRESSTRATOR_ACL=${acl}`,
      ],
    });
  } catch (err) {
    await cleanup().catch((e) => console.warn(`cleanup after a failure: ${(e as Error).message}`));
    throw err;
  }
  await cleanup();
}

type Style = "run" | "detached" | "create-start";
const STYLES: Style[] = ["run", "detached", "create-start"];

/** Start one container the way Podman users do and wait for its end; its exit code and output. */
async function startOnce(env: Env, style: Style, args: string[], cmd: string[]) {
  const t0 = performance.now();
  const common = [...args, BUSYBOX_IMAGE, ...cmd];
  let code: number, out: string;
  if (style === "run") {
    const r = await env.pm.cli(["run", "--rm", ...common]);
    [code, out] = [r.code, r.stdout + r.stderr];
  } else {
    const first = await env.pm.cli(style === "detached" ? ["run", "-d", ...common] : ["create", ...common]);
    if (first.code !== 0) return { style, code: first.code, out: first.stderr, ms: performance.now() - t0 };
    const id = first.stdout.trim();
    if (style === "detached") {
      const w = await env.pm.cli(["wait", id]);
      code = w.code === 0 ? Number(w.stdout.trim()) : w.code;
      const logs = await env.pm.cli(["logs", id]);
      out = logs.stdout + logs.stderr;
    } else {
      const s = await env.pm.cli(["start", "-a", id]);
      [code, out] = [s.code, s.stdout + s.stderr];
    }
    await env.pm.cli(["rm", "-f", "-t", "0", id]);
  }
  return { style, code, out: out.trim(), ms: performance.now() - t0 };
}

async function hostileRuns(env: Env) {
  const outcomes = await pool(
    Array.from({ length: STARTS }, (_, i) => STYLES[i % STYLES.length]),
    CONCURRENCY,
    (style) => startOnce(env, style, env.optedIn("other"), ["sh", "-c", hostileScript(env.serverIp)]),
  );
  const count = (code: number) => outcomes.filter((o) => o.code === code).length;
  const ms = outcomes.map((o) => o.ms).sort((a, b) => a - b);
  return {
    starts: outcomes.length,
    connected: count(CONNECTED),
    blocked: count(BLOCKED),
    medianMs: Math.round(ms[Math.floor(ms.length / 2)] ?? 0),
    odd: [...new Set(outcomes.filter((o) => o.code !== BLOCKED).map((o) => `${o.style} ${o.code} ${o.out}`))]
      .slice(0, 5),
  };
}

/** A container that does not opt in reaches the server: "blocked" below means the rules. */
async function assertServerReachable(env: Env): Promise<void> {
  const r = await startOnce(env, "run", ["--label", `${TEST_LABEL}=${RUN_ID}`], [
    "sh",
    "-c",
    hostileScript(env.serverIp),
  ]);
  assert.equal(r.code, CONNECTED, `control container could not reach the server: ${r.code} ${r.out}`);
}

Deno.test(`podman hook: ${STARTS} hostile starts through the hook, none gets through`, async () => {
  await withHookEnv({ daemon: true }, async (env) => {
    await assertServerReachable(env);
    const t = await hostileRuns(env);
    console.log(`with the hook: ${t.connected}/${t.starts} got through (median start ${t.medianMs} ms)`);
    assert.equal(t.connected, 0, `hostile connections got through the hook: ${JSON.stringify(t)}`);
    assert.equal(t.blocked, t.starts, `not every start was blocked cleanly: ${JSON.stringify(t)}`);
    const lines = await env.gateLines();
    assert.equal(lines.length, t.starts, "one gate log line per opted-in start");
    assert.ok(
      lines.every((l) => l.decision === "applied" && l.source === "daemon"),
      JSON.stringify(lines.find((l) => l.decision !== "applied" || l.source !== "daemon")),
    );
    await assertServerReachable(env);
  });
});

Deno.test(`podman without the hook: ${STARTS} hostile starts with the daemon alone (the window)`, async () => {
  await withHookEnv({ daemon: true }, async (env) => {
    await Deno.remove(env.hookFile);
    const t = await hostileRuns(env);
    console.log(
      `without the hook (daemon, nsenter): ${t.connected}/${t.starts} got through, ${t.blocked} blocked ` +
        `(median start ${t.medianMs} ms)`,
    );
    assert.equal(t.starts, STARTS);
    assert.equal((await env.gateLines()).length, 0, "no hook, no gate decision");
  });
});

Deno.test("podman hook: refuses what it cannot filter; leaves alone what does not opt in", async () => {
  await withHookEnv({ daemon: false }, async (env) => {
    const mark = `${env.dir}/mark`;
    await Deno.mkdir(mark);
    const touching = ["-v", `${mark}:/mark`];
    const refusals: [string, string[], RegExp][] = [
      ["raw", ["--cap-add", "NET_RAW"], /holds CAP_NET_RAW.*--cap-drop NET_RAW/],
      ["admin", ["--cap-add", "NET_ADMIN"], /holds CAP_NET_ADMIN/],
      ["host", ["--network", "host"], /shares the host's network namespace/],
    ];
    for (const [what, args, why] of refusals) {
      const r = await env.pm.cli([
        "run",
        "--rm",
        ...env.optedIn("srv"),
        ...touching,
        ...args,
        BUSYBOX_IMAGE,
        "touch",
        `/mark/${what}`,
      ]);
      assert.notEqual(r.code, 0, `${what}: a refused start must fail: ${r.stdout}`);
      assert.match(r.stderr, /egresstrator hook: refusing to start [0-9a-f]{12}: /, `${what}: ${r.stderr}`);
      assert.match(r.stderr, why, `${what}: ${r.stderr}`);
      await assert.rejects(
        Deno.stat(`${mark}/${what}`),
        Deno.errors.NotFound,
        `${what}: the refused container ran`,
      );
    }
    // NET_RAW kept on request; a container that does not opt in is untouched (no gate decision at all).
    await env.writeGateEnv({ EGRESSTRATOR_GATE_KEEP_NET_RAW: "1" });
    const kept = await env.pm.cli([
      "run",
      "--rm",
      ...env.optedIn("srv"),
      "--cap-add",
      "NET_RAW",
      BUSYBOX_IMAGE,
      "true",
    ]);
    assert.equal(kept.code, 0, kept.stderr);
    const plain = await env.pm.cli(["run", "--rm", "--cap-add", "NET_ADMIN", BUSYBOX_IMAGE, "echo", "fine"]);
    assert.deepEqual([plain.code, plain.stdout], [0, "fine\n"], plain.stderr);
    const lines = await env.gateLines();
    assert.equal(
      lines.length,
      1,
      `only the opted-in container that started was decided: ${JSON.stringify(lines)}`,
    );
  });
});

Deno.test("podman hook: daemon down: rules from Consul; Consul down too: deny-all, or refused when told", async () => {
  await withHookEnv({ daemon: false }, async (env) => {
    const detached = async (acl: string) => {
      const r = await env.pm.cli([
        "run",
        "-d",
        ...env.optedIn(acl),
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        hostileScript(env.serverIp, "sleep"),
      ]);
      assert.equal(r.code, 0, r.stderr);
      const id = r.stdout.trim();
      const verdict = async () => (await env.pm.cli(["logs", id])).stdout.trim();
      for (let i = 0; i < 50 && !(await verdict()); i++) await new Promise((r) => setTimeout(r, 200));
      return { id, verdict: await verdict() };
    };
    const fromConsul = await detached("other");
    assert.match(fromConsul.verdict, /^BLOCKED: /);
    const [line] = await env.gateLines(fromConsul.id);
    assert.deepEqual([line.decision, line.source], ["applied", "consul"], JSON.stringify(line));
    assert.ok(
      (await iptablesIn(fromConsul.id, "ipv4", env.pm.host)).includes(rejectLine(`${env.serverIp}/32`, 8080)),
    );

    const down = { CONSUL_HTTP_ADDR: `127.0.0.1:${freePort()}`, EGRESSTRATOR_GATE_TIMEOUT: "2s" };
    await env.writeGateEnv(down);
    // Allowed to the server by its ACL: only the deny-all set can block it.
    const denied = await detached("srv");
    assert.match(denied.verdict, /^BLOCKED: /);
    assert.ok((await iptablesIn(denied.id, "ipv4", env.pm.host)).includes(REJECT_ALL_LINE));
    assert.equal((await env.gateLines(denied.id))[0].decision, "denied");

    await env.writeGateEnv({ ...down, EGRESSTRATOR_GATE_ON_FAILURE: "refuse" });
    const r = await env.pm.cli(["run", "--rm", ...env.optedIn("srv"), BUSYBOX_IMAGE, "true"]);
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      /egresstrator hook: refusing to start [0-9a-f]{12}: no rules could be had/,
      r.stderr,
    );
  });
});
