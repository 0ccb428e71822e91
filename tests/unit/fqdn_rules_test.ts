/**
 * Rules by DNS name, the pure parts the lead wired: the grammar, the plan's patterns, the rendered set
 * matches (and a custom template that leaves them out), the steering and ipset texts, the apply script,
 * and the forwarder's hold / SERVFAIL / protect fan-out with fakes of its sockets and sets.
 */
import assert from "node:assert/strict";
import dnsPacket from "dns-packet";
import { Buffer } from "node:buffer";
import { parseAcl, parseRuleLine } from "../../src/rules/grammar.ts";
import { buildPlan } from "../../src/rules/plan.ts";
import { snapshotFrom } from "../../src/rules/acl_source.ts";
import { loadTemplates, Renderer } from "../../src/render/renderer.ts";
import { TemplateError } from "../../src/errors.ts";
import { setName } from "../../src/fqdn/names.ts";
import { ipsetText, setsIn, STEER_OFF, steeringText } from "../../src/fqdn/steering.ts";
import { applyPayload } from "../../src/apply/applier.ts";
import { containerResolvers, nameservers } from "../../src/fqdn/resolvers.ts";
import { DnsForwarder, type ForwarderIo } from "../../src/fqdn/forwarder.ts";
import type { SetEntry } from "../../src/fqdn/steering.ts";

Deno.test("grammar: DNS-name rules, exact and wildcard, canonical; bad names name the reason", () => {
  const ok = (line: string) => {
    const r = parseRuleLine(line);
    assert.ok(r.ok && r.rule, `${line}: ${JSON.stringify(r)}`);
    return r.rule!;
  };
  assert.deepEqual(ok("api.stripe.com:tcp/443"), {
    kind: "fqdn",
    pattern: "api.stripe.com",
    name: "api.stripe.com",
    wildcard: false,
    proto: "tcp",
    ports: { from: 443, to: 443 },
  });
  assert.deepEqual(ok("*.S3.AmazonAWS.com.:tcp/443-444"), {
    kind: "fqdn",
    pattern: "*.s3.amazonaws.com",
    name: "s3.amazonaws.com",
    wildcard: true,
    proto: "tcp",
    ports: { from: 443, to: 444 },
  });
  assert.equal(ok("1password.com:tcp/443").kind, "fqdn");
  assert.equal(ok("xn--bcher-kva.example:udp/53").kind, "fqdn");
  assert.equal(ok("web.db").kind, "service", "no colon: a catalog reference");
  const bad: [string, RegExp][] = [
    ["localhost:tcp/80", /at least one dot/],
    ["a*.x.com:tcp/80", /whole first label/],
    ["*a.x.com:tcp/80", /whole first label/],
    ["api.x.com:icmp/1", /not <tcp\|udp>/],
    ["api.x.com:tcp/0", /port "0"/],
    ["-a.x.com:tcp/80", /label "-a"/],
    ["a_b.x.com:tcp/80", /must be ASCII letters, digits, "-" and "."/],
    ["a..x.com:tcp/80", /label ""/],
    [`${"a".repeat(64)}.x.com:tcp/80`, /longer than 63/],
    [`${"abcdefghi.".repeat(26)}com:tcp/80`, /longer than 253/],
    ["bücher.example:tcp/80", /ASCII/],
    ["\u212Api.x.com:tcp/80", /ASCII/],
  ];
  for (const [line, why] of bad) {
    const r = parseRuleLine(line);
    assert.ok(!r.ok, `${line} accepted`);
    assert.match((r as { reason: string }).reason, why, line);
  }
  const { problems } = parseAcl("k", "good.example:tcp/1\nbad_name.example:tcp/1\n");
  assert.deepEqual(problems.map((p) => [p.key, p.line]), [["k", 2]]);
});

