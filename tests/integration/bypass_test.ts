/**
 * No way around the rules, each tried for real: a host-network container (its rules would be the host's
 * firewall), a hand-built frame from a packet socket, a NOTRACK rule written by a container holding
 * NET_ADMIN, a connection that is already open when its destination is revoked, and DNS over TCP and TLS.
 *
 * Traffic only flows between containers these tests started, on networks they created. The host-network
 * test snapshots the host's tables first and puts them back afterwards, whatever happens.
 */
import assert from "node:assert/strict";
import {
  BUSYBOX_IMAGE,
  containerAddresses,
  dockerCli,
  execIn,
  HELPER_IMAGE,
  RUN_ID,
  TEST_LABEL,
} from "../support/docker.ts";
import { canConnect, runCli, waitFor } from "../support/egresstrator.ts";
import { getStatus, optIn, withLive } from "../support/live.ts";
import { writeGateWrapper } from "../support/gate.ts";
import { capsFromProcStatus } from "../../src/rules/isolation.ts";

async function run(cmd: string, args: string[], stdin?: string): Promise<{ code: number; out: string }> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  })
    .spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const r = await child.output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

/** The host's filter and raw tables, both families, as iptables-save prints them. */
async function hostTables(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const tool of ["iptables-save", "ip6tables-save"]) {
    for (const table of ["filter", "raw"]) out[`${tool} -t ${table}`] = (await run(tool, ["-t", table])).out;
  }
  return out;
}

/** Saved text without comments and counters: equal text, equal rules. */
function rules(text: string): string {
  return text.split("\n").filter((l) => l && !l.startsWith("#")).map((l) => l.replace(/ \[\d+:\d+\]$/, ""))
    .join("\n");
}

