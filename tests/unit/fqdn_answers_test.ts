/**
 * Reading relayed DNS messages: queries, answers with their CNAME chains, SERVFAIL replies. Packets are
 * built with dns-packet's encoder (and bent by hand where a real resolver would never go).
 */
import assert from "node:assert/strict";
// @ts-types="@types/dns-packet"
import * as packet from "dns-packet";
import { Buffer } from "node:buffer";
import { MAX_CNAME_HOPS, readAnswer, readQuery, servfail, withId } from "../../src/fqdn/answers.ts";

type Rr = packet.Answer;
const SERVFAIL = 2;
const NXDOMAIN = 3;

const query = (name: string, type: packet.RecordType = "A", id = 0x1234, flags = packet.RECURSION_DESIRED) =>
  new Uint8Array(packet.encode({ type: "query", id, flags, questions: [{ type, name }] }));

const response = (name: string, answers: Rr[], opts: { type?: packet.RecordType; flags?: number } = {}) =>
  new Uint8Array(packet.encode({
    type: "response",
    id: 0xbeef,
    flags: opts.flags ?? (packet.RECURSION_DESIRED | packet.RECURSION_AVAILABLE),
    questions: [{ type: opts.type ?? "A", name }],
    answers,
  }));

const a = (name: string, data: string, ttl = 300): Rr => ({ type: "A", name, data, ttl });
const aaaa = (name: string, data: string, ttl = 300): Rr => ({ type: "AAAA", name, data, ttl });
const cname = (name: string, data: string, ttl = 300): Rr => ({ type: "CNAME", name, data, ttl });