const enc = new TextEncoder();
function plan(policy: "protect" | "allowlist", acls: string[]) {
  return buildPlan({
    snapshot: snapshotFrom([
      { key: "api", value: enc.encode("api.stripe.com:tcp/443\n*.s3.test:tcp/443\n10.50.1.0/24:tcp/80\n") },
      { key: "other", value: enc.encode("db.internal.test:tcp/5432\n") },
    ]),
    acls,
    services: new Map(),
    policy,
    dnsResolvers: ["10.0.0.2"],
    hasCatalog: false,
    container: { id: "c".repeat(64), name: "app" },
  });
}

Deno.test("render: names become set matches, per family, under both policies; a template without them fails", async () => {
  const r = new Renderer(await loadTemplates(), "t");
  const allow = plan("allowlist", ["api"]);
  assert.deepEqual(allow.fqdn, ["*.s3.test", "api.stripe.com"]);
  const v4 = r.render(allow, "ipv4");
  const set = setName("api.stripe.com", "ipv4");
  assert.match(v4, new RegExp(`-A OUTPUT -m set --match-set ${set} dst -p tcp -m tcp --dport 443 -j ACCEPT`));
  assert.match(
    v4,
    /-m connmark --mark 0x[0-9a-f]{8} -p tcp -m tcp --dport 443 -m conntrack --ctstate ESTABLISHED/,
  );
  assert.ok(!v4.includes(setName("db.internal.test", "ipv4")), "an unlisted key's names are not allowed");
  assert.match(r.render(allow, "ipv6"), new RegExp(`--match-set ${setName("api.stripe.com", "ipv6")} dst`));
  const prot = plan("protect", ["api"]);
  assert.deepEqual(prot.fqdn, ["db.internal.test"]);
  assert.match(
    r.render(prot, "ipv4"),
    new RegExp(
      `--match-set ${
        setName("db.internal.test", "ipv4", "protect")
      } dst -p tcp -m tcp --dport 5432 -m conntrack --ctdir ORIGINAL -j REJECT`,
    ),
  );
  assert.deepEqual(setsIn(r.render(prot, "ipv4")), [setName("db.internal.test", "ipv4", "protect")]);
  // A custom template that ignores names would leave protected names open: refused.
  const tpl = await loadTemplates();
  const custom = new Renderer({
    ...tpl,
    custom: {
      path: "/x.eta",
      source: tpl.protect.replace(
        /<% for \(const n of acl\.names\) \{ -%>[\s\S]*?<% } -%>\n(?=<% } -%>\n<% for \(const acl of it\.allowed)/,
        "",
      ),
    },
  }, "t");
  assert.throws(
    () => custom.render(prot, "ipv4"),
    (e) => e instanceof TemplateError && /DNS name destinations/.test(e.message),
  );
});