Deno.test("bypass: a --network host container is never applied to: set/clear exit 2, the daemon refuses, the host's tables stay", async () => {
  const before = await hostTables();
  const docker = (l: string) => l.startsWith("*") || l.startsWith(":") || l.includes("DOCKER");
  try {
    await withLive({}, async (env) => {
      const c = await env.d.run({ cmd: ["sleep", "600"], network: "host", env: optIn(["payments"]) });
      const cli = (args: string[]) =>
        runCli(["-c", env.consul.address, "-k", env.prefix, "-H", env.d.host, ...args]);
      await env.put("payments", "10.50.128.0/24:tcp/443\n");
      for (const args of [["set", c.name], ["set", "-r", "payments", c.name], ["clear", c.name]]) {
        const r = await cli(args);
        assert.equal(r.code, 2, `${args.join(" ")}: exit ${r.code}\n${r.stdout}${r.stderr}`);
        assert.match(r.stderr, /shares the host's network namespace/, args.join(" "));
      }
      const p = await env.daemon();
      await p.waitForLog(
        (e) => e.msg === "not enforceable" && e.container === c.name,
        30_000,
        "not enforceable",
      );
      const row = (await getStatus(env.listen)).containers.find((r) => r.name === c.name);
      assert.match(row?.refused ?? "", /host's network namespace/);
      assert.equal((await p.stop()).code, 0);
    });
    // Docker's own chains and the tables' chains are all still there, and nothing of ours is. (Rules for
    // other tests' networks may come and go meanwhile: the suite's end checks the host as a whole.)
    const after = await hostTables();
    for (const k of Object.keys(before)) {
      const now = new Set(rules(after[k]).split("\n"));
      const gone = rules(before[k]).split("\n").filter((l) => docker(l) && !now.has(l));
      assert.deepEqual(gone, [], `lines gone from the host's ${k}`);
      const ours = [...now].filter((l) => /egresstrator-dns|10\.50\.128\.0\/24|--ctdir ORIGINAL/.test(l));
      assert.deepEqual(ours, [], `egresstrator rules in the host's ${k}`);
    }
  } finally {
    // Put back only what went missing (a flush of the host's tables), whatever the assertions said.
    const now = await hostTables();
    for (const [k, text] of Object.entries(before)) {
      const have = new Set(rules(now[k]).split("\n"));
      if (rules(text).split("\n").every((l) => !docker(l) || have.has(l))) continue;
      const restore = k.startsWith("ip6") ? "ip6tables-restore" : "iptables-restore";
      await run(restore, [], text);
      console.warn(`bypass test: put the host's ${k} back`);
    }
  }
});

/** Sends one hand-built Ethernet/IPv4/UDP frame from a packet socket (AF_PACKET, SOCK_RAW): no iptables. */
const RAW_SENDER = String.raw`
use Socket;
my ($ifindex, $dmac, $smac, $sip, $dip, $port) = @ARGV;
socket(my $s, 17, 3, 0) or die "socket(AF_PACKET): $!\n";
my $payload = "EGT-RAW-FRAME";
my $udp = pack("nnnn", 40000, $port, 8 + length($payload), 0) . $payload;
my $ip = pack("CCnnnCCnA4A4", 0x45, 0, 20 + length($udp), 0, 0x4000, 64, 17, 0, inet_aton($sip), inet_aton($dip));
my $sum = 0; $sum += $_ for unpack("n10", $ip); $sum = ($sum >> 16) + ($sum & 0xffff); $sum += $sum >> 16;
substr($ip, 10, 2) = pack("n", ~$sum & 0xffff);
my $mac = sub { pack("H12", join("", split(/:/, shift))) };
my $frame = $mac->($dmac) . $mac->($smac) . pack("n", 0x0800) . $ip . $udp;
send($s, $frame, 0, pack("SniSCCa8", 17, 0x0800, $ifindex, 0, 0, 6, $mac->($dmac))) or die "send: $!\n";
print "sent\n";
`;

/** A UDP receiver: writes the first datagram on port 9999 to /tmp/got, then stays up to be asked. */
const RECEIVER = String.raw`
use Socket;
socket(my $s, PF_INET, SOCK_DGRAM, 0) or die "$!";
bind($s, sockaddr_in(9999, INADDR_ANY)) or die "$!";
open(my $f, ">", "/tmp/got") or die "$!";
recv($s, my $buf, 200, 0); print $f $buf; close($f);
sleep 600;
`;

Deno.test("bypass: a crafted frame from a packet socket gets past iptables, unless the gate dropped CAP_NET_RAW", async () => {
  const dir = await Deno.makeTempDir({ prefix: "egt-bypass-" });
  try {
    const runtime = await writeGateWrapper(dir);
    await Deno.writeTextFile(`${dir}/gate.env`, "");
    await withLive(
      { images: [BUSYBOX_IMAGE, HELPER_IMAGE], runtimes: { "egresstrator-gate": runtime } },
      async (env) => {
        const net = await env.d.createNetwork();
        const server = await env.d.run({
          image: HELPER_IMAGE,
          cmd: ["perl", "-e", RECEIVER],
          network: net.name,
        });
        const { v4: dip } = await containerAddresses(server.id, net.name, env.d.host);
        const dmac = (await execIn(server.id, ["cat", "/sys/class/net/eth0/address"], { host: env.d.host }))
          .stdout.trim();
        const p = await env.daemon();
        const send = async (runtime?: string) => {
          const c = await env.d.run({
            image: HELPER_IMAGE,
            cmd: ["sleep", "600"],
            network: net.name,
            env: optIn([], "allowlist"),
            hostConfig: runtime ? { Runtime: runtime } : {},
          });
          await p.waitForLog(
            (e) => e.msg === "applied" && e.container === c.name,
            60_000,
            `applied for ${c.name}`,
          );
          const sh = (cmd: string) => execIn(c.id, ["sh", "-c", cmd], { host: env.d.host });
          const ifindex = (await sh("cat /sys/class/net/eth0/ifindex")).stdout.trim();
          const smac = (await sh("cat /sys/class/net/eth0/address")).stdout.trim();
          const { v4: sip } = await containerAddresses(c.id, net.name, env.d.host);
          const sent = await execIn(c.id, ["perl", "-e", RAW_SENDER, ifindex, dmac, smac, sip, dip, "9999"], {
            host: env.d.host,
          });
          // The container's own process, not only what `docker exec` starts.
          const caps = capsFromProcStatus((await sh("cat /proc/1/status")).stdout) ?? [];
          return { ...sent, caps };
        };
        const got = () => execIn(server.id, ["cat", "/tmp/got"], { host: env.d.host }).then((r) => r.stdout);

        // Under the gate: CAP_NET_RAW is gone, the packet socket cannot even be opened.
        const gated = await send("egresstrator-gate");
        assert.notEqual(gated.code, 0, `the gated sender: ${gated.stdout}${gated.stderr}`);
        assert.match(gated.stderr, /socket\(AF_PACKET\): Operation not permitted/);
        assert.ok(!gated.caps.includes("NET_RAW"), `the gated container's init holds ${gated.caps}`);
        await new Promise((r) => setTimeout(r, 500)); // a frame would have long arrived on this bridge
        assert.equal(await got(), "", "nothing reached the server from the gated container");

        // Plain runc: the same opted-in, allowlisted container sends the frame past every rule.
        const plain = await send();
        assert.equal(plain.code, 0, `${plain.stdout}${plain.stderr}`);
        assert.ok(plain.caps.includes("NET_RAW"));
        await waitFor(
          async () => (await got()) === "EGT-RAW-FRAME",
          5_000,
          "the crafted frame at the server",
        );
        const w = p.logs().find((e) => e.msg === "holds capabilities that get around its rules");
        assert.ok(w && String(w.caps).includes("NET_RAW"), "the daemon warned about NET_RAW");
        assert.equal((await p.stop()).code, 0);
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bypass: a NOTRACK rule written by a container holding NET_ADMIN is drift, and is undone", async () => {
  await withLive({ images: [BUSYBOX_IMAGE, HELPER_IMAGE] }, async (env) => {
    const net = await env.d.createNetwork();
    const server = await env.d.run({ cmd: ["httpd", "-f", "-p", "8080"], network: net.name });
    const { v4: ip } = await containerAddresses(server.id, net.name, env.d.host);
    await env.put("srv", `${ip}/32:tcp/8080\n`);
    const c = await env.d.run({
      image: HELPER_IMAGE,
      cmd: ["sleep", "600"],
      network: net.name,
      env: optIn([], "protect"),
      hostConfig: { CapAdd: ["NET_ADMIN"] },
    });
    const p = await env.daemon(["--resync-interval", "1s"]);
    await p.waitForLog((e) => e.msg === "applied" && e.container === c.name, 60_000, "applied");
    const viaPerl = (port: number) =>
      execIn(c.id, [
        "perl",
        "-MIO::Socket::INET",
        "-e",
        `IO::Socket::INET->new(PeerAddr => "${ip}:${port}", Timeout => 2) or exit 1`,
      ], {
        host: env.d.host,
      });
    assert.notEqual((await viaPerl(8080)).code, 0, "protected before the NOTRACK rule");
    const notrack = await execIn(c.id, ["iptables", "-t", "raw", "-A", "OUTPUT", "-j", "CT", "--notrack"], {
      host: env.d.host,
    });
    assert.equal(notrack.code, 0, notrack.stderr);
    await p.waitForLog(
      (e) => e.msg === "rules drifted; re-applying" && e.container === c.name,
      10_000,
      "drift seen",
    );
    await waitFor(async () => (await viaPerl(8080)).code !== 0, 10_000, "protected again after the repair");
    const raw = await execIn(c.id, ["iptables-save", "-t", "raw"], { host: env.d.host });
    assert.ok(!raw.stdout.includes("--notrack"), raw.stdout);
    assert.equal((await p.stop()).code, 0);
  });
});

/** A server that writes "tick" every 50 ms to whoever connects on 9000. */
const TICKER = [
  "sh",
  "-c",
  `printf '#!/bin/sh\\nwhile echo tick; do sleep 0.05; done\\n' > /tmp/tick && chmod +x /tmp/tick && exec nc -ll -p 9000 -e /tmp/tick`,
];

Deno.test("bypass: revoking a destination cuts an open connection within 2 s; an allowed one keeps flowing", async () => {
  await withLive({}, async (env) => {
    const net = await env.d.createNetwork();
    const [s1, s2] = [
      await env.d.run({ cmd: TICKER, network: net.name }),
      await env.d.run({ cmd: TICKER, network: net.name }),
    ];
    const ip1 = (await containerAddresses(s1.id, net.name, env.d.host)).v4;
    const ip2 = (await containerAddresses(s2.id, net.name, env.d.host)).v4;
    await env.put("other", "10.50.128.0/24:tcp/443\n");
    const c = await env.d.run({ cmd: ["sleep", "600"], network: net.name, env: optIn([], "protect") });
    const p = await env.daemon();
    await p.waitForLog((e) => e.msg === "applied" && e.container === c.name, 60_000, "applied");
    const sh = (cmd: string) => execIn(c.id, ["sh", "-c", cmd], { host: env.d.host });
    await sh(`nc ${ip1} 9000 > /tmp/a 2>&1 & nc ${ip2} 9000 > /tmp/b 2>&1 &`);
    const size = async (f: string) => Number((await sh(`wc -c < /tmp/${f}`)).stdout.trim() || "0");
    const growing = async (f: string) => {
      const a = await size(f);
      await new Promise((r) => setTimeout(r, 400));
      return (await size(f)) > a;
    };
    await waitFor(async () => (await growing("a")) && (await growing("b")), 10_000, "both streams flowing");

    const t0 = Date.now();
    await env.put("srv1", `${ip1}/32:tcp/9000\n`); // now protected: not in the container's list
    await waitFor(async () => !(await growing("a")), 2_000 + 400, "the revoked stream stopped within 2 s");
    const cutMs = Date.now() - t0;
    assert.ok(await growing("b"), "the stream that is still allowed keeps flowing");
    console.log(`revoked stream stopped ${cutMs} ms after the KV write`);
    assert.equal((await p.stop()).code, 0);
  });
});

Deno.test("bypass: DNS over tcp/53 and DoT (tcp/853) reach only the allowed resolvers", async () => {
  await withLive({}, async (env) => {
    const net = await env.d.createNetwork();
    const resolver = await env.d.run({
      cmd: ["sh", "-c", "httpd -p 53 && httpd -f -p 853"],
      network: net.name,
    });
    const other = await env.d.run({ cmd: ["sh", "-c", "httpd -p 53 && httpd -f -p 853"], network: net.name });
    const ok = (await containerAddresses(resolver.id, net.name, env.d.host)).v4;
    const bad = (await containerAddresses(other.id, net.name, env.d.host)).v4;
    await env.put("other", "10.50.128.0/24:tcp/443\n");
    const c = await env.d.run({ cmd: ["sleep", "600"], network: net.name, env: optIn([], "protect") });
    for (const [ip, port] of [[ok, 53], [bad, 53], [ok, 853], [bad, 853]] as const) {
      await waitFor(
        async () => (await canConnect(c.id, ip, port, env.d.host)).ok,
        20_000,
        `before: ${ip}:${port}`,
      );
    }
    const p = await env.daemon(["--dns", `${ok}/32`]);
    await p.waitForLog((e) => e.msg === "applied" && e.container === c.name, 60_000, "applied");
    for (
      const [ip, port, want] of [[ok, 53, true], [bad, 53, false], [ok, 853, true], [
        bad,
        853,
        false,
      ]] as const
    ) {
      const r = await canConnect(c.id, ip, port, env.d.host);
      assert.equal(
        r.ok,
        want,
        `tcp/${port} to ${ip === ok ? "the allowed resolver" : "another server"}: ${r.detail}`,
      );
    }
    assert.equal((await p.stop()).code, 0);
  });
});

Deno.test("bypass: the gate refuses an opted-in host-network or NET_ADMIN container, unless configured to let it start", async () => {
  const dir = await Deno.makeTempDir({ prefix: "egt-bypass-" });
  try {
    const runtime = await writeGateWrapper(dir);
    await Deno.writeTextFile(`${dir}/gate.env`, "");
    await withLive({ runtimes: { "egresstrator-gate": runtime } }, async (env) => {
      await env.put("other", "10.50.128.0/24:tcp/443\n");
      const p = await env.daemon();
      await p.waitForLog((e) => e.msg === "connected to docker", 30_000, "connected");
      const run = (extra: string[]) =>
        dockerCli([
          "run",
          "--rm",
          "--runtime",
          "egresstrator-gate",
          "--label",
          `${TEST_LABEL}=${RUN_ID}`,
          "-e",
          "EGRESSTRATOR_ENABLE=1",
          ...extra,
          BUSYBOX_IMAGE,
          "true",
        ], { host: env.d.host });
      const host = await run(["--network", "host"]);
      assert.notEqual(host.code, 0, "a host-network container started");
      assert.match(host.stderr, /refusing to start .*host's network namespace/);
      const admin = await run(["--network", "none", "--cap-add", "NET_ADMIN"]);
      assert.notEqual(admin.code, 0, "a NET_ADMIN container started");
      assert.match(admin.stderr, /refusing to start .*holds CAP_NET_ADMIN/);
      assert.equal((await run(["--network", "none"])).code, 0, "a plain opted-in container starts");

      await Deno.writeTextFile(
        `${dir}/gate.env`,
        "EGRESSTRATOR_GATE_ALLOW_HOST_NETWORK=1\nEGRESSTRATOR_GATE_ALLOW_NET_ADMIN=1\n",
      );
      assert.equal(
        (await run(["--network", "host"])).code,
        0,
        "allowed by EGRESSTRATOR_GATE_ALLOW_HOST_NETWORK",
      );
      assert.equal(
        (await run(["--network", "none", "--cap-add", "NET_ADMIN"])).code,
        0,
        "allowed by ..._NET_ADMIN",
      );
      assert.equal((await p.stop()).code, 0);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
