/** Strict address parsing, RFC 5952 formatting and masking. */
import assert from "node:assert/strict";
import {
  formatAddress,
  maskBytes,
  maxPrefix,
  parseAddress,
  parseIPv4,
  parseIPv6,
} from "../../src/rules/ip.ts";

const bytes = (...xs: number[]) => new Uint8Array(xs);
/** 16 bytes from 8 groups. */
const groups = (...gs: number[]) => new Uint8Array(gs.flatMap((g) => [g >> 8, g & 0xff]));

Deno.test("ip: parseIPv4 accepts dotted quads", () => {
  const cases: [string, Uint8Array][] = [
    ["0.0.0.0", bytes(0, 0, 0, 0)],
    ["10.0.0.1", bytes(10, 0, 0, 1)],
    ["255.255.255.255", bytes(255, 255, 255, 255)],
    ["192.168.1.100", bytes(192, 168, 1, 100)],
  ];
  for (const [text, want] of cases) assert.deepEqual(parseIPv4(text), want, text);
});

Deno.test("ip: parseIPv4 refuses everything else", () => {
  const bad = [
    "",
    "10",
    "10.0.0",
    "10.0.0.0.0",
    "010.0.0.1",
    "10.0.0.01",
    "00.0.0.0",
    "256.0.0.0",
    "1.2.3.1000",
    "-1.2.3.4",
    "+1.2.3.4",
    "1.2.3.4 ",
    " 1.2.3.4",
    "1..2.3",
    "1.2.3.",
    ".1.2.3",
    "0x1.2.3.4",
    "1e2.0.0.1",
    "1.2.3.4/8",
    "::1",
    "\uff11.2.3.4",
  ];
  for (const text of bad) assert.equal(parseIPv4(text), undefined, JSON.stringify(text));
});

Deno.test("ip: parseIPv6 accepts full, compressed and embedded-IPv4 forms", () => {
  const cases: [string, Uint8Array][] = [
    ["::", groups(0, 0, 0, 0, 0, 0, 0, 0)],
    ["::1", groups(0, 0, 0, 0, 0, 0, 0, 1)],
    ["1::", groups(1, 0, 0, 0, 0, 0, 0, 0)],
    ["2001:db8::1", groups(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)],
    ["2001:DB8::ABCD", groups(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xabcd)],
    ["2001:0db8:0000:0000:0000:0000:0000:0001", groups(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)],
    ["1:2:3:4:5:6:7:8", groups(1, 2, 3, 4, 5, 6, 7, 8)],
    ["1:2:3:4:5:6:7::", groups(1, 2, 3, 4, 5, 6, 7, 0)],
    ["::2:3:4:5:6:7:8", groups(0, 2, 3, 4, 5, 6, 7, 8)],
    ["fe80::1:2", groups(0xfe80, 0, 0, 0, 0, 0, 1, 2)],
    ["::ffff:10.0.0.1", groups(0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001)],
    ["::10.0.0.1", groups(0, 0, 0, 0, 0, 0, 0x0a00, 0x0001)],
    ["1:2:3:4:5:6:192.168.1.1", groups(1, 2, 3, 4, 5, 6, 0xc0a8, 0x0101)],
    ["64:ff9b::192.0.2.33", groups(0x64, 0xff9b, 0, 0, 0, 0, 0xc000, 0x0221)],
  ];
  for (const [text, want] of cases) assert.deepEqual(parseIPv6(text), want, text);
});

Deno.test("ip: parseIPv6 refuses malformed addresses", () => {
  const bad = [
    "",
    ":",
    ":::",
    "1",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7:8::",
    "::1:2:3:4:5:6:7:8",
    "1::2::3",
    "12345::",
    "g::",
    ":1::",
    "1::2:",
    ":1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8:",
    "::ffff:1.2.3",
    "::ffff:256.1.1.1",
    "::ffff:01.2.3.4",
    "1:2:3:4:5:6:7:1.2.3.4",
    "1:2:3:4:5:6:1.2.3.4:5",
    "fe80::1%eth0",
    " ::1",
    "::1 ",
    "[::1]",
    "::1/128",
    "10.0.0.1",
    "0".repeat(46),
  ];
  for (const text of bad) assert.equal(parseIPv6(text), undefined, JSON.stringify(text));
});

