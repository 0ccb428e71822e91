/**
 * Podman as a platform: egresstrator against a real `podman system service` (Podman's Docker-compatible
 * API), private to each test (tests/support/podman.ts: own socket, store, CNI network, events log), and a
 * real Consul agent. Containers are started the way Podman users start them, with the podman CLI; the
 * daemon, `set` and `clear` only ever see the API. Enforcement is proven with traffic between containers
 * on the test's own network; 10.50.x.x is rendered, never dialed.
 */
import assert from "node:assert/strict";
import { type ConsulAgent, startConsul } from "../support/consul.ts";
import { BUSYBOX_IMAGE, containerIp, HELPER_IMAGE, RUN_ID } from "../support/docker.ts";
import {
  canConnect,
  type DaemonProc,
  helpersLeft,
  iptablesIn,
  type LogEntry,
  logsFor,
  rejectLine,
  ruleLines,
  runCli,
  startDaemon,
  waitFor,
} from "../support/egresstrator.ts";
import { getStatus } from "../support/live.ts";
import { type PodmanService, startPodman } from "../support/podman.ts";

/** Never dialed. */
const OTHER_CIDR = "10.50.128.0/24";

interface PmEnv {
  pm: PodmanService;
  consul: ConsulAgent;
  /** `-c <consul> -k <prefix> -H <podman socket>`. */
  globals: string[];
  /** The httpd every client tries to reach; key `srv` names it, key `other` {@link OTHER_CIDR}. */
  serverIp: string;
  listen: string;
  /** A daemon on this Podman (killed at the end). */
  daemon(args?: string[]): Promise<DaemonProc>;
  /** A sleeping container, started with the podman CLI. */
  sleeper(env: string[], args?: string[]): Promise<{ id: string; name: string }>;
  reaches(id: string): Promise<{ ok: boolean; detail: string }>;
}

const opted = (acl: string) => ["EGRESSTRATOR_ENABLE=1", `EGRESSTRATOR_ACL=${acl}`];
const isApplied = (name: string) => (e: LogEntry) => e.msg === "applied" && e.container === name;

/** A private Podman service and a Consul agent with the two keys, an httpd server, and cleanup. */
async function withPodman(opts: { images?: string[] }, fn: (env: PmEnv) => Promise<void>): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "egt-pm-test-" });
  const daemons: DaemonProc[] = [];
  const [p, c] = await Promise.allSettled([startPodman({ images: opts.images }), startConsul()]);
  const cleanup = async () => {
    await Promise.all(daemons.map((d) => d.stop("SIGTERM", 10_000)));
    const problems: string[] = [];
    if (p.status === "fulfilled") await p.value.stop().catch((e) => problems.push(e.message));
    if (c.status === "fulfilled") await c.value.stop();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    if (problems.length) throw new Error(problems.join("; "));
  };
  try {
    if (p.status === "rejected") throw p.reason;
    if (c.status === "rejected") throw c.reason;
    const [pm, consul] = [p.value, c.value];
    const prefix = `egress/${RUN_ID}/${crypto.randomUUID().slice(0, 8)}/`;
    const server = await pm.run({ cmd: ["httpd", "-f", "-p", "8080"] });
    const serverIp = await containerIp(server.id, pm.network.name, pm.host);
    await consul.putKv(`${prefix}srv`, `${serverIp}/32:tcp/8080\n`);
    await consul.putKv(`${prefix}other`, `${OTHER_CIDR}:tcp/443\n`);
    const globals = ["-c", consul.address, "-k", prefix, "-H", pm.host];
    const listen = `unix://${tmp}/egt.sock`;
    await fn({
      pm,
      consul,
      globals,
      serverIp,
      listen,
      daemon: async (args = []) => {
        const d = await startDaemon({ args: [...globals, "--listen", listen, ...args] });
        daemons.push(d);
        await d.waitForLog((e) => e.msg === "connected to docker", 30_000, "connected to docker");
        return d;
      },
      sleeper: (env, args) => pm.run({ cmd: ["sleep", "600"], env, args }),
      reaches: (id) => canConnect(id, serverIp, 8080, pm.host),
    });
  } catch (err) {
    await cleanup().catch((e) => console.warn(`cleanup after a failure: ${(e as Error).message}`));
    throw err;
  }
  await cleanup();
}

Deno.test("podman: set and clear through Podman's API, in nsenter and helper mode, proven with traffic", async () => {
  await withPodman({ images: [BUSYBOX_IMAGE, HELPER_IMAGE] }, async (env) => {
    const { globals } = env;
    const client = await env.sleeper(opted("other"));
    assert.ok((await env.reaches(client.id)).ok, "setup: the client reaches the server");

    for (const mode of [[], ["-i", HELPER_IMAGE]]) {
      const what = mode.length ? "helper" : "nsenter";
      const set = await runCli([...globals, ...mode, "set", client.name], { timeoutMs: 60_000 });
      assert.equal(set.code, 0, `${what}: ${set.stderr}`);
      assert.match(set.stdout, new RegExp(`^${client.name} \\([0-9a-f]{12}\\): \\d+ rules applied.*${what}`));
      const saved = ruleLines(await iptablesIn(client.id, "ipv4", env.pm.host));
      assert.ok(saved.includes(rejectLine(`${env.serverIp}/32`, 8080)), saved.join("\n"));
      const blocked = await env.reaches(client.id);
      assert.equal(blocked.ok, false, `${what}: the protected server is still reachable: ${blocked.detail}`);

      const clear = await runCli([...globals, ...mode, "clear", client.name], { timeoutMs: 60_000 });
      assert.equal(clear.code, 0, `${what}: ${clear.stderr}`);
      assert.ok((await env.reaches(client.id)).ok, `${what}: cleared, yet blocked`);
      assert.deepEqual(await helpersLeft(undefined, env.pm.host), [], `${what}: helper containers left`);
    }
  });
});

