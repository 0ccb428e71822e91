/**
 * Traffic proofs on the real dockerd, in both apply modes: `set` makes a protected destination
 * unreachable for a container that does not list its key, leaves it reachable for one that does, and
 * `clear` opens it again. Keys name the server by CIDR, by Consul service (`prod.web`) and by port range.
 * Docker's embedded DNS keeps answering while the port is blocked. `set -r` overrides the opt-in.
 *
 * All traffic stays on a network this test creates, between containers it starts; the other
 * addresses in the keys (10.50.128.0/24) are never dialed.
 */
import assert from "node:assert/strict";
import {
  BUSYBOX_IMAGE,
  containerIp,
  execIn,
  HELPER_IMAGE,
  removeAllTestObjects,
  requireImage,
  RUN_ID,
  runContainer,
} from "../support/docker.ts";
import { type ConsulAgent, startConsul } from "../support/consul.ts";
import {
  canConnect,
  createSubnetNetwork,
  helpersLeft,
  iptablesIn,
  rejectLine,
  ruleLines,
  runCli,
} from "../support/egresstrator.ts";

/** Never dialed: only there so "other" has a destination of its own. */
const OTHER = "10.50.128.0/24:tcp/443";

type Mode = "nsenter" | "helper";

interface Fixture {
  consul: ConsulAgent;
  serverIp: string;
  serverName: string;
  a: { id: string; name: string };
  b: { id: string; name: string };
  c: { id: string; name: string };
  cli(prefix: string, args: string[]): ReturnType<typeof runCli>;
}

async function assertReach(id: string, ip: string, want: boolean, what: string): Promise<void> {
  const r = await canConnect(id, ip, 8080);
  assert.equal(
    r.ok,
    want,
    `${what}: expected ${want ? "to reach" : "NOT to reach"} ${ip}:8080 (${r.detail})`,
  );
}

async function setUp(mode: Mode): Promise<Fixture> {
  await requireImage(BUSYBOX_IMAGE);
  if (mode === "helper") await requireImage(HELPER_IMAGE);
  const consul = await startConsul();
  const net = await createSubnetNetwork();
  const server = await runContainer({ cmd: ["httpd", "-f", "-p", "8080"], network: net.name });
  const serverIp = await containerIp(server.id, net.name);
  await consul.registerService({
    id: `web-${mode}`,
    name: "web",
    address: serverIp,
    port: 8080,
    tags: ["prod"],
  });
  const base = `egress/${RUN_ID}-${mode}`;
  const variants: Record<string, string> = {
    cidr: `${serverIp}/32:tcp/8080`,
    svc: "prod.web",
    range: `${serverIp}/32:tcp/8000-8100`,
  };
  for (const [v, srv] of Object.entries(variants)) {
    await consul.putKv(`${base}/${v}/srv`, `${srv}\n`);
    await consul.putKv(`${base}/${v}/other`, `${OTHER}\n`);
  }
  const sleeper = (env: string[]) => runContainer({ cmd: ["sleep", "600"], network: net.name, env });
  const [a, b, c] = await Promise.all([
    sleeper(["EGRESSTRATOR_ENABLE=1", "EGRESSTRATOR_ACL=other"]),
    sleeper(["EGRESSTRATOR_ENABLE=1", "EGRESSTRATOR_ACL=srv"]),
    sleeper([]),
  ]);
  const modeArgs = mode === "helper" ? ["--mode", "helper", "-i", HELPER_IMAGE] : [];
  const cli = (variant: string, args: string[]) =>
    runCli(["-c", consul.address, "-k", `${base}/${variant}/`, ...modeArgs, ...args], { timeoutMs: 60_000 });
  return { consul, serverIp, serverName: server.name, a, b, c, cli };
}