/** A seeded generator, so a failing fuzz case can be replayed. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x80000000;
  };
}

Deno.test("readQuery: id, lower-cased qname without its dot, qtype", () => {
  assert.deepEqual(readQuery(query("Api.Stripe.COM.", "A", 7)), {
    id: 7,
    qname: "api.stripe.com",
    qtype: "A",
  });
  assert.deepEqual(readQuery(query("x.example", "AAAA", 0xffff)), {
    id: 0xffff,
    qname: "x.example",
    qtype: "AAAA",
  });
  assert.equal(readQuery(query("_dmarc.x.example", "TXT"))?.qtype, "TXT");
  // A Buffer is a Uint8Array too.
  assert.equal(
    readQuery(packet.encode({ type: "query", id: 1, questions: [{ type: "A", name: "a.b" }] }))?.id,
    1,
  );
});

Deno.test("readQuery: null for garbage, no question, two questions, a response, other opcodes", () => {
  for (const bytes of [[], [1, 2, 3], new Array(11).fill(0), new Array(12).fill(0xff)]) {
    assert.equal(readQuery(new Uint8Array(bytes)), null, `${bytes}`);
  }
  assert.equal(readQuery(new Uint8Array(packet.encode({ type: "query", id: 1, questions: [] }))), null);
  const two = packet.encode({
    type: "query",
    id: 1,
    questions: [{ type: "A", name: "a.example" }, { type: "A", name: "b.example" }],
  });
  assert.equal(readQuery(two), null);
  assert.equal(readQuery(response("a.example", [])), null);
  assert.equal(readQuery(query("a.example", "A", 1, 5 << 11)), null, "opcode UPDATE");
  const cut = query("a.example");
  assert.equal(readQuery(cut.subarray(0, cut.length - 1)), null, "question cut short");
});

Deno.test("readQuery: a label with a dot or a control byte inside is not taken for a name", () => {
  // One label "api.stripe" then "com": dns-packet alone would read it as api.stripe.com.
  const q = query("xxxxxxxxxx.com");
  q.set(new TextEncoder().encode("api.stripe"), 13);
  assert.equal(packet.decode(Buffer.from(q)).questions![0].name, "api.stripe.com");
  assert.equal(readQuery(q), null);
  const ctl = query("ab.com");
  ctl[14] = 0x0a;
  assert.equal(readQuery(ctl), null);
  // A compression pointer in the question (it could only point into the header).
  const ptr = new Uint8Array([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x04, 0, 1, 0, 1]);
  assert.equal(readQuery(ptr), null);
  assert.equal(servfail(ptr), null);
});

Deno.test("readAnswer: direct A and AAAA records, rcode, TC, id", () => {
  const msg = response("api.stripe.com", [
    a("api.stripe.com", "192.0.2.1", 60),
    a("API.stripe.com.", "192.0.2.2", 30),
  ]);
  assert.deepEqual(readAnswer(msg), {
    id: 0xbeef,
    qname: "api.stripe.com",
    qtype: "A",
    rcode: "NOERROR",
    truncated: false,
    addresses: [
      { family: "ipv4", address: "192.0.2.1", ttl: 60 },
      { family: "ipv4", address: "192.0.2.2", ttl: 30 },
    ],
    cnames: [],
  });
  const nx = readAnswer(response("nope.example", [], { flags: packet.RECURSION_AVAILABLE | NXDOMAIN }));
  assert.equal(nx?.rcode, "NXDOMAIN");
  assert.deepEqual(nx?.addresses, []);
  const tc = readAnswer(response("a.example", [], { flags: packet.TRUNCATED_RESPONSE }));
  assert.equal(tc?.truncated, true);
  assert.equal(readAnswer(response("a.example", []))?.truncated, false);
});

Deno.test("readAnswer: AAAA text is RFC 5952 (longest zero run), lower-case", () => {
  const msg = response("v6.example", [
    aaaa("v6.example", "2001:DB8:0:0:0:0:0:1"),
    // dns-packet's own text for this one is ::c0:a6:0:0:0:df00 (the first run, not the longest).
    aaaa("v6.example", "0:0:c0:a6:0:0:0:df00"),
    aaaa("v6.example", "::ffff:192.0.2.1"),
  ], { type: "AAAA" });
  const raw = packet.decode(Buffer.from(msg)).answers![1] as { data: string };
  assert.equal(raw.data, "::c0:a6:0:0:0:df00");
  assert.deepEqual(readAnswer(msg)?.addresses.map((x) => [x.family, x.address]), [
    ["ipv6", "2001:db8::1"],
    ["ipv6", "0:0:c0:a6::df00"],
    ["ipv6", "::ffff:c000:201"],
  ]);
});

Deno.test("readAnswer: follows the CNAME chain case-insensitively; TTL capped by the CNAMEs on the way", () => {
  const msg = response("www.shop.example", [
    cname("WWW.shop.example", "edge.CDN.example", 600),
    cname("edge.cdn.example", "pop7.cdn.example", 20),
    a("pop7.CDN.example.", "198.51.100.7", 300),
    aaaa("pop7.cdn.example", "2001:db8::7", 5),
    a("edge.cdn.example", "198.51.100.8", 900),
  ]);
  const got = readAnswer(msg);
  assert.deepEqual(got?.cnames, ["edge.cdn.example", "pop7.cdn.example"]);
  assert.deepEqual(got?.addresses, [
    { family: "ipv4", address: "198.51.100.7", ttl: 20 },
    { family: "ipv6", address: "2001:db8::7", ttl: 5 },
    { family: "ipv4", address: "198.51.100.8", ttl: 600 },
  ]);
});

Deno.test("readAnswer: records off the chain are ignored, and so are other classes", () => {
  const msg = response("api.example", [
    a("evil.example", "203.0.113.66"),
    cname("other.example", "api.example"),
    cname("api.example", "real.example"),
    cname("unrelated.example", "evil2.example"),
    a("evil2.example", "203.0.113.67"),
    a("real.example", "192.0.2.10"),
    { type: "A", name: "real.example", data: "203.0.113.68", ttl: 300, class: "CH" },
  ]);
  const got = readAnswer(msg);
  assert.deepEqual(got?.cnames, ["real.example"]);
  assert.deepEqual(got?.addresses, [{ family: "ipv4", address: "192.0.2.10", ttl: 300 }]);
});

Deno.test("readAnswer: a CNAME loop ends the chain; a chain stops after 16 hops", () => {
  const loop = response("a.example", [
    cname("a.example", "b.example"),
    cname("b.example", "A.example"),
    a("b.example", "192.0.2.1"),
  ]);
  const got = readAnswer(loop);
  assert.deepEqual(got?.cnames, ["b.example"]);
  assert.deepEqual(got?.addresses.map((x) => x.address), ["192.0.2.1"]);

  const hops = Array.from({ length: 20 }, (_, i) => cname(`h${i}.example`, `h${i + 1}.example`));
  const long = readAnswer(
    response("h0.example", [...hops, a("h16.example", "192.0.2.16"), a("h17.example", "192.0.2.17")]),
  );
  assert.equal(long?.cnames.length, MAX_CNAME_HOPS);
  assert.equal(long?.cnames.at(-1), "h16.example");
  assert.deepEqual(long?.addresses.map((x) => x.address), ["192.0.2.16"]);
});

Deno.test("readAnswer: compressed names, as resolvers send them", () => {
  // www.shop.example A -> CNAME edge.cdn.example (its owner a pointer to the question, its target ending in
  // a pointer to "example"), then edge.cdn.example A 192.0.2.9 (its owner a pointer to the CNAME's data).
  const bytes = [
    ...[0, 1, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0],
    ...[
      3,
      0x77,
      0x77,
      0x77,
      4,
      0x73,
      0x68,
      0x6f,
      0x70,
      7,
      ...new TextEncoder().encode("example"),
      0,
      0,
      1,
      0,
      1,
    ],
    ...[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 11],
    ...[4, ...new TextEncoder().encode("edge"), 3, ...new TextEncoder().encode("CDN"), 0xc0, 21],
    ...[0xc0, 46, 0, 1, 0, 1, 0, 0, 1, 0, 0, 4, 192, 0, 2, 9],
  ];
  const got = readAnswer(new Uint8Array(bytes));
  assert.deepEqual(got?.cnames, ["edge.cdn.example"]);
  assert.deepEqual(got?.addresses, [{ family: "ipv4", address: "192.0.2.9", ttl: 60 }]);
  // A pointer forward (to itself) is refused by dns-packet, so the message is garbage.
  const loop = bytes.slice();
  loop[58] = 57;
  assert.equal(readAnswer(new Uint8Array(loop)), null);
});

Deno.test("readAnswer: the same address twice is listed once, with the longest TTL", () => {
  const msg = response("a.example", [
    a("a.example", "192.0.2.1", 10),
    cname("a.example", "b.example", 100),
    a("b.example", "192.0.2.1", 50),
  ]);
  assert.deepEqual(readAnswer(msg)?.addresses, [{ family: "ipv4", address: "192.0.2.1", ttl: 50 }]);
});

Deno.test("readAnswer: a TC answer cut mid-record gives the whole records; without TC it is garbage", () => {
  const full = response("a.example", [a("a.example", "192.0.2.1"), a("a.example", "192.0.2.2")], {
    flags: packet.TRUNCATED_RESPONSE,
  });
  const cut = full.subarray(0, full.length - 3);
  assert.deepEqual(readAnswer(cut)?.addresses.map((x) => x.address), ["192.0.2.1"]);
  assert.equal(readAnswer(cut)?.truncated, true);
  const plain = response("a.example", [a("a.example", "192.0.2.1"), a("a.example", "192.0.2.2")]);
  assert.equal(readAnswer(plain.subarray(0, plain.length - 3)), null);
});

Deno.test("readAnswer: an A or AAAA record whose RDLENGTH is not 4 or 16 makes the message garbage", () => {
  const msg = response("a.example", [a("a.example", "192.0.2.1"), a("a.example", "192.0.2.2")]);
  // The first record's RDLENGTH: header 12, question 11 + 4, owner 11 (dns-packet does not compress
  // names), type/class/ttl 8.
  const at = 12 + 15 + 11 + 8;
  assert.deepEqual([msg[at], msg[at + 1]], [0, 4]);
  const bent = msg.slice();
  bent[at + 1] = 0;
  assert.equal(readAnswer(bent), null);
  // The last record carrying 8 bytes: dns-packet alone would read the first 4 as an address.
  const last = response("a.example", [a("a.example", "192.0.2.1")]);
  const long = new Uint8Array([...last, 1, 2, 3, 4]);
  long[last.length - 5] = 8;
  assert.equal((packet.decode(Buffer.from(long)).answers![0] as { data: string }).data, "192.0.2.1");
  assert.equal(readAnswer(long), null);
  const six = response("a.example", [aaaa("a.example", "2001:db8::1")], { type: "AAAA" });
  const short = six.slice(0, six.length - 4);
  short[short.length - 13] = 12;
  assert.equal(readAnswer(short), null);
});

Deno.test("readAnswer: broken authority and additional sections do not matter", () => {
  const msg = new Uint8Array(packet.encode({
    type: "response",
    id: 9,
    flags: packet.RECURSION_AVAILABLE,
    questions: [{ type: "A", name: "a.example" }],
    answers: [a("a.example", "192.0.2.1")],
    additionals: [{ type: "TXT", name: "x.example", data: "hello" }],
  }));
  const bent = new Uint8Array([...msg, 0xc0]); // an extra record count with half a pointer after
  bent[11] = 2;
  assert.throws(() => packet.decode(Buffer.from(bent)));
  assert.deepEqual(readAnswer(bent)?.addresses.map((x) => x.address), ["192.0.2.1"]);
});

Deno.test("readAnswer: null for garbage, queries, no question", () => {
  for (const bytes of [[], [0xff], new Array(12).fill(0xff), [0, 1, 0x81, 0x80, 0, 0, 0, 1, 0, 0, 0, 0]]) {
    assert.equal(readAnswer(new Uint8Array(bytes)), null, `${bytes}`);
  }
  assert.equal(readAnswer(query("a.example")), null);
  assert.equal(
    readAnswer(new Uint8Array(packet.encode({ type: "response", id: 1, questions: [], answers: [] }))),
    null,
  );
});

Deno.test("readQuery and readAnswer never throw, whatever the bytes (seeded fuzz)", () => {
  const next = rng(42);
  const seeds = [
    query("a.b.example", "AAAA"),
    response("www.shop.example", [
      cname("www.shop.example", "e.cdn.example"),
      a("e.cdn.example", "192.0.2.1"),
    ]),
  ];
  for (let i = 0; i < 5000; i++) {
    let bytes: Uint8Array;
    if (i % 2 === 0) {
      bytes = seeds[i % 4 === 0 ? 0 : 1].slice();
      for (let k = 0; k < 1 + Math.floor(next() * 4); k++) {
        bytes[Math.floor(next() * bytes.length)] = next() * 256;
      }
      bytes = bytes.subarray(0, Math.floor(next() * (bytes.length + 1)));
    } else {
      bytes = Uint8Array.from({ length: Math.floor(next() * 80) }, () => next() * 256);
    }
    readQuery(bytes);
    readAnswer(bytes);
    servfail(bytes);
  }
});

Deno.test("servfail: same id and question bytes, RD and CD copied, QR and RA set, no records", () => {
  const q = query("Api.Stripe.com", "AAAA", 0x4242, packet.RECURSION_DESIRED | packet.CHECKING_DISABLED);
  const before = q.slice();
  const sf = servfail(q)!;
  assert.deepEqual(q, before, "the query is left alone");
  assert.deepEqual(sf.subarray(12), q.subarray(12), "the question, letter case included");
  const d = packet.decode(Buffer.from(sf));
  assert.equal(d.id, 0x4242);
  assert.equal(d.type, "response");
  assert.equal(d.flag_rd, true);
  assert.equal(d.flag_ra, true);
  assert.equal(d.flag_cd, true);
  assert.equal(d.flag_tc, false);
  assert.equal((d.flags ?? -1) & 0x0f, SERVFAIL);
  assert.deepEqual([d.answers?.length, d.authorities?.length, d.additionals?.length], [0, 0, 0]);
  assert.deepEqual(readAnswer(sf), {
    id: 0x4242,
    qname: "api.stripe.com",
    qtype: "AAAA",
    rcode: "SERVFAIL",
    truncated: false,
    addresses: [],
    cnames: [],
  });
  const noRd = packet.decode(Buffer.from(servfail(query("a.example", "A", 1, 0))!));
  assert.equal(noRd.flag_rd, false);
  assert.equal(noRd.flag_cd, false);
});

Deno.test("servfail: only the first question is kept; an EDNS record is dropped; Buffers are not written", () => {
  const q = packet.encode({
    type: "query",
    id: 5,
    flags: packet.RECURSION_DESIRED,
    questions: [{ type: "A", name: "a.example" }],
    additionals: [{
      type: "OPT",
      name: ".",
      udpPayloadSize: 1232,
      extendedRcode: 0,
      ednsVersion: 0,
      flags: 0,
      flag_do: false,
      options: [],
    }],
  });
  const copy = Buffer.from(q);
  const sf = servfail(q)!;
  assert.ok(q.equals(copy));
  assert.equal(sf.length, 12 + 15);
  assert.equal(readAnswer(sf)?.qname, "a.example");
});

Deno.test("servfail: null for garbage, a response, or no question", () => {
  assert.equal(servfail(new Uint8Array([1, 2, 3])), null);
  assert.equal(servfail(response("a.example", [])), null);
  assert.equal(servfail(new Uint8Array(packet.encode({ type: "query", id: 1, questions: [] }))), null);
});

Deno.test("withId: a copy with the id replaced", () => {
  const q = query("a.example", "A", 0x0102);
  const w = withId(q, 0xabcd)!;
  assert.deepEqual([w[0], w[1]], [0xab, 0xcd]);
  assert.deepEqual(w.subarray(2), q.subarray(2));
  assert.deepEqual([q[0], q[1]], [0x01, 0x02]);
  assert.equal(withId(new Uint8Array(3), 1), null);
});