Deno.test("podman: network modes: host, container:<x> and pod members are never written", async () => {
  await withPodman({}, async (env) => {
    const owner = await env.sleeper(opted("other"));
    const joined = await env.sleeper(opted("other"), ["--network", `container:${owner.id}`]);
    const hostNet = await env.sleeper(opted("other"), ["--network", "host"]);
    const pod = `${joined.name}-pod`;
    const made = await env.pm.cli(["pod", "create", "--name", pod]);
    assert.equal(made.code, 0, made.stderr);
    const member = await env.sleeper(opted("other"), ["--pod", pod]);
    const cases: [string, RegExp][] = [
      [hostNet.name, /shares the host's network namespace/],
      [joined.name, new RegExp(`shares the namespace of ${owner.id.slice(0, 12)}`)],
      [member.name, /shares the namespace of [0-9a-f]{12}/],
    ];
    for (const [name, why] of cases) {
      const r = await runCli([...env.globals, "set", name]);
      assert.equal(r.code, 2, `${name}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, why, name);
    }
    // The owner's namespace is its own: set writes it, and the container that joined it is filtered too.
    const set = await runCli([...env.globals, "set", owner.name]);
    assert.equal(set.code, 0, set.stderr);
    assert.equal((await env.reaches(joined.id)).ok, false, "the joined container shares the owner's rules");
    // The host's tables were never written: the daemon refuses these three with a reason, once each.
    const d = await env.daemon([]);
    for (const [name] of cases) {
      await d.waitForLog(
        (e) => e.msg === "not enforceable" && e.container === name,
        20_000,
        `${name} refused`,
      );
    }
    assert.equal((await d.stop()).code, 0);
  });
});

Deno.test("podman: the daemon follows Podman's events: start, stop, start again (new namespace), rm", async () => {
  await withPodman({}, async (env) => {
    // No resync: only Podman's events can make the daemon forget a container.
    const d = await env.daemon(["--resync-interval", "0"]);
    const c = await env.sleeper(opted("other"));
    await d.waitForLog(isApplied(c.name), 20_000, `applied for ${c.name}`);
    assert.equal((await env.reaches(c.id)).ok, false, "enforced after podman run");
    const listed = async () => (await getStatus(env.listen)).containers.some((s) => s.id === c.id);
    assert.ok(await listed(), "in /status while running");

    assert.equal((await env.pm.cli(["stop", "-t", "0", c.id])).code, 0);
    await waitFor(async () => !(await listed()), 15_000, "the stopped container gone from /status (die)");

    assert.equal((await env.pm.cli(["start", c.id])).code, 0);
    await waitFor(
      () => logsFor(d, "applied", c.name).length >= 2,
      20_000,
      "applied again after podman start",
    );
    assert.equal((await env.reaches(c.id)).ok, false, "enforced again in its new namespace");

    assert.equal((await env.pm.cli(["rm", "-f", "-t", "0", c.id])).code, 0);
    await waitFor(async () => !(await listed()), 15_000, "the removed container gone from /status (remove)");
    assert.equal((await d.stop()).code, 0);
  });
});

Deno.test("podman: daemon in helper mode: helpers join with container:<id>, none is left after stop", async () => {
  await withPodman({ images: [BUSYBOX_IMAGE, HELPER_IMAGE] }, async (env) => {
    const d = await env.daemon(["--mode", "helper", "-i", HELPER_IMAGE]);
    const c = await env.sleeper(opted("other"));
    const line = await d.waitForLog(isApplied(c.name), 60_000, `applied for ${c.name}`);
    assert.equal(line.mode, "helper");
    assert.equal((await env.reaches(c.id)).ok, false, "enforced by the helper");
    assert.deepEqual(await helpersLeft(undefined, env.pm.host), []);
    assert.equal((await d.stop()).code, 0);
    assert.deepEqual(await helpersLeft(undefined, env.pm.host), [], "helpers left after SIGTERM");
  });
});

Deno.test("podman: the service restarts: the daemon reconnects and enforces what started meanwhile", async () => {
  await withPodman({}, async (env) => {
    const d = await env.daemon([]);
    const before = await env.sleeper(opted("other"));
    await d.waitForLog(isApplied(before.name), 20_000, `applied for ${before.name}`);

    await env.pm.stopService();
    await d.waitForLog((e) => e.msg === "docker unavailable; retrying" || /stream ended/.test(e.msg), 20_000);
    // Podman containers outlive the service: the CLI starts one while nothing answers the API.
    const during = await env.sleeper(opted("other"));
    await env.pm.startService();
    await d.waitForLog((e) => e.msg === "reconnected to docker", 30_000, "reconnected to docker");
    await d.waitForLog(isApplied(during.name), 20_000, `applied for ${during.name}`);

    assert.equal((await env.reaches(during.id)).ok, false, "started while the service was down: enforced");
    assert.equal((await env.reaches(before.id)).ok, false, "started before: still enforced");
    const plain = await env.sleeper([]);
    assert.ok((await env.reaches(plain.id)).ok, "a container without opt-in still reaches the server");
    assert.equal((await d.stop()).code, 0);
  });
});
