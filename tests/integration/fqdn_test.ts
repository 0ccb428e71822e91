/**
 * Rules by DNS name, with traffic: test containers on a network the test made, a DNS server the test runs
 * (a test container answering only its own test names, tests/support/dns_server.ts), httpd servers whose
 * addresses the names rotate over, and the daemon on a private dockerd (withLive). The checks are lookups
 * from inside the opted-in container followed by a connect to what it answered, and connects without a
 * lookup (to servers no answer named, to answers that expired, from containers that never asked).
 * Covered: allowlist and protect with rotation, expiry with an open connection across it, wildcards and
 * CNAMEs, a resolver named in the container's own resolv.conf (UDP and TCP), and AAAA over IPv6.
 */
import assert from "node:assert/strict";
import { containerPid, type DaemonProc, waitFor } from "../support/egresstrator.ts";
import {
  createDualStackNetwork,
  getMetrics,
  getStatus,
  type LiveEnv,
  metricValue,
  optIn,
  withLive,
} from "../support/live.ts";
import { BUSYBOX_IMAGE, containerAddresses, containerIp, execIn, HELPER_IMAGE } from "../support/docker.ts";
import { CONTAINER_DENO_RUN, startTestDns, type TestDns } from "../support/dns_server.ts";
import { runCli } from "../support/run_cli.ts";

async function applied(p: DaemonProc, name: string): Promise<void> {
  await p.waitForLog((e) => e.msg === "applied" && e.container === name, 60_000, `applied for ${name}`);
}

/** httpd servers (port 8080) on `net` (a fresh network when unset); the network and their addresses. */
async function servers(env: LiveEnv, n: number, net?: string) {
  const name = net ?? (await env.d.createNetwork()).name;
  const ips: string[] = [];
  const ips6: string[] = [];
  for (let i = 0; i < n; i++) {
    const c = await env.d.run({ cmd: ["httpd", "-f", "-p", "8080"], network: name });
    const { v4, v6 } = await containerAddresses(c.id, name, env.d.host);
    ips.push(v4);
    ips6.push(v6);
  }
  return { net: { name }, ips, ips6 };
}

/** Lookup options: the record type asked (`a` by default) and the port connected to (8080). */
interface LookOptions {
  type?: "a" | "aaaa";
  port?: number;
}

/**
 * `n` times, in the container: look the name up (A or AAAA) and connect to the address it answered. One
 * line per try: `<address> ok|refused|noanswer`.
 */
async function lookThenConnect(id: string, host: string, name: string, n: number, o: LookOptions = {}) {
  const type = o.type ?? "a";
  // The answer's address, not the server's (`Address: 127.0.0.11:53`, `Address: [fd00::2]:53`).
  const chars = type === "a" ? "0-9." : "0-9a-f:";
  const script = `i=0; while [ $i -lt $1 ]; do i=$((i+1));
    a=$(nslookup -type=$2 "$0" 2>/dev/null | sed -n 's/^Address: *\\([${chars}]*\\)$/\\1/p' | tail -n 1)
    if [ -z "$a" ]; then echo "- noanswer"; continue; fi
    if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 "$a" $3 2>/dev/null | grep -q '^HTTP/1'; then echo "$a ok"; else echo "$a refused"; fi
  done`;
  const r = await execIn(id, ["sh", "-c", script, name, String(n), type, String(o.port ?? 8080)], {
    host,
    timeoutMs: 120_000,
  });
  const lines = r.stdout.trim().split("\n").filter(Boolean).map((l) => l.split(" "));
  return {
    ok: lines.filter((l) => l[1] === "ok").length,
    refused: lines.filter((l) => l[1] === "refused").length,
    noanswer: lines.filter((l) => l[1] === "noanswer").length,
    addresses: new Set(lines.filter((l) => l[0] !== "-").map((l) => l[0])),
    raw: r.stdout + r.stderr,
  };
}

async function connects(id: string, host: string, ip: string, port = 8080): Promise<boolean> {
  const r = await execIn(id, [
    "sh",
    "-c",
    `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 "$0" "$1" | grep -q '^HTTP/1'`,
    ip,
    String(port),
  ], { host });
  return r.code === 0;
}

async function withDns<T>(
  env: LiveEnv,
  net: string,
  zone: Parameters<typeof startTestDns>[0]["zone"],
  body: (dns: TestDns) => Promise<T>,
) {
  const dns = await startTestDns({ network: net, zone, host: env.d.host });
  try {
    return await body(dns);
  } finally {
    await dns.stop();
  }
}