Deno.test("steering: per resolver, then everything else to listener 0; loopback left alone; ipset text; apply script order", () => {
  const t = steeringText(["10.0.0.2", "fd00::53"], [4001, 4002], true);
  assert.match(
    t,
    /^table inet egresstrator \{\}\ndelete table inet egresstrator\ntable inet egresstrator \{/,
  );
  assert.match(t, /ip daddr 127\.0\.0\.0\/8 return\n\s+ip6 daddr ::1 return\n/);
  assert.match(t, /ip daddr 10\.0\.0\.2 udp dport 53 dnat ip to 127\.0\.0\.1:4001/);
  assert.match(t, /ip6 daddr fd00::53 tcp dport 53 dnat ip6 to \[::1\]:4002/);
  assert.match(t, /meta nfproto ipv4 udp dport 53 dnat ip to 127\.0\.0\.1:4001/);
  assert.ok(!steeringText(["fd00::53"], [4001], false).includes("ip6 daddr fd00::53"), "no IPv6 listener");
  assert.equal(
    ipsetText(["egr4-aaaaaaaaaaaa", "egr6-bbbbbbbbbbbb"], [{
      set: "egr4-aaaaaaaaaaaa",
      address: "10.1.1.1",
      timeout: 35.2,
    }]),
    "create egr4-aaaaaaaaaaaa hash:ip family inet timeout 60 maxelem 65536\n" +
      "create egr6-bbbbbbbbbbbb hash:ip family inet6 timeout 60 maxelem 65536\n" +
      "add egr4-aaaaaaaaaaaa 10.1.1.1 timeout 36\n",
  );
  const { env, script } = applyPayload({
    ipv4: "-A OUTPUT -m set --match-set egr4-aaaaaaaaaaaa dst -j ACCEPT\n",
    ipv6: "-A OUTPUT -m set --match-set egr6-bbbbbbbbbbbb dst -j ACCEPT\n",
    ipset: "add egr4-aaaaaaaaaaaa 10.1.1.1 timeout 9\n",
    nft: STEER_OFF,
  }, true);
  const lines = script.split("\n");
  assert.match(lines[0], /ipset -exist restore/);
  assert.match(lines[lines.length - 1], /nft -f -/);
  assert.match(env.EGTSETS, /create egr6-bbbbbbbbbbbb hash:ip family inet6/);
  assert.match(env.EGTSETS, /add egr4-aaaaaaaaaaaa 10\.1\.1\.1 timeout 9\n$/);
  assert.equal(env.EGTNFT, STEER_OFF);
});

Deno.test("resolvers: resolv.conf first, Docker's --dns behind the embedded DNS, loopback never", () => {
  assert.deepEqual(nameservers("# x\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nsearch a\n"), [
    "10.0.0.2",
    "fe80::1",
  ]);
  assert.deepEqual(
    containerResolvers("nameserver 127.0.0.11\noptions ndots:0\n", ["10.9.9.9"], ["1.1.1.1"]),
    ["10.9.9.9"],
  );
  assert.deepEqual(containerResolvers("nameserver 127.0.0.11\n", [], ["1.1.1.1"]), ["1.1.1.1"]);
  assert.deepEqual(containerResolvers("nameserver 10.0.0.2\n", ["10.9.9.9"], ["1.1.1.1"]), ["10.0.0.2"]);
});

function answer(
  query: Uint8Array,
  records: { type: "A" | "CNAME"; name: string; data: string; ttl?: number }[],
) {
  const q = dnsPacket.decode(Buffer.from(query));
  return new Uint8Array(dnsPacket.encode({
    type: "response",
    id: q.id,
    flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE,
    questions: q.questions,
    answers: records.map((r) => ({ ...r, class: "IN", ttl: r.ttl ?? 1 })) as dnsPacket.Answer[],
  }));
}
const query = (name: string) =>
  new Uint8Array(
    dnsPacket.encode({
      type: "query",
      id: 4242,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type: "A", name, class: "IN" }],
    }),
  );

function fakeIo(zone: Record<string, { type: "A" | "CNAME"; name: string; data: string }[]>, setDelayMs = 0) {
  const writes: { pid: number; entries: SetEntry[] }[] = [];
  const warnings: string[] = [];
  let port = 5000;
  const io: ForwarderIo = {
    listeners: { open: () => Promise.resolve({ ports: [port++], v6: false }), close: () => {} },
    sets: {
      add: async (pid, entries) => {
        if (setDelayMs) await new Promise((r) => setTimeout(r, setDelayMs));
        writes.push({ pid, entries });
      },
    },
    upstream: {
      udp: (_s, msg) => {
        const q = dnsPacket.decode(Buffer.from(msg));
        return Promise.resolve(answer(msg, zone[q.questions![0].name] ?? []));
      },
      tcp: () => Promise.reject(new Error("no tcp")),
    },
    now: () => 1_000_000,
    log: { warn: (m) => warnings.push(m) },
  };
  return { io, writes, warnings };
}
const OPTS = {
  minTtl: 30,
  grace: 5,
  holdMs: 200,
  upstreamTimeoutMs: 100,
  ownResolvers: [],
  fallbackResolvers: [],
  resolverAllowed: () => true,
};

/** Steer container `c` (id c×64, name c) through `f` and make its patterns active; its listener key. */
async function steer(
  f: DnsForwarder,
  c: string,
  pid: number,
  policy: "allowlist" | "protect",
  patterns: string[],
): Promise<string> {
  await f.prepare({ id: c.repeat(64), name: c, pid, policy, patterns, resolvers: ["10.0.0.2"] });
  f.activate(c.repeat(64));
  return `${c.repeat(12)}-${pid}`;
}

