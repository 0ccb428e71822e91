/**
 * The daemon as users run it (`deno run -A main.ts` with no command), against a real Consul agent and a
 * PRIVATE dockerd per test (tests/support/live.ts withLive): the daemon enforces every opted-in container
 * of the dockerd it follows, so on the shared dockerd it would rewrite other tests' containers (and their
 * daemons ours).
 *
 * Traffic only flows between containers a test started, on a network it created; 10.50.x.x is never dialed.
 */
import assert from "node:assert/strict";
import { BUSYBOX_IMAGE, containerIp, HELPER_IMAGE } from "../support/docker.ts";
import type { PrivateNetwork } from "../support/dockerd.ts";
import { type LiveEnv, withLive } from "../support/live.ts";
import { freePort } from "../support/ports.ts";
import {
  canConnect,
  helpersLeft,
  iptablesIn,
  type LogEntry,
  logsFor,
  REJECT_ALL_LINE,
  rejectLine,
  type Relay,
  ruleLines,
  runCli,
  startRelay,
  waitFor,
} from "../support/egresstrator.ts";

/** Never dialed. */
const OTHER_CIDR = "10.50.128.0/24";

/** An httpd on a fresh network of the private dockerd; key srv names it, key other {@link OTHER_CIDR}. */
async function serverWithKeys(env: LiveEnv): Promise<{ net: PrivateNetwork; ip: string }> {
  const net = await env.d.createNetwork();
  const server = await env.d.run({ cmd: ["httpd", "-f", "-p", "8080"], network: net.name });
  const ip = await containerIp(server.id, net.name, env.d.host);
  await env.put("srv", `${ip}/32:tcp/8080\n`);
  await env.put("other", `${OTHER_CIDR}:tcp/443\n`);
  return { net, ip };
}

const isApplied = (name: string) => (e: LogEntry) => e.msg === "applied" && e.container === name;
const opted = (acl: string) => ["EGRESSTRATOR_ENABLE=1", `EGRESSTRATOR_ACL=${acl}`];

/** iptables-save prints `! --syn` in its long form; everything else the templates write comes back as is. */
function asSaved(lines: string[]): string[] {
  return lines.map((l) => l.replace("-p tcp ! --syn", "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN"))
    .map(anyContainer).sort();
}