function assertOk(r: { code: number; stdout: string; stderr: string }, what: string): void {
  assert.equal(r.code, 0, `${what} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}

for (const mode of ["nsenter", "helper"] as const) {
  Deno.test(`traffic (${mode}): set blocks unlisted keys' destinations, listed ones pass, clear reopens`, async (t) => {
    let f: Fixture | undefined;
    try {
      f = await setUp(mode);
      const { a, b, serverIp } = f;
      const fx = f;

      await t.step("before any rules, both clients reach the server", async () => {
        await assertReach(a.id, serverIp, true, "A before set");
        await assertReach(b.id, serverIp, true, "B before set");
      });

      const rejects: Record<string, string> = {
        cidr: rejectLine(`${serverIp}/32`, 8080),
        svc: rejectLine(`${serverIp}/32`, 8080),
        range: rejectLine(`${serverIp}/32`, "8000-8100"),
      };
      for (const [variant, reject] of Object.entries(rejects)) {
        await t.step(
          `key srv by ${variant}: A (acl other) blocked, B (acl srv) passes, clear A reopens`,
          async () => {
            const setA = await fx.cli(variant, ["set", a.name]);
            assertOk(setA, "set A");
            assert.match(
              setA.stdout,
              new RegExp(
                `^${a.name} \\(${
                  a.id.slice(0, 12)
                }\\): \\d+ rules applied, acls other, policy protect, ${mode}`,
                "m",
              ),
            );
            assertOk(await fx.cli(variant, ["set", b.name]), "set B");

            const savedA = ruleLines(await iptablesIn(a.id));
            const savedB = ruleLines(await iptablesIn(b.id));
            assert.ok(savedA.includes(reject), `A's table lacks ${reject}:\n${savedA.join("\n")}`);
            assert.ok(
              !savedB.some((l) => l.includes(serverIp)),
              `B's table names the server:\n${savedB.join("\n")}`,
            );
            assert.ok(savedB.includes(rejectLine("10.50.128.0/24", 443)), `B's table lacks other's REJECT`);

            await assertReach(a.id, serverIp, false, `A after set (${variant})`);
            await assertReach(b.id, serverIp, true, `B after set (${variant})`);

            const clearA = await fx.cli(variant, ["clear", a.name]);
            assertOk(clearA, "clear A");
            assert.match(clearA.stdout, new RegExp(`^${a.name} \\(${a.id.slice(0, 12)}\\): cleared$`, "m"));
            assert.deepEqual(ruleLines(await iptablesIn(a.id)), [], "A's filter table after clear");
            await assertReach(a.id, serverIp, true, `A after clear (${variant})`);
            assertOk(await fx.cli(variant, ["clear", b.name]), "clear B");
          },
        );
      }

      await t.step(
        "Docker's embedded DNS still resolves the server's name while its port is blocked",
        async () => {
          assertOk(await fx.cli("cidr", ["set", a.name]), "set A");
          const ns = await execIn(a.id, ["nslookup", fx.serverName, "127.0.0.11"]);
          assert.equal(ns.code, 0, `nslookup failed: ${ns.stdout} ${ns.stderr}`);
          assert.match(ns.stdout, new RegExp(`Address:\\s+${serverIp.replaceAll(".", "\\.")}\\b`));
          // The resolver from resolv.conf (127.0.0.11) without naming it.
          const plain = await execIn(a.id, ["nslookup", fx.serverName]);
          assert.ok(
            plain.stdout.includes(serverIp),
            `nslookup via resolv.conf: ${plain.stdout} ${plain.stderr}`,
          );
          await assertReach(a.id, serverIp, false, "A with rules, while DNS works");
          assertOk(await fx.cli("cidr", ["clear", a.name]), "clear A");
        },
      );

      await t.step(
        "set -r overrides the opt-in; set without -r on a non-opted-in container fails",
        async () => {
          const c = fx.c;
          const plain = await fx.cli("cidr", ["set", c.name]);
          assert.notEqual(plain.code, 0, `set on a container without EGRESSTRATOR_ENABLE: ${plain.stdout}`);
          assert.match(
            plain.stdout,
            new RegExp(
              `${c.name} \\(${
                c.id.slice(0, 12)
              }\\): not set: not opted in \\(set EGRESSTRATOR_ENABLE=1 or pass --rules\\)`,
            ),
          );
          assert.deepEqual(ruleLines(await iptablesIn(c.id)), [], "nothing applied without -r");

          const allowSrv = await fx.cli("cidr", ["set", "-r", "srv", c.name]);
          assertOk(allowSrv, "set -r srv C");
          assert.match(allowSrv.stdout, /rules applied, acls srv, policy protect/);
          const saved = ruleLines(await iptablesIn(c.id));
          assert.ok(
            saved.includes(rejectLine("10.50.128.0/24", 443)),
            `C lacks other's REJECT:\n${saved.join("\n")}`,
          );
          assert.ok(!saved.some((l) => l.includes(serverIp)), "C (-r srv) must not block the server");
          await assertReach(c.id, serverIp, true, "C with -r srv");

          assertOk(await fx.cli("cidr", ["set", "-r", "other", c.name]), "set -r other C");
          await assertReach(c.id, serverIp, false, "C with -r other");
          assertOk(await fx.cli("cidr", ["clear", c.name]), "clear C");
          await assertReach(c.id, serverIp, true, "C after clear");
        },
      );

      if (mode === "helper") {
        await t.step("no helper container is left behind", async () => {
          for (const ct of [a, b, fx.c]) assert.deepEqual(await helpersLeft(ct.id), []);
        });
      }
    } finally {
      await removeAllTestObjects();
      await f?.consul.stop();
    }
  });
}
