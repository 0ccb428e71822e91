/**
 * The packaged unit (packaging/egresstrator.service) under a real systemd, with its hardening as shipped:
 * a systemd machine (tests/support/systemd.ts) with its own dockerd and Consul, egresstrator installed by
 * install.sh from a local release directory whose binary is the stand-in (main.ts under `deno run` with
 * exactly compile.sh's permissions). Proven with traffic between the machine's own containers:
 * `systemctl start` enforces, `reload` re-reads the template, a crash is restarted, rules by DNS name work
 * (the forwarder's listeners, sets and steering under the unit's hardening), `stop` exits cleanly and
 * leaves no helper, and the journal has one line per decision.
 */
import assert from "node:assert/strict";
import { BUSYBOX_IMAGE, HELPER_IMAGE, requireImage, SYSTEMD_IMAGE } from "../support/docker.ts";
import { waitFor } from "../support/egresstrator.ts";
import { testDnsFiles } from "../support/dns_server.ts";
import { PLATFORM_BIN, standInRelease } from "../support/standin.ts";
import { INSIDE, startSystemdMachine, type SystemdMachine } from "../support/systemd.ts";

for (const image of [SYSTEMD_IMAGE, BUSYBOX_IMAGE, HELPER_IMAGE]) await requireImage(image);

const UNIT = "egresstrator";

/** `docker run -d` in the machine; the container's id. */
async function run(m: SystemdMachine, name: string, env: string[], cmd: string): Promise<string> {
  const e = env.map((v) => `-e ${v}`).join(" ");
  return (await m.must(`docker run -d --name ${name} ${e} ${BUSYBOX_IMAGE} ${cmd}`)).trim();
}

/** Whether container `name` in the machine gets an HTTP answer from ip:8080 (busybox nc, 2 s at most). */
async function reaches(m: SystemdMachine, name: string, ip: string): Promise<boolean> {
  const r = await m.sh(
    `docker exec ${name} sh -c "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 ${ip} 8080"`,
  );
  return r.code === 0 && /^HTTP\/1\.[01] \d{3}/.test(r.stdout);
}

/** The journal's decision lines for a container (text format: `<time> INFO  applied container=<name> ...`). */
async function decisions(m: SystemdMachine, name: string): Promise<string[]> {
  return (await m.journal(UNIT)).filter((l) => new RegExp(` applied container=${name} `).test(l));
}

async function waitDecisions(m: SystemdMachine, name: string, n: number, what: string): Promise<string[]> {
  return await waitFor(
    async () => {
      const d = await decisions(m, name);
      return d.length >= n ? d : undefined;
    },
    60_000,
    `${n} applied line(s) for ${name} ${what}`,
  );
}

const opted = (acl: string) => ["EGRESSTRATOR_ENABLE=1", `EGRESSTRATOR_ACL=${acl}`];