/** Log prefixes name the container (`render -r` has none): compare the rules, not whose they are. */
function anyContainer(line: string): string {
  return line.replace(/--log-prefix "egt:(-|[0-9a-f]{12}):/, '--log-prefix "egt:ID:');
}

Deno.test("daemon: containers started before and after it are enforced; one without opt-in is untouched", async () => {
  await withLive({}, async (env) => {
    const { d, daemon } = env;
    const { net, ip } = await serverWithKeys(env);
    const sleeper = (env: string[]) => d.run({ cmd: ["sleep", "600"], network: net.name, env });
    const before = await sleeper(opted("other"));
    const plain = await sleeper(["EGRESSTRATOR_ACL=other"]);
    assert.ok((await canConnect(before.id, ip, 8080, d.host)).ok, "setup: the client reaches the server");

    const p = await daemon([]);
    await p.waitForLog((e) => e.msg === "connected to docker", 20_000, "connected to docker");
    const after = await sleeper(opted("srv"));
    await p.waitForLog(isApplied(before.name), 20_000, `applied for ${before.name}`);
    await p.waitForLog(isApplied(after.name), 20_000, `applied for ${after.name}`);

    const savedBefore = ruleLines(await iptablesIn(before.id, "ipv4", d.host));
    assert.ok(savedBefore.includes(rejectLine(`${ip}/32`, 8080)), `before:\n${savedBefore.join("\n")}`);
    const savedAfter = ruleLines(await iptablesIn(after.id, "ipv4", d.host));
    assert.ok(savedAfter.includes(rejectLine(OTHER_CIDR, 443)), `after:\n${savedAfter.join("\n")}`);
    assert.ok(!savedAfter.some((l) => l.includes(ip)), `after lists srv, yet:\n${savedAfter.join("\n")}`);

    const blocked = await canConnect(before.id, ip, 8080, d.host);
    assert.equal(blocked.ok, false, `started-before container still reaches the server: ${blocked.detail}`);
    const open = await canConnect(after.id, ip, 8080, d.host);
    assert.equal(open.ok, true, `started-after container (lists srv) is blocked: ${open.detail}`);

    assert.deepEqual(
      ruleLines(await iptablesIn(plain.id, "ipv4", d.host)),
      [],
      "no opt-in: filter table empty",
    );
    assert.deepEqual(logsFor(p, "applied", plain.name), []);
    assert.equal((await p.stop()).code, 0);
  });
});

Deno.test("daemon: a burst of 30 containers all end up with the rules render shows for them", async () => {
  await withLive({}, async ({ d, consul, prefix, globals, daemon }) => {
    const keys: Record<string, string> = {
      a: "10.50.128.0/24:tcp/443",
      b: "10.50.129.0/24:tcp/8000-8100",
      c: "10.50.130.7/32:udp/514\n10.50.131.0/24:tcp/22",
    };
    for (const [k, v] of Object.entries(keys)) await consul.putKv(`${prefix}${k}`, `${v}\n`);
    const lists = ["a", "b", "c", "a,b", "b,c", "a,b,c"];
    const expected = new Map<string, string[]>();
    for (const list of lists) {
      const r = await runCli([...globals, "render", "-r", list]);
      assert.equal(r.code, 0, r.stderr);
      expected.set(list, asSaved(ruleLines(r.stdout)));
    }
    // Sanity: the lists differ in what they reject.
    assert.notDeepEqual(expected.get("a"), expected.get("b"));

    const p = await daemon([]);
    await p.waitForLog((e) => e.msg === "connected to docker", 20_000, "connected to docker");
    const t0 = Date.now();
    const started = await Promise.all(
      Array.from({ length: 30 }, (_, i) => lists[i % lists.length]).map(async (list) => ({
        list,
        ...(await d.run({ cmd: ["sleep", "600"], env: opted(list) })),
      })),
    );
    await waitFor(
      () => started.every((c) => logsFor(p, "applied", c.name).length > 0),
      90_000,
      "an applied line for each of the 30 containers",
    );
    const elapsed = Date.now() - t0;

    // `render <container>` reads the container's own EGRESSTRATOR_ACL: same rules as `render -r <its list>`.
    const one = await runCli([...globals, "render", started[3].name]);
    assert.equal(one.code, 0, one.stderr);
    assert.deepEqual(asSaved(ruleLines(one.stdout)), expected.get(started[3].list));

    for (const c of started) {
      const saved = ruleLines(await iptablesIn(c.id, "ipv4", d.host)).map(anyContainer).sort();
      assert.deepEqual(saved, expected.get(c.list), `${c.name} (acl ${c.list})`);
      for (const [k, v] of Object.entries(keys)) {
        const cidr = v.split("\n")[0].split(":")[0];
        const rejected = saved.some((l) => l.includes(`-d ${cidr.includes("/") ? cidr : cidr + "/32"} `));
        assert.equal(rejected, !c.list.split(",").includes(k), `${c.name} (acl ${c.list}), key ${k}`);
      }
      assert.equal(logsFor(p, "applied", c.name).length, 1, `one applied line for ${c.name}`);
    }
    console.log(`30 containers enforced ${elapsed} ms after the first start request`);
    assert.equal((await p.stop()).code, 0);
  });
});

Deno.test("daemon --mode helper: enforces a new container and leaves no helper container", async () => {
  await withLive({ images: [BUSYBOX_IMAGE, HELPER_IMAGE] }, async ({ d, consul, prefix, daemon }) => {
    await consul.putKv(`${prefix}srv`, "10.50.129.0/24:tcp/8080\n");
    await consul.putKv(`${prefix}other`, `${OTHER_CIDR}:tcp/443\n`);
    const p = await daemon(["--mode", "helper", "-i", HELPER_IMAGE]);
    await p.waitForLog((e) => e.msg === "connected to docker", 20_000, "connected to docker");
    const c = await d.run({ cmd: ["sleep", "600"], env: opted("other") });
    const applied = await p.waitForLog(isApplied(c.name), 30_000, `applied for ${c.name}`);
    assert.equal(applied.mode, "helper");
    const saved = ruleLines(await iptablesIn(c.id, "ipv4", d.host));
    assert.ok(saved.includes(rejectLine("10.50.129.0/24", 8080)), saved.join("\n"));
    assert.ok(!saved.some((l) => l.includes(OTHER_CIDR)), saved.join("\n"));
    assert.deepEqual(await helpersLeft(undefined, d.host), [], "helper containers left while running");
    assert.equal((await p.stop()).code, 0);
    assert.deepEqual(await helpersLeft(undefined, d.host), [], "helper containers left after stop");
  });
});

Deno.test("daemon: SIGHUP reloads the templates; SIGTERM exits 0 and logs stopped", async () => {
  await withLive({}, async ({ d, consul, prefix, daemon }) => {
    await consul.putKv(`${prefix}srv`, "10.50.129.0/24:tcp/8080\n");
    const c = await d.run({ cmd: ["sleep", "600"], env: opted("other") });
    const p = await daemon([]);
    await p.waitForLog(isApplied(c.name), 20_000, `applied for ${c.name}`);
    const before = await iptablesIn(c.id, "ipv4", d.host);

    p.signal("SIGHUP");
    await p.waitForLog((e) => e.msg.startsWith("templates reloaded"), 10_000, "templates reloaded");
    // The re-check finds the same text: nothing is applied again.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(logsFor(p, "applied", c.name).length, 1, "same rules applied again after SIGHUP");

    const { code, signal } = await p.stop("SIGTERM");
    assert.equal(signal, null, "exited by itself, not killed");
    assert.equal(code, 0);
    assert.ok(p.logs().some((e) => e.msg === "stopped"), "a 'stopped' log line");
    // Rules stay in place when the daemon stops.
    assert.deepEqual(ruleLines(await iptablesIn(c.id, "ipv4", d.host)), ruleLines(before));
  });
});

Deno.test("daemon: Consul down at start: skip applies nothing, deny applies deny-all until Consul is up", async () => {
  await withLive({}, async (env) => {
    const { d, consul, daemon } = env;
    const { net, ip } = await serverWithKeys(env);
    const x = await d.run({ cmd: ["sleep", "600"], network: net.name, env: opted("srv") });
    assert.ok((await canConnect(x.id, ip, 8080, d.host)).ok, "setup: the client reaches the server");

    // Nothing listens here until the relay to the real agent starts. deny is the default (0.4).
    const port = freePort();
    const down = `127.0.0.1:${port}`;
    let relay: Relay | undefined;
    try {
      const skip = await daemon(["--on-error", "skip", "--consul-timeout", "2s"], { consul: down });
      await skip.waitForLog(
        (e) => e.msg.startsWith("container is UNFILTERED") && e.container === x.name,
        30_000,
        "an UNFILTERED error line while Consul is down",
      );
      assert.deepEqual(
        ruleLines(await iptablesIn(x.id, "ipv4", d.host)),
        [],
        "--on-error skip: nothing applied",
      );
      assert.equal((await skip.stop()).code, 0);

      const deny = await daemon(["--consul-timeout", "2s"], { consul: down });
      await deny.waitForLog(
        (e) => e.msg.startsWith("deny-all applied") && e.container === x.name,
        30_000,
        "deny-all applied",
      );
      const denied = ruleLines(await iptablesIn(x.id, "ipv4", d.host));
      assert.ok(denied.includes(REJECT_ALL_LINE), `deny-all set:\n${denied.join("\n")}`);
      const blocked = await canConnect(x.id, ip, 8080, d.host);
      assert.equal(blocked.ok, false, `deny-all lets traffic through: ${blocked.detail}`);

      relay = startRelay(port, consul.address);
      await deny.waitForLog(isApplied(x.name), 45_000, "the real rules once Consul answers");
      const real = ruleLines(await iptablesIn(x.id, "ipv4", d.host));
      assert.ok(!real.includes(REJECT_ALL_LINE), `deny-all still there:\n${real.join("\n")}`);
      assert.ok(real.includes(rejectLine(OTHER_CIDR, 443)), `real rules:\n${real.join("\n")}`);
      const open = await canConnect(x.id, ip, 8080, d.host);
      assert.equal(open.ok, true, `srv is listed, yet: ${open.detail}`);
      assert.equal((await deny.stop()).code, 0);
    } finally {
      await relay?.close();
    }
  });
});

Deno.test("daemon: keeps enforcing across a dockerd restart", async () => {
  await withLive({}, async ({ d, consul, prefix, daemon }) => {
    await consul.putKv(`${prefix}srv`, "10.50.129.0/24:tcp/8080\n");
    const p = await daemon([]);
    await p.waitForLog((e) => e.msg === "connected to docker", 20_000, "connected to docker");
    await d.restart();
    await p.waitForLog((e) => e.msg === "reconnected to docker", 40_000, "reconnected to docker");
    const c = await d.run({ cmd: ["sleep", "600"], env: opted("other") });
    await p.waitForLog(isApplied(c.name), 20_000, `applied for ${c.name} after the restart`);
    const saved = ruleLines(await iptablesIn(c.id, "ipv4", d.host));
    assert.ok(saved.includes(rejectLine("10.50.129.0/24", 8080)), saved.join("\n"));
    assert.equal((await p.stop()).code, 0);
  });
});