Deno.test("forwarder: the answer waits for its set write; the CNAME chain counts for the question; SERVFAIL when the write is late", async () => {
  const zone = {
    "alias.test": [{ type: "CNAME" as const, name: "alias.test", data: "target.other" }, {
      type: "A" as const,
      name: "target.other",
      data: "10.7.0.9",
    }],
    "target.other": [{ type: "A" as const, name: "target.other", data: "10.7.0.9" }],
  };
  const { io, writes } = fakeIo(zone);
  const f = new DnsForwarder(io, OPTS);
  const key = await steer(f, "a", 11, "allowlist", ["alias.test"]);
  // A CNAME target asked for directly is not the allowed name: released at once, nothing written.
  const direct = await f.handle({ key, index: 0, tcp: false, data: query("target.other") });
  assert.equal(dnsPacket.decode(Buffer.from(direct!)).answers!.length, 1);
  assert.equal(writes.length, 0);
  const got = await f.handle({ key, index: 0, tcp: false, data: query("alias.test") });
  assert.equal(dnsPacket.decode(Buffer.from(got!)).id, 4242, "the container's own id comes back");
  assert.deepEqual(writes, [{
    pid: 11,
    entries: [{ set: setName("alias.test", "ipv4"), address: "10.7.0.9", timeout: 35 }],
  }]);
  // Known and still good for the floor: no second write.
  await f.handle({ key, index: 0, tcp: false, data: query("alias.test") });
  assert.equal(writes.length, 1);

  const slow = fakeIo(zone, 500);
  const g = new DnsForwarder(slow.io, OPTS);
  await steer(g, "b", 12, "allowlist", ["*.test"]);
  const sf = await g.handle({ key: `${"b".repeat(12)}-12`, index: 0, tcp: false, data: query("alias.test") });
  assert.equal((dnsPacket.decode(Buffer.from(sf!)) as { rcode?: string }).rcode, "SERVFAIL");
  assert.equal(g.stats.servfails, 1);
  assert.ok(slow.warnings.some((w) => /SERVFAIL/.test(w)));
  await new Promise((r) => setTimeout(r, 600));
});

Deno.test("forwarder: under protect, one container's answer goes into every protecting container's sets", async () => {
  const zone = { "db.internal.test": [{ type: "A" as const, name: "db.internal.test", data: "10.8.0.1" }] };
  const { io, writes } = fakeIo(zone);
  const f = new DnsForwarder(io, OPTS);
  for (const [c, pid] of [["a", 21], ["b", 22]] as const) {
    await steer(f, c, pid, "protect", ["db.internal.test"]);
  }
  await f.handle({ key: `${"a".repeat(12)}-21`, index: 0, tcp: false, data: query("db.internal.test") });
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(writes.map((w) => w.pid).sort(), [21, 22]);
  f.stop();
});

Deno.test("enforce: rules with DNS names and no forwarder (set, the gate alone, helper mode) are an error, so the caller fails closed", async () => {
  const { withDns } = await import("../../src/apply/enforce.ts");
  const built = {
    fqdn: ["api.stripe.com"],
    policy: "allowlist" as const,
    rendered: { ipv4: "", ipv6: "" },
    hash: "h",
  };
  await assert.rejects(
    withDns({}, { id: "x", name: "app", pid: 1 }, built),
    /by DNS name \(api\.stripe\.com\), which only the daemon/,
  );
  // No names and never steered: nothing changes.
  const plain = await withDns({}, { id: "x", name: "app", pid: 1 }, { ...built, fqdn: [] });
  assert.deepEqual(plain, { rendered: built.rendered, hash: "h" });
});