// Regression (fixed): src/rules/ip.ts:36 takes a dotted quad at the end of the part BEFORE "::" too, so "1.2.3.4::"
// parses as 102:304:: (and reaches rules as [1.2.3.4::]:tcp/80). An embedded IPv4 may only end the address.
Deno.test({
  name: "ip: parseIPv6 refuses a dotted quad before ::",
  fn() {
    for (const text of ["1.2.3.4::", "1.2.3.4::5", "::1.2.3.4:5"]) {
      assert.equal(parseIPv6(text), undefined, text);
    }
  },
});

Deno.test("ip: formatAddress follows RFC 5952", () => {
  const cases: [string, string][] = [
    ["2001:db8::1", "2001:db8::1"],
    ["::", "::"],
    ["::1", "::1"],
    ["1::", "1::"],
    // RFC 5952 4.2.3: the first of two equally long runs is compressed
    ["2001:0db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    // 4.2.3: the longest run wins, wherever it is
    ["2001:0:0:1:0:0:0:1", "2001:0:0:1::1"],
    ["2001:db8:0:0:0:0:2:1", "2001:db8::2:1"],
    // 4.2.2: a single zero group is not compressed
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["1:0:2:0:3:0:4:0", "1:0:2:0:3:0:4:0"],
    // 4.1: no leading zeros; 4.3: lower case
    ["2001:0DB8:00AB:000C::0001", "2001:db8:ab:c::1"],
    ["0:0:0:0:0:0:0:1", "::1"],
    ["1:0:0:0:0:0:0:0", "1::"],
    ["0:0:0:0:0:0:0:0", "::"],
    ["1:0:0:0:0:0:0:1", "1::1"],
    ["0:0:1:0:0:0:0:0", "0:0:1::"],
    ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
    ["1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"],
    ["fe80::", "fe80::"],
    ["FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
    // embedded IPv4 comes out in hex (valid, parses back the same)
    ["::ffff:10.0.0.1", "::ffff:a00:1"],
  ];
  for (const [text, want] of cases) {
    const b = parseIPv6(text);
    assert.ok(b, text);
    assert.equal(formatAddress("ipv6", b), want, text);
    // canonical text is a fixed point
    assert.deepEqual(parseIPv6(want), b, want);
    assert.equal(formatAddress("ipv6", parseIPv6(want)!), want);
  }
  assert.equal(formatAddress("ipv4", bytes(10, 0, 0, 1)), "10.0.0.1");
  assert.equal(formatAddress("ipv4", bytes(0, 0, 0, 0)), "0.0.0.0");
  assert.equal(formatAddress("ipv4", bytes(255, 255, 255, 255)), "255.255.255.255");
});

Deno.test("ip: maskBytes clears host bits and leaves its input alone", () => {
  const v4: [number, string][] = [
    [0, "0.0.0.0"],
    [1, "128.0.0.0"],
    [8, "172.0.0.0"],
    [12, "172.16.0.0"],
    [20, "172.31.240.0"],
    [24, "172.31.255.0"],
    [31, "172.31.255.254"],
    [32, "172.31.255.255"],
  ];
  const input = bytes(172, 31, 255, 255);
  for (const [prefix, want] of v4) {
    const out = maskBytes(input, prefix);
    assert.equal(formatAddress("ipv4", out), want, `/${prefix}`);
    assert.notEqual(out, input);
  }
  assert.deepEqual(input, bytes(172, 31, 255, 255));

  const all = new Uint8Array(16).fill(0xff);
  const v6: [number, string][] = [
    [0, "::"],
    [1, "8000::"],
    [10, "ffc0::"],
    [64, "ffff:ffff:ffff:ffff::"],
    [65, "ffff:ffff:ffff:ffff:8000::"],
    [127, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"],
    [128, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
  ];
  for (const [prefix, want] of v6) {
    assert.equal(formatAddress("ipv6", maskBytes(all, prefix)), want, `/${prefix}`);
  }
  assert.ok(all.every((b) => b === 0xff));
});

Deno.test("ip: parseAddress picks the family; maxPrefix", () => {
  assert.deepEqual(parseAddress("10.0.0.1"), { family: "ipv4", bytes: bytes(10, 0, 0, 1) });
  assert.deepEqual(parseAddress("::1"), { family: "ipv6", bytes: groups(0, 0, 0, 0, 0, 0, 0, 1) });
  assert.equal(parseAddress("db.example.com"), undefined);
  assert.equal(parseAddress(""), undefined);
  assert.equal(parseAddress("10.0.0.1/32"), undefined);
  assert.equal(maxPrefix("ipv4"), 32);
  assert.equal(maxPrefix("ipv6"), 128);
});