Deno.test("systemd: the packaged unit, hardened, under a real systemd: start, reload, crash, stop", async () => {
  const dir = await Deno.makeTempDir({ prefix: "egt-sysd-" });
  let m: SystemdMachine | undefined;
  try {
    await standInRelease(`${dir}/release`, INSIDE);
    m = await startSystemdMachine(`${dir}/release`);
    await Promise.all([m.loadImage(BUSYBOX_IMAGE), m.loadImage(HELPER_IMAGE)]);

    const installed = await m.must(`sh /release/install.sh --from /release/${PLATFORM_BIN}`);
    assert.match(installed, new RegExp(`verified /release/${PLATFORM_BIN} against /release/sha256sums`));
    assert.match(installed, /installed unit \/etc\/systemd\/system\/egresstrator.service/);
    assert.match(installed, /--version: \d+\.\d+\.\d+/);

    await run(m, "srv", [], "httpd -f -p 8080");
    const ip = (await m.must("docker inspect -f '{{.NetworkSettings.IPAddress}}' srv")).trim();
    await m.must(
      `consul kv put egress/acl/srv '${ip}/32:tcp/8080' && consul kv put egress/acl/other 10.50.128.0/24:tcp/443`,
    );
    // A template file of our own, so that reload has something to re-read: first the built-in protect.
    await m.must(
      `mkdir -p /etc/egresstrator && cp ${INSIDE.repo}/templates/protect.eta /etc/egresstrator/rules.eta`,
    );
    await m.must("echo CONSUL_TEMPLATE=/etc/egresstrator/rules.eta >> /etc/default/egresstrator");
    await run(m, "c1", opted("other"), "sleep 3600"); // srv is protected from it
    await run(m, "c2", opted("srv"), "sleep 3600"); // lists srv: allowed
    await run(m, "plain", [], "sleep 3600");
    assert.ok(await reaches(m, "c1", ip), "setup: c1 reaches the server before the daemon runs");

    // start: enforces the containers already running, with its hardening in place.
    await m.must(`systemctl enable --now ${UNIT}`);
    await waitDecisions(m, "c1", 1, "after start");
    await waitDecisions(m, "c2", 1, "after start");
    assert.equal(await reaches(m, "c1", ip), false, "c1 is enforced");
    assert.equal(await reaches(m, "c2", ip), true, "c2 lists srv");
    assert.equal(await reaches(m, "plain", ip), true, "no opt-in: untouched");
    const journal = await m.journal(UNIT);
    assert.ok(journal.some((l) => / INFO {2}status server listening /.test(l)), journal.join("\n"));
    assert.ok(
      !journal.some((l) => /no IPv6/.test(l)),
      `the binary must see this kernel's IPv6:\n${journal.join("\n")}`,
    );
    // It runs with the unit's hardening: only the bounding set's capabilities, no new privileges, a
    // read-only /usr (ProtectSystem=strict), and /run/egresstrator writable.
    const pid = (await m.show(UNIT, ["MainPID"])).MainPID;
    const proc = await m.must(`grep -E '^(CapBnd|NoNewPrivs):' /proc/${pid}/status`);
    // CAP_DAC_OVERRIDE 1, NET_ADMIN 12, NET_RAW 13, SYS_PTRACE 19, SYS_ADMIN 21, SYSLOG 34 (the deny log).
    assert.match(proc, /^CapBnd:\s+0000000400283002$/m);
    assert.match(proc, /^NoNewPrivs:\s+1$/m);
    assert.match(await m.must(`nsenter -t ${pid} -m findmnt -no OPTIONS -T /usr`), /^ro,/);
    assert.match(await m.must(`nsenter -t ${pid} -m findmnt -no OPTIONS -T /run/egresstrator`), /^rw,/);
    const status = await m.must("egresstrator status");
    assert.match(status, /c1/);
    assert.match(status, /c2/);

    // reload: a new template (everything else rejected) is read, and every container re-checked.
    await m.must(`sed -i 's/^COMMIT$/-A OUTPUT -j REJECT\\nCOMMIT/' /etc/egresstrator/rules.eta`);
    await m.must(`systemctl reload ${UNIT}`);
    await waitDecisions(m, "c2", 2, "after reload");
    assert.ok((await m.journal(UNIT)).some((l) => /templates reloaded/.test(l)));
    assert.equal(await reaches(m, "c2", ip), false, "the reloaded template rejects the rest");
    for (const c of ["c1", "c2"]) {
      assert.equal((await decisions(m, c)).length, 2, `${c}: one line per decision (start, reload)`);
    }

    // crash: SIGKILL is a failure, Restart=on-failure starts it again, and it catches up.
    const before = await m.show(UNIT, ["MainPID", "NRestarts"]);
    await m.must(`systemctl kill -s SIGKILL ${UNIT}`);
    await run(m, "c3", opted("other"), "sleep 3600");
    await waitFor(
      async () => {
        const s = await m!.show(UNIT, ["MainPID", "NRestarts", "ActiveState"]);
        return s.ActiveState === "active" && s.NRestarts === String(Number(before.NRestarts) + 1) &&
          s.MainPID !== before.MainPID && s.MainPID !== "0";
      },
      30_000,
      "the unit restarted after SIGKILL",
    );
    const c3 = await waitDecisions(m, "c3", 1, "after the restart");
    assert.equal(c3.length, 1);
    assert.equal(await reaches(m, "c3", ip), false, "started while it was down: enforced after the restart");
    assert.equal(await reaches(m, "c1", ip), false, "c1 keeps its rules across the crash");

    // Rules by DNS name under the unit's hardening: the forwarder's thread enters the container's namespace
    // (setns, RestrictNamespaces=net), set entries go over netlink (AF_NETLINK), the steering is nft. The
    // test DNS server runs in the machine, on its dockerd's bridge, and answers srv.test with the server.
    const dns = testDnsFiles({ "srv.test": { a: [ip], ttl: 60 } }, {
      deno: "/opt/egt-dns/deno",
      code: "/opt/egt-dns/code",
      state: "/egt-dns",
    });
    await m.must("mkdir -p /tmp/dns/code /tmp/dns/state");
    assert.equal((await m.sh("cat > /tmp/dns/code/server.js", { stdin: dns.serverJs })).code, 0);
    assert.equal((await m.sh("cat > /tmp/dns/state/zone.json", { stdin: dns.zoneJson })).code, 0);
    await m.must(
      "docker run -d --name dns -e DENO_DIR=/tmp/deno -e DENO_NO_UPDATE_CHECK=1 -e NO_COLOR=1 " +
        `-v ${INSIDE.deno}:/opt/egt-dns/deno:ro -v /tmp/dns/code:/opt/egt-dns/code:ro -v /tmp/dns/state:/egt-dns ` +
        `${HELPER_IMAGE} ${dns.cmd.join(" ")}`,
    );
    await waitFor(
      async () => /"ready":true/.test((await m!.sh("cat /tmp/dns/state/status.json")).stdout) || undefined,
      30_000,
      "the test DNS server in the machine",
    );
    const dnsIp = (await m.must("docker inspect -f '{{.NetworkSettings.IPAddress}}' dns")).trim();
    await m.must("consul kv put egress/acl/byname 'srv.test:tcp/8080'");
    // The built-in templates again (the one reloaded above uses no set, so a rule by name would get only
    // deny-all: a template must use each name's set).
    await m.must(`sed -i '/^CONSUL_TEMPLATE=/d' /etc/default/egresstrator && systemctl restart ${UNIT}`);
    await m.must(
      `docker run -d --name f1 --dns ${dnsIp} -e EGRESSTRATOR_ENABLE=1 -e EGRESSTRATOR_ACL=byname ` +
        `-e EGRESSTRATOR_POLICY=allowlist ${BUSYBOX_IMAGE} sleep 3600`,
    );
    await waitDecisions(m, "f1", 1, "with a rule by DNS name");
    assert.equal(await reaches(m, "f1", ip), false, "f1 has not looked srv.test up: refused");
    const looked = await m.must("docker exec f1 nslookup -type=a srv.test");
    assert.match(looked, new RegExp(`Address: ${ip.replace(/\./g, "\\.")}\n`), looked);
    assert.equal(await reaches(m, "f1", ip), true, "f1 looked srv.test up: its answer is reached");
    const steered = JSON.parse(await m.must("egresstrator status --json")) as {
      dns?: { name: string; resolvers: string[]; names: { name: string; count: number }[] }[];
    };
    const row = steered.dns?.find((d) => d.name === "f1");
    assert.deepEqual(row?.resolvers, [dnsIp], JSON.stringify(steered.dns));
    assert.ok(row?.names.some((n) => n.name === "srv.test" && n.count >= 1), JSON.stringify(row));
    // Helper mode, next, cannot keep rules by name (nor protect from a name) true: the key goes again.
    await m.must("docker rm -f f1 dns && consul kv delete egress/acl/byname");

    // stop, in helper mode: a clean exit (SIGTERM, status 0), and no helper container left.
    await m.must("echo EGRESSTRATOR_IMAGE=egresstrator-test/helper:1 >> /etc/default/egresstrator");
    await m.must(`systemctl restart ${UNIT}`);
    await run(m, "c4", opted("other"), "sleep 3600");
    const [c4] = await waitDecisions(m, "c4", 1, "in helper mode");
    assert.match(c4, / mode=helper /);
    assert.equal(await reaches(m, "c4", ip), false, "c4 is enforced by a helper");
    await m.must(`systemctl stop ${UNIT}`);
    const stopped = await m.show(UNIT, ["ActiveState", "Result", "ExecMainStatus", "ExecMainCode"]);
    assert.deepEqual(stopped, {
      ActiveState: "inactive",
      Result: "success",
      ExecMainStatus: "0",
      ExecMainCode: "1",
    });
    assert.ok((await m.journal(UNIT)).some((l) => / INFO {2}stopped/.test(l)), "the daemon said it stopped");
    assert.equal(
      (await m.must("docker ps -aq --filter label=egresstrator.helper")).trim(),
      "",
      "helpers left",
    );
    assert.equal(await reaches(m, "c4", ip), false, "rules stay in place after the daemon stops");
  } catch (err) {
    if (m) console.log((await m.journal(UNIT).catch(() => [])).slice(-40).join("\n"));
    throw err;
  } finally {
    await m?.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