Deno.test("netlink sets: IPSET_CMD_ADD as `ipset -exist add <set> <ip> timeout <s>` sends it; acks by sequence", async () => {
  const { addMessage, readAcks } = await import("../../src/fqdn/netlink_sets.ts");
  const m = addMessage(7, { set: "egr4-aaaaaaaaaaaa", address: "10.1.2.3", timeout: 34.2 });
  const v = new DataView(m.buffer);
  assert.equal(v.getUint32(0, true), m.length);
  assert.equal(v.getUint16(4, true), (6 << 8) | 9, "NFNL_SUBSYS_IPSET, IPSET_CMD_ADD");
  assert.equal(v.getUint16(6, true), 1 | 4, "REQUEST|ACK, no EXCL: an existing entry gets the new timeout");
  assert.equal(v.getUint32(8, true), 7);
  assert.equal(m[16], 2, "NFPROTO_IPV4");
  const hex = Array.from(m.slice(20), (b) => b.toString(16).padStart(2, "0")).join("");
  assert.ok(hex.startsWith("0500010007000000"), `protocol 7 first: ${hex}`);
  assert.ok(
    hex.includes(
      Array.from(new TextEncoder().encode("egr4-aaaaaaaaaaaa\0"), (b) => b.toString(16).padStart(2, "0"))
        .join(""),
    ),
  );
  assert.ok(hex.includes("08000140" + "0a010203"), "the address, in network byte order");
  assert.ok(hex.includes("08000640" + "00000023"), "timeout 35 s, rounded up, network byte order");
  assert.equal(
    addMessage(1, { set: "egr6-bbbbbbbbbbbb", address: "fd00::7", timeout: 1 })[16],
    10,
    "NFPROTO_IPV6",
  );
  // Two acks in one buffer: 0 (done) and -EEXIST-like errors by seq.
  const ack = (seq: number, err: number) => {
    const b = new Uint8Array(36);
    const d = new DataView(b.buffer);
    d.setUint32(0, 36, true);
    d.setUint16(4, 2, true);
    d.setUint32(8, seq, true);
    d.setInt32(16, -err, true);
    return b;
  };
  const buf = new Uint8Array(72);
  buf.set(ack(7, 0));
  buf.set(ack(8, 2), 36);
  assert.deepEqual([...readAcks(buf, 72)], [[7, 0], [8, 2]]);
});

Deno.test("forwarder: a second answer with an address still being written waits for that write", async () => {
  const zone = { "svc.test": [{ type: "A" as const, name: "svc.test", data: "10.7.0.1" }] };
  const { io, writes } = fakeIo(zone, 80);
  const f = new DnsForwarder(io, OPTS);
  const key = await steer(f, "c", 31, "allowlist", ["svc.test"]);
  const first = f.handle({ key, index: 0, tcp: false, data: query("svc.test") });
  await new Promise((r) => setTimeout(r, 10));
  const second = await f.handle({ key, index: 0, tcp: false, data: query("svc.test") });
  assert.ok(second);
  assert.equal(writes.length, 1, "released only once the one write was done");
  await first;
  assert.equal(writes.length, 1, "and the address was written once");
});

Deno.test("forwarder: under protect an alias of a protected name counts; TTLs are clamped; no IPv6 sets without IPv6", async () => {
  const { clampTtl } = await import("../../src/fqdn/forwarder.ts");
  assert.equal(clampTtl(0x80000000), 0, "RFC 2181: the top bit set means 0");
  assert.equal(clampTtl(10 ** 9), 86400);
  assert.equal(clampTtl(30), 30);
  const zone = {
    "x.attacker.test": [
      { type: "CNAME" as const, name: "x.attacker.test", data: "db.internal.test" },
      { type: "A" as const, name: "db.internal.test", data: "10.8.0.2" },
    ],
  };
  const { io, writes } = fakeIo(zone);
  const f = new DnsForwarder(io, { ...OPTS, ipv6: false });
  await steer(f, "d", 41, "protect", ["db.internal.test"]);
  await f.handle({ key: `${"d".repeat(12)}-41`, index: 0, tcp: false, data: query("x.attacker.test") });
  assert.deepEqual(writes.map((w) => w.entries.map((e) => [e.set, e.address])), [[[
    setName("db.internal.test", "ipv4", "protect"),
    "10.8.0.2",
  ]]]);
  f.stop();
});