/** A resolv.conf naming `server` only, in a temp dir, for a bind mount over a container's own. */
async function withResolvConf<T>(server: string, body: (bind: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "egt-resolv-" });
  try {
    await Deno.writeTextFile(`${dir}/resolv.conf`, `nameserver ${server}\n`);
    await Deno.chmod(dir, 0o755);
    return await body(`${dir}/resolv.conf:/etc/resolv.conf:ro`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The daemon's /status rows for steered containers (rules by DNS name). */
async function steered(env: LiveEnv): Promise<{ name: string; resolvers: string[]; patterns: string[] }[]> {
  const s = await getStatus(env.listen) as unknown as {
    dns?: { name: string; resolvers: string[]; patterns: string[] }[];
  };
  return s.dns ?? [];
}

const IMAGES = [BUSYBOX_IMAGE, HELPER_IMAGE];

Deno.test("fqdn allowlist: a name rotating over three servers (TTL 1) is reached 50/50 times; a fourth server is refused; a daemon restart leaves no open window", async () => {
  await withLive({ images: IMAGES }, async (env) => {
    const { net, ips } = await servers(env, 4);
    await withDns(env, net.name, { "svc.test": { a: ips.slice(0, 3), ttl: 1 } }, async (dns) => {
      await env.put("api", "svc.test:tcp/8080\n");
      const client = await env.d.run({
        cmd: ["sleep", "3600"],
        env: optIn(["api"], "allowlist"),
        network: net.name,
        hostConfig: { Dns: [dns.ip] },
      });
      let p = await env.daemon(["--fqdn-upstream", dns.ip, "--fqdn-min-ttl", "2s"]);
      await applied(p, client.name);
      const r = await lookThenConnect(client.id, env.d.host, "svc.test", 50);
      console.log(
        `  50 tries: ${r.ok} ok, ${r.refused} refused, ${r.noanswer} no answer, ${r.addresses.size} addresses`,
      );
      assert.equal(r.ok, 50, r.raw.slice(0, 2000));
      assert.equal(r.addresses.size, 3, "the name rotated over the three servers");
      assert.equal(
        await connects(client.id, env.d.host, ips[3]),
        false,
        "the fourth server, which no answer named",
      );
      // What the daemon counted: every query, the answers it held for a set write, no SERVFAIL.
      const m = await getMetrics(env.listen);
      assert.ok(metricValue(m, "egresstrator_dns_queries_total") >= 50, m);
      assert.ok(metricValue(m, "egresstrator_dns_answers_held_total") >= 3, "each new address was held");
      assert.equal(metricValue(m, "egresstrator_dns_servfail_total"), 0);
      assert.equal(metricValue(m, "egresstrator_dns_steered_containers"), 1);
      assert.match(m, /egresstrator_dns_hold_seconds_count \d+/);
      const row = (await getStatus(env.listen)).dns?.find((x) => x.id === client.id);
      assert.deepEqual(row?.names.map((n) => n.name), ["svc.test"]);
      assert.ok((row?.names[0].count ?? 0) >= 50, JSON.stringify(row?.names));
      assert.ok(row?.sets.some((x) => x.entries === 3), JSON.stringify(row?.sets));
      // `render --json` shows the name with the addresses the daemon's sets hold for it now.
      const rendered = await runCli([...env.globals, "--listen", env.listen, "render", "--json", client.id]);
      assert.equal(rendered.code, 0, rendered.stderr);
      const names = JSON.parse(rendered.stdout).allowed[0].names;
      assert.deepEqual(names.map((n: { pattern: string }) => n.pattern), ["svc.test"]);
      assert.deepEqual([...names[0].addresses].sort(), [...ips.slice(0, 3)].sort());

      // The daemon stops: the steering stays and points nowhere, so nothing resolves (and nothing opens).
      assert.equal((await p.stop()).code, 0);
      const down = await lookThenConnect(client.id, env.d.host, "svc.test", 3);
      assert.equal(down.ok + down.refused, 0, `resolved with the daemon down: ${down.raw}`);
      assert.equal(await connects(client.id, env.d.host, ips[3]), false);
      p = await env.daemon(["--fqdn-upstream", dns.ip, "--fqdn-min-ttl", "2s", "--resync-interval", "1s"]);
      await applied(p, client.name);
      const again = await lookThenConnect(client.id, env.d.host, "svc.test", 10);
      assert.equal(again.ok, 10, again.raw);

      // The steering taken out from outside is drift, like a flushed table: it is put back.
      const pid = await containerPid(client.id, env.d.host);
      const del = await new Deno.Command("nsenter", {
        args: [`--net=/proc/${pid}/ns/net`, "--", "nft", "delete", "table", "inet", "egresstrator"],
      }).output();
      assert.ok(del.success, new TextDecoder().decode(del.stderr));
      await p.waitForLog(
        (e) => e.msg === "rules drifted; re-applying" && e.container === client.name,
        20_000,
        "the missing steering seen as drift",
      );
      await waitFor(
        () =>
          p.logs().filter((e) => e.msg === "applied" && e.container === client.name).length >= 2 || undefined,
        20_000,
        "re-applied after the drift",
      );
      const repaired = await lookThenConnect(client.id, env.d.host, "svc.test", 5);
      assert.equal(repaired.ok, 5, repaired.raw);
      // Set updates went over the namespaces' netlink channels, never through the fallback.
      assert.ok(!p.logs().some((e) => /netlink failed/.test(String(e.msg))), "a netlink set update failed");
      assert.equal((await p.stop()).code, 0);
    });
  });
});

Deno.test("fqdn protect: a protected name rotating over three servers (TTL 1) is reached 0/50 times; the client's own name works; a container that never looked it up is refused what the daemon and the client resolved", async () => {
  await withLive({ images: IMAGES }, async (env) => {
    const host = env.d.host;
    const { net, ips } = await servers(env, 4);
    const zone = { "prot.test": { a: ips.slice(0, 3), ttl: 1 }, "own.test": { a: [ips[3]], ttl: 1 } };
    await withDns(env, net.name, zone, async (dns) => {
      await env.put("prot", "prot.test:tcp/8080\n");
      await env.put("own", "own.test:tcp/8080\n");
      // Not opted in: every server answers a container without rules.
      const witness = await env.d.run({ cmd: ["sleep", "3600"], network: net.name });
      for (const ip of ips) assert.ok(await connects(witness.id, host, ip), `${ip} answers without rules`);
      const spec = {
        cmd: ["sleep", "3600"],
        env: optIn(["own"], "protect"),
        network: net.name,
        hostConfig: { Dns: [dns.ip] },
      };
      const client = await env.d.run(spec);
      const p = await env.daemon(["--fqdn-upstream", dns.ip]);
      await applied(p, client.name);

      // Nothing has asked for prot.test yet: the queries the server counted are the daemon's own lookups,
      // answered in rotation order (the default --fqdn-min-ttl, 30 s, keeps them and delays the next).
      const own = await dns.queries("prot.test", "A");
      assert.ok(own >= 1, "the daemon looked the protected name up itself");
      const daemonResolved = ips.slice(0, Math.min(own, 3));
      // A second protecting container, started now, gets what the daemon knows with its rules.
      const bystander = await env.d.run(spec);
      await applied(p, bystander.name);
      for (const ip of daemonResolved) {
        assert.equal(
          await connects(bystander.id, host, ip),
          false,
          `${ip}, which the daemon's own lookup gave, from a container that never looked the name up`,
        );
      }

      const r = await lookThenConnect(client.id, host, "prot.test", 50);
      console.log(
        `  50 tries: ${r.ok} ok, ${r.refused} refused, ${r.noanswer} no answer, ${r.addresses.size} addresses`,
      );
      assert.equal(r.ok, 0, r.raw.slice(0, 2000));
      assert.equal(r.refused, 50, r.raw.slice(0, 2000));
      assert.deepEqual([...r.addresses].sort(), ips.slice(0, 3).sort(), "rotated over the three servers");

      const mine = await lookThenConnect(client.id, host, "own.test", 5);
      assert.equal(mine.ok, 5, `the client's own name: ${mine.raw}`);
      assert.deepEqual([...mine.addresses], [ips[3]]);

      // The client's answers went into the bystander's sets too (its learning is done well before the
      // 50 tries end: each address is written once, when first answered).
      for (const ip of ips.slice(0, 3)) {
        assert.equal(await connects(bystander.id, host, ip), false, `${ip} from the bystander`);
      }
      assert.ok(
        await connects(bystander.id, host, ips[3]),
        "the bystander still reaches an unprotected server",
      );
      assert.equal(await dns.queries("prot.test", "A"), own + 50, "the bystander never asked");
      assert.equal((await p.stop()).code, 0);
    });
  });
});

/** Connect to ip:9000 (an echo server) and send one line: whether it came back. */
async function echoes(id: string, host: string, ip: string): Promise<boolean> {
  const r = await execIn(id, ["sh", "-c", `echo ping | nc -w 2 "$0" 9000`, ip], { host });
  return r.stdout.trim() === "ping";
}

Deno.test("fqdn allowlist expiry: with --fqdn-min-ttl 1s an answered address is refused once its entry expires (TTL + 5 s grace); a connection opened before keeps flowing", async () => {
  await withLive({ images: IMAGES }, async (env) => {
    const host = env.d.host;
    const net = await env.d.createNetwork();
    // httpd on 8080 (in the background), an echo server on 9000 (cat per connection).
    const srv = await env.d.run({
      cmd: ["sh", "-c", "httpd -p 8080 && exec nc -ll -p 9000 -e cat"],
      network: net.name,
    });
    const ip = await containerIp(srv.id, net.name, host);
    await withDns(env, net.name, { "exp.test": { a: [ip], ttl: 1 } }, async (dns) => {
      await env.put("exp", "exp.test:tcp/8080\nexp.test:tcp/9000\n");
      const client = await env.d.run({
        cmd: ["sleep", "3600"],
        env: optIn(["exp"], "allowlist"),
        network: net.name,
        hostConfig: { Dns: [dns.ip] },
      });
      const p = await env.daemon(["--fqdn-upstream", dns.ip, "--fqdn-min-ttl", "1s"]);
      await applied(p, client.name);
      assert.equal(await connects(client.id, host, ip), false, "refused before any answer named it");

      const t0 = Date.now();
      const first = await lookThenConnect(client.id, host, "exp.test", 1);
      assert.equal(first.ok, 1, first.raw);
      // One connection, opened now: a line every 0.5 s for 15 s, each echoed back.
      const LINES = 30;
      const stream = execIn(client.id, [
        "sh",
        "-c",
        `i=0; while [ $i -lt $1 ]; do echo "$i $(date +%s)"; i=$((i+1)); sleep 0.5; done | nc -w 2 "$0" 9000`,
        ip,
        String(LINES),
      ], { host, timeoutMs: 60_000 });
      // New connections, without a new lookup, until one is refused.
      let refusedAt = 0;
      while (!refusedAt) {
        if (!(await connects(client.id, host, ip))) refusedAt = Date.now();
        else if (Date.now() - t0 > 15_000) assert.fail("still reachable 15 s after the only answer");
        else await new Promise((r) => setTimeout(r, 200));
      }
      const expiredAfter = refusedAt - t0;
      console.log(`  new connections refused ${expiredAfter} ms after the lookup`);
      assert.ok(expiredAfter >= 5500, `expired after ${expiredAfter} ms: before TTL/min-ttl 1 s + 5 s grace`);
      assert.equal(await echoes(client.id, host, ip), false, "a new connection to 9000 is refused too");

      const s = await stream;
      const echoed = s.stdout.trim().split("\n").filter(Boolean).map((l) => l.split(" ").map(Number));
      const after = echoed.filter(([, sec]) => sec * 1000 >= refusedAt + 1000).length;
      console.log(
        `  the open connection: ${echoed.length}/${LINES} lines echoed, ${after} sent after expiry`,
      );
      assert.equal(s.code, 0, `the open connection: ${s.stdout}${s.stderr}`);
      assert.deepEqual(echoed.map(([i]) => i), [...Array(LINES).keys()], `every line echoed, in order`);
      assert.ok(after >= 4, `lines sent well after the expiry came back: ${s.stdout}`);

      // A new answer opens it again.
      const again = await lookThenConnect(client.id, host, "exp.test", 1);
      assert.equal(again.ok, 1, again.raw);
      assert.ok(await echoes(client.id, host, ip), "9000 again after the new answer");
      assert.equal(await dns.queries("exp.test", "A"), 2, "two lookups, no more");
      assert.equal((await p.stop()).code, 0);
    });
  });
});

Deno.test("fqdn allowlist wildcard and CNAME: *.svc.test allows a.svc.test and a.b.svc.test but not svc.test; an allowed name's CNAME target is reached through it, not on its own", async () => {
  await withLive({ images: IMAGES }, async (env) => {
    const host = env.d.host;
    const { net, ips } = await servers(env, 4);
    const zone = {
      "a.svc.test": { a: [ips[0]] },
      "a.b.svc.test": { a: [ips[1]] },
      "svc.test": { a: [ips[2]] },
      "alias.test": { cname: "target.other" },
      "target.other": { a: [ips[3]] },
    };
    await withDns(env, net.name, zone, async (dns) => {
      await env.put("wild", "*.svc.test:tcp/8080\nalias.test:tcp/8080\n");
      const spec = {
        cmd: ["sleep", "3600"],
        env: optIn(["wild"], "allowlist"),
        network: net.name,
        hostConfig: { Dns: [dns.ip] },
      };
      const [client, fresh] = [await env.d.run(spec), await env.d.run(spec)];
      const p = await env.daemon(["--fqdn-upstream", dns.ip]);
      await applied(p, client.name);
      await applied(p, fresh.name);

      const expect = async (id: string, name: string, ip: string, ok: boolean) => {
        const r = await lookThenConnect(id, host, name, 3);
        assert.deepEqual([...r.addresses], [ip], `${name} answered ${ip}: ${r.raw}`);
        assert.equal(ok ? r.ok : r.refused, 3, `${name} ${ok ? "reached" : "refused"}: ${r.raw}`);
      };
      await expect(client.id, "a.svc.test", ips[0], true);
      await expect(client.id, "a.b.svc.test", ips[1], true);
      await expect(client.id, "svc.test", ips[2], false);
      // A fresh container asks for the target directly first: no pattern covers that name.
      await expect(fresh.id, "target.other", ips[3], false);
      await expect(client.id, "alias.test", ips[3], true);
      await expect(fresh.id, "alias.test", ips[3], true);
      const cname = await execIn(client.id, ["nslookup", "alias.test"], { host });
      assert.match(cname.stdout, /alias\.test\s+canonical name = target\.other/, cname.stdout);
      assert.equal((await p.stop()).code, 0);
    });
  });
});

/** A DNS query (A, RD set) for `name`, with a 2-byte TCP length prefix. */
function tcpQuery(name: string): Uint8Array {
  const out = [0x51, 0x7a, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
  for (const label of name.split(".")) out.push(label.length, ...new TextEncoder().encode(label));
  out.push(0, 0, 1, 0, 1);
  return new Uint8Array([0, out.length, ...out]);
}

/** An A lookup over TCP to server:53 (busybox nc): the one answered address, if any. */
async function tcpLookup(id: string, host: string, server: string, name: string) {
  const octal = [...tcpQuery(name)].map((x) => `\\${x.toString(8).padStart(3, "0")}`).join("");
  const r = await execIn(id, ["sh", "-c", `printf '${octal}' | nc -w 2 "$0" 53 | od -An -v -tx1`, server], {
    host,
  });
  const b = r.stdout.trim().split(/\s+/).filter(Boolean).map((x) => parseInt(x, 16));
  // Length prefix, header (ancount at 6), question, then one A record: its address is the last 4 bytes.
  const answers = b.length >= 14 ? (b[8] << 8) | b[9] : 0;
  return { address: answers === 1 ? b.slice(-4).join(".") : undefined, raw: `${r.stdout}${r.stderr}` };
}

Deno.test("fqdn allowlist, the container's own resolver (resolv.conf names the DNS server, not Docker's embedded DNS): 10/10 lookups reach, over UDP and TCP; a server not named is refused", async () => {
  await withLive({ images: IMAGES }, async (env) => {
    const host = env.d.host;
    const { net, ips } = await servers(env, 3);
    await withDns(env, net.name, { "direct.test": { a: ips.slice(0, 2), ttl: 1 } }, async (dns) => {
      await withResolvConf(dns.ip, async (bind) => {
        await env.put("direct", "direct.test:tcp/8080\n");
        const client = await env.d.run({
          cmd: ["sleep", "3600"],
          env: optIn(["direct"], "allowlist"),
          network: net.name,
          hostConfig: { Binds: [bind] },
        });
        const conf = await execIn(client.id, ["cat", "/etc/resolv.conf"], { host });
        assert.equal(conf.stdout, `nameserver ${dns.ip}\n`);
        // No --fqdn-upstream: the forwarder can only have found the test server in the container's file.
        const p = await env.daemon();
        await applied(p, client.name);
        const row = (await steered(env)).find((s) => s.name === client.name);
        assert.deepEqual(row?.resolvers, [dns.ip], JSON.stringify(row));

        const r = await lookThenConnect(client.id, host, "direct.test", 10);
        assert.equal(r.ok, 10, r.raw);
        assert.deepEqual([...r.addresses].sort(), ips.slice(0, 2).sort(), "rotated over the two servers");
        assert.equal(await dns.queries("direct.test", "A"), 10);
        assert.equal(await connects(client.id, host, ips[2]), false, "the server no answer named");

        const t = await tcpLookup(client.id, host, dns.ip, "direct.test");
        assert.ok(t.address && ips.slice(0, 2).includes(t.address), `an answer over TCP: ${t.raw}`);
        assert.ok(await connects(client.id, host, t.address), `${t.address}, answered over TCP`);
        assert.equal(await dns.queries("direct.test", "A"), 11);
        assert.equal((await p.stop()).code, 0);
      });
    });
  });
});

Deno.test("fqdn allowlist over IPv6: AAAA answers from the container's own IPv6 resolver are reached 10/10 times; an IPv6 server not named is refused", async () => {
  await withLive({ images: IMAGES }, async (env) => {
    const host = env.d.host;
    // Only IPv6 passes between this network's containers (see createDualStackNetwork).
    const net = await createDualStackNetwork(env.d);
    const { ips6 } = await servers(env, 3, net.name);
    assert.ok(ips6.every(Boolean), `the servers have IPv6 addresses: ${ips6}`);
    await withDns(env, net.name, { "v6.test": { aaaa: ips6.slice(0, 2), ttl: 1 } }, async (dns) => {
      assert.ok(dns.ip6, "the DNS server has an IPv6 address");
      await withResolvConf(dns.ip6, async (bind) => {
        await env.put("v6", "v6.test:tcp/8080\n");
        const client = await env.d.run({
          cmd: ["sleep", "3600"],
          env: optIn(["v6"], "allowlist"),
          network: net.name,
          hostConfig: { Binds: [bind] },
        });
        const p = await env.daemon();
        await applied(p, client.name);
        // The containers' IPv6 addresses may still be tentative (duplicate address detection) for a moment.
        await waitFor(
          async () => (await lookThenConnect(client.id, host, "v6.test", 1, { type: "aaaa" })).ok === 1,
          15_000,
          "a first AAAA lookup and connect",
          250,
        );
        const r = await lookThenConnect(client.id, host, "v6.test", 10, { type: "aaaa" });
        assert.equal(r.ok, 10, r.raw);
        assert.deepEqual([...r.addresses].sort(), ips6.slice(0, 2).sort(), "rotated over the two servers");
        assert.equal(await connects(client.id, host, ips6[2]), false, "the IPv6 server no answer named");
        assert.equal((await p.stop()).code, 0);
      });
    });
  });
});

/**
 * A resolver client that keeps ONE UDP socket to its server (as c-ares or a cache does): one line per answer.
 * Like a real one, it goes on when a send fails: while the rules change, the guards drop the old flow's
 * queries, and a packet dropped on its way out fails the send (EPERM).
 */
const ONE_SOCKET_CLIENT = `
const [server, name] = Deno.args;
const sock = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
const q = (id) => {
  const labels = name.split(".").flatMap((l) => [l.length, ...new TextEncoder().encode(l)]);
  return new Uint8Array([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, ...labels, 0, 0, 1, 0, 1]);
};
(async () => { for await (const [m] of sock) console.log("answer " + ((m[0] << 8) | m[1])); })();
for (let id = 1; ; id++) {
  await sock.send(q(id), { transport: "udp", hostname: server, port: 53 }).catch((e) => console.log("send " + e.name));
  await new Promise((r) => setTimeout(r, 200));
}
`;

Deno.test("fqdn protect: a DNS flow from before the steering (one long-lived socket) is steered once the rules use names", async () => {
  await withLive({ images: IMAGES }, async (env) => {
    const { net, ips } = await servers(env, 1);
    const dir = await Deno.makeTempDir({ prefix: "egt-fqdn-old-" });
    try {
      await Deno.writeTextFile(`${dir}/client.js`, ONE_SOCKET_CLIENT);
      await withDns(env, net.name, { "prot.test": { a: [ips[0]], ttl: 1 } }, async (dns) => {
        await env.put("own", "10.50.1.0/24:tcp/443\n");
        const client = await env.d.run({
          image: HELPER_IMAGE,
          cmd: ["/opt/egt-deno/deno", ...CONTAINER_DENO_RUN, "/opt/egt-code/client.js", dns.ip, "prot.test"],
          env: [...optIn(["own"], "protect"), "DENO_DIR=/tmp/deno", "DENO_NO_UPDATE_CHECK=1", "NO_COLOR=1"],
          network: net.name,
          hostConfig: { Binds: [`${Deno.execPath()}:/opt/egt-deno/deno:ro`, `${dir}:/opt/egt-code:ro`] },
        });
        const p = await env.daemon(["--fqdn-upstream", dns.ip]);
        await applied(p, client.name);
        // Answers come straight from the server on the one socket: no rule uses a name yet, nothing is steered.
        const before = await dns.queries("prot.test");
        await waitFor(
          async () => (await dns.queries("prot.test")) >= before + 3 || undefined,
          20_000,
          "queries",
        );
        assert.deepEqual(await steered(env), []);
        // A key another container's rules would protect now names it: this container is steered, and the
        // socket's flow, which nat saw before, must not go on around the forwarder.
        await env.put("ext", "prot.test:tcp/8080\n");
        await waitFor(
          () =>
            p.logs().filter((e) => e.msg === "applied" && e.container === client.name).length >= 2 ||
            undefined,
          30_000,
          "re-applied with the steering",
        );
        const row = await waitFor(
          async () => {
            const r = (await getStatus(env.listen)).dns?.find((x) => x.id === client.id);
            return r && r.names.some((n) => n.name === "prot.test" && n.count >= 3) ? r : undefined;
          },
          20_000,
          "the old socket's queries reaching the forwarder",
        );
        assert.ok(row);
        // And what they were answered is refused.
        assert.equal(await connects(client.id, env.d.host, ips[0]), false);
      });
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  });
});

Deno.test("fqdn: a listener takes another port when the container holds, for TCP, the one the kernel gave it for UDP", async () => {
  await withLive({ images: IMAGES }, async (env) => {
    const host = env.d.host;
    const { net, ips } = await servers(env, 1);
    await withDns(env, net.name, { "busy.test": { a: [ips[0]], ttl: 1 } }, async (dns) => {
      await withResolvConf(dns.ip, async (bind) => {
        await env.put("busy", "busy.test:tcp/8080\n");
        // Eight ports to pick from in its namespace, seven of them held for TCP on 127.0.0.1 (httpd goes to
        // the background): the forwarder's listener (UDP, TCP on the same port) fits on 40007 alone.
        const held = [0, 1, 2, 3, 4, 5, 6].map((i) => `httpd -p 127.0.0.1:${40000 + i}`).join(" && ");
        const client = await env.d.run({
          cmd: ["sh", "-c", `${held} && exec sleep 3600`],
          env: optIn(["busy"], "allowlist"),
          network: net.name,
          hostConfig: { Binds: [bind], Sysctls: { "net.ipv4.ip_local_port_range": "40000 40007" } },
        });
        const pid = await containerPid(client.id, host);
        await waitFor(
          async () => {
            const ss = await nsenterOut(pid, ["ss", "-Htln"]);
            return ss.includes("127.0.0.1:40006") || undefined;
          },
          10_000,
          "the container's seven TCP listeners",
        );
        const p = await env.daemon();
        await applied(p, client.name);
        const nft = await nsenterOut(pid, ["nft", "list", "table", "inet", "egresstrator"]);
        assert.match(nft, /dnat ip to 127\.0\.0\.1:40007/, nft);
        // Room again for the container's own connections (their source ports come from the same range).
        await nsenterOut(pid, ["sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40999"]);
        const r = await lookThenConnect(client.id, host, "busy.test", 3);
        assert.equal(r.ok, 3, r.raw);
        const t = await tcpLookup(client.id, host, dns.ip, "busy.test");
        assert.equal(t.address, ips[0], `an answer over TCP: ${t.raw}`);
        assert.equal((await p.stop()).code, 0);
      });
    });
  });
});

async function nsenterOut(pid: number, cmd: string[]): Promise<string> {
  const out = await new Deno.Command("nsenter", {
    args: ["-t", String(pid), "-n", ...cmd],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`nsenter ${cmd.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return text;
}
