/**
 * The rule grammar: every accepted form, every refused form with its reason, hostile values, and a
 * property test (seeded, reproducible) that a parsed rule always formats back to itself.
 */
import assert from "node:assert/strict";
import {
  type CidrRule,
  formatProblem,
  formatRule,
  type LineResult,
  MAX_LINE,
  MAX_PROBLEMS_PER_KEY,
  parseAcl,
  parseRuleLine,
  type RuleBody,
  type RuleProblem,
} from "../../src/rules/grammar.ts";
import { displayText } from "../../src/util/text.ts";
import { parseEntry } from "../../src/rules/acl_source.ts";

const v4 = (address: string, prefix: number, proto: "tcp" | "udp", from: number, to = from): CidrRule => ({
  kind: "cidr",
  family: "ipv4",
  address,
  prefix,
  cidr: `${address}/${prefix}`,
  proto,
  ports: { from, to },
});
const v6 = (address: string, prefix: number, proto: "tcp" | "udp", from: number, to = from): CidrRule => ({
  ...v4(address, prefix, proto, from, to),
  family: "ipv6",
});
const svc = (service: string, tag?: string, datacenter?: string): RuleBody => ({
  kind: "service",
  service,
  tag,
  datacenter,
});

function okRule(res: LineResult): { rule: RuleBody; warning?: string } {
  assert.ok(res.ok, `expected a rule, got ${JSON.stringify(res)}`);
  assert.ok(res.rule, `expected a rule, got nothing (blank/comment)`);
  return { rule: res.rule, warning: "warning" in res ? res.warning : undefined };
}

function badReason(res: LineResult): string {
  assert.equal(res.ok, false, `expected an error, got ${JSON.stringify(res)}`);
  return (res as { reason: string }).reason;
}

// ---------------------------------------------------------------------------------------------------
// Good forms

const GOOD: { line: string; rule: RuleBody; canonical: string }[] = [
  // IPv4
  { line: "10.0.0.1:tcp/80", rule: v4("10.0.0.1", 32, "tcp", 80), canonical: "10.0.0.1/32:tcp/80" },
  { line: "10.0.0.1/32:tcp/80", rule: v4("10.0.0.1", 32, "tcp", 80), canonical: "10.0.0.1/32:tcp/80" },
  { line: "10.0.0.0/8:tcp/80", rule: v4("10.0.0.0", 8, "tcp", 80), canonical: "10.0.0.0/8:tcp/80" },
  { line: "0.0.0.0/0:tcp/443", rule: v4("0.0.0.0", 0, "tcp", 443), canonical: "0.0.0.0/0:tcp/443" },
  {
    line: "255.255.255.255:udp/65535",
    rule: v4("255.255.255.255", 32, "udp", 65535),
    canonical: "255.255.255.255/32:udp/65535",
  },
  { line: "10.0.0.0/8:tcp/1", rule: v4("10.0.0.0", 8, "tcp", 1), canonical: "10.0.0.0/8:tcp/1" },
  {
    line: "192.168.1.0/24:tcp/1000-2000",
    rule: v4("192.168.1.0", 24, "tcp", 1000, 2000),
    canonical: "192.168.1.0/24:tcp/1000-2000",
  },
  {
    line: "10.0.0.0/8:tcp/1-65535",
    rule: v4("10.0.0.0", 8, "tcp", 1, 65535),
    canonical: "10.0.0.0/8:tcp/1-65535",
  },
  // a one-port range is a single port
  { line: "10.0.0.0/8:tcp/443-443", rule: v4("10.0.0.0", 8, "tcp", 443), canonical: "10.0.0.0/8:tcp/443" },
  { line: "8.8.8.8:udp/53", rule: v4("8.8.8.8", 32, "udp", 53), canonical: "8.8.8.8/32:udp/53" },
  {
    line: "172.16.0.0/12:udp/5000-5100",
    rule: v4("172.16.0.0", 12, "udp", 5000, 5100),
    canonical: "172.16.0.0/12:udp/5000-5100",
  },
  // IPv6
  {
    line: "[2001:db8::]/32:tcp/443",
    rule: v6("2001:db8::", 32, "tcp", 443),
    canonical: "[2001:db8::]/32:tcp/443",
  },
  {
    line: "[2001:db8::1]:tcp/443",
    rule: v6("2001:db8::1", 128, "tcp", 443),
    canonical: "[2001:db8::1]/128:tcp/443",
  },
  { line: "[::]/0:udp/53", rule: v6("::", 0, "udp", 53), canonical: "[::]/0:udp/53" },
  { line: "[::1]:tcp/80", rule: v6("::1", 128, "tcp", 80), canonical: "[::1]/128:tcp/80" },
  { line: "[fe80::]/10:tcp/22", rule: v6("fe80::", 10, "tcp", 22), canonical: "[fe80::]/10:tcp/22" },
  {
    line: "[2001:0DB8:0000:0000:0000:0000:0000:0001]:tcp/80",
    rule: v6("2001:db8::1", 128, "tcp", 80),
    canonical: "[2001:db8::1]/128:tcp/80",
  },
  {
    line: "[2001:db8:0:0:1:0:0:1]/128:udp/1000-1001",
    rule: v6("2001:db8::1:0:0:1", 128, "udp", 1000, 1001),
    canonical: "[2001:db8::1:0:0:1]/128:udp/1000-1001",
  },
  {
    line: "[::ffff:10.0.0.1]/128:tcp/80",
    rule: v6("::ffff:a00:1", 128, "tcp", 80),
    canonical: "[::ffff:a00:1]/128:tcp/80",
  },
  {
    line: "[1:2:3:4:5:6:7:8]/128:tcp/8080",
    rule: v6("1:2:3:4:5:6:7:8", 128, "tcp", 8080),
    canonical: "[1:2:3:4:5:6:7:8]/128:tcp/8080",
  },
  // services
  { line: "db", rule: svc("db"), canonical: "db" },
  { line: "primary.db", rule: svc("db", "primary"), canonical: "primary.db" },
  { line: "primary.db@dc1", rule: svc("db", "primary", "dc1"), canonical: "primary.db@dc1" },
  { line: "db@dc1", rule: svc("db", undefined, "dc1"), canonical: "db@dc1" },
  { line: "my_svc-2", rule: svc("my_svc-2"), canonical: "my_svc-2" },
  { line: "v1.api-gw@eu_west-1", rule: svc("api-gw", "v1", "eu_west-1"), canonical: "v1.api-gw@eu_west-1" },
  { line: "x".repeat(128), rule: svc("x".repeat(128)), canonical: "x".repeat(128) },
];

Deno.test("grammar: every good form parses to its rule, without a warning, and formats canonically", () => {
  for (const c of GOOD) {
    const { rule, warning } = okRule(parseRuleLine(c.line));
    assert.deepEqual(rule, c.rule, c.line);
    assert.equal(warning, undefined, `${c.line}: unexpected warning`);
    assert.equal(formatRule(rule), c.canonical, c.line);
    // canonical text parses back to the same rule
    assert.deepEqual(okRule(parseRuleLine(c.canonical)).rule, c.rule, c.canonical);
  }
});

Deno.test("grammar: host bits are cleared, with a warning", () => {
  const cases = [
    {
      line: "10.1.2.3/24:tcp/80",
      rule: v4("10.1.2.0", 24, "tcp", 80),
      warning: "host bits set in 10.1.2.3/24; using 10.1.2.0/24",
    },
    {
      line: "10.255.255.255/0:tcp/1",
      rule: v4("0.0.0.0", 0, "tcp", 1),
      warning: "host bits set in 10.255.255.255/0; using 0.0.0.0/0",
    },
    {
      line: "172.31.255.1/12:udp/53",
      rule: v4("172.16.0.0", 12, "udp", 53),
      warning: "host bits set in 172.31.255.1/12; using 172.16.0.0/12",
    },
    {
      line: "[2001:db8::1]/64:udp/53",
      rule: v6("2001:db8::", 64, "udp", 53),
      warning: "host bits set in 2001:db8::1/64; using 2001:db8::/64",
    },
    {
      line: "[fe80::1234:5678]/10:tcp/22",
      rule: v6("fe80::", 10, "tcp", 22),
      warning: "host bits set in fe80::1234:5678/10; using fe80::/10",
    },
    {
      line: "[2001:DB8:FFFF::]/33:tcp/443",
      rule: v6("2001:db8:8000::", 33, "tcp", 443),
      warning: "host bits set in 2001:db8:ffff::/33; using 2001:db8:8000::/33",
    },
  ];
  for (const c of cases) {
    const { rule, warning } = okRule(parseRuleLine(c.line));
    assert.deepEqual(rule, c.rule, c.line);
    assert.equal(warning, c.warning, c.line);
  }
  // upper-case hex alone is not a host-bit change: no warning
  assert.equal(okRule(parseRuleLine("[2001:DB8::]/32:tcp/443")).warning, undefined);
});

Deno.test("grammar: comments, blank lines, CR/LF and surrounding spaces", () => {
  const nothing = ["", "   ", "\t", "\r", "# a comment", "   # indented comment", "#10.0.0.0/8:tcp/80", "#"];
  for (const line of nothing) assert.deepEqual(parseRuleLine(line), { ok: true, rule: null }, line);
  const same: [string, RuleBody][] = [
    ["  10.0.0.0/8:tcp/80  ", v4("10.0.0.0", 8, "tcp", 80)],
    ["10.0.0.0/8:tcp/80\r", v4("10.0.0.0", 8, "tcp", 80)],
    ["\t10.0.0.0/8:tcp/80\t\r", v4("10.0.0.0", 8, "tcp", 80)],
    ["10.0.0.0/8:tcp/80 # web servers", v4("10.0.0.0", 8, "tcp", 80)],
    ["10.0.0.0/8:tcp/80\t# tab then comment", v4("10.0.0.0", 8, "tcp", 80)],
    ["[2001:db8::]/32:tcp/443 # v6 # twice", v6("2001:db8::", 32, "tcp", 443)],
    [" primary.db@dc1 # the primary", svc("db", "primary", "dc1")],
    ["db\r", svc("db")],
  ];
  for (const [line, rule] of same) assert.deepEqual(okRule(parseRuleLine(line)).rule, rule, line);

  const { rules, problems } = parseAcl(
    "web",
    "# header\r\n10.0.0.0/8:tcp/80\r\n\r\n  db # svc\r\n[::1]:udp/53\n",
  );
  assert.deepEqual(problems, []);
  assert.deepEqual(rules, [
    { ...v4("10.0.0.0", 8, "tcp", 80), key: "web", line: 2 },
    { ...svc("db"), key: "web", line: 4 },
    { ...v6("::1", 128, "udp", 53), key: "web", line: 5 },
  ]);
});

// ---------------------------------------------------------------------------------------------------
// Bad forms

const MISSING_PORT = "missing :<tcp|udp>/<port> after the address";
const NOT_A_RULE =
  "not <ip>/<mask>:<proto>/<ports>, [<ipv6>]/<mask>:<proto>/<ports>, <name>:<proto>/<ports> or <tag>.<service>";
const SPACES = "a rule has no spaces inside it (one rule per line)";
const V6_HINT = /\(write IPv6 in brackets: \[2001:db8::\]\/32:tcp\/443\)$/;
const nameReason = (what: string, v: string) =>
  `${what} "${v}" must be letters, digits, "-" or "_" (at most 128)`;

const BAD: { line: string; reason: string | RegExp }[] = [
  // ports
  { line: "10.0.0.0/8:tcp/0", reason: 'port "0" is not a number from 1 to 65535' },
  { line: "10.0.0.0/8:tcp/65536", reason: 'port "65536" is not a number from 1 to 65535' },
  { line: "10.0.0.0/8:tcp/99999", reason: 'port "99999" is not a number from 1 to 65535' },
  { line: "10.0.0.0/8:tcp/080", reason: 'port "080" is not a number from 1 to 65535' },
  { line: "10.0.0.0/8:tcp/", reason: 'port "" is not a number from 1 to 65535' },
  { line: "10.0.0.0/8:tcp/80-", reason: 'port "" is not a number from 1 to 65535' },
  { line: "10.0.0.0/8:tcp/-80", reason: 'port "" is not a number from 1 to 65535' },
  { line: "10.0.0.0/8:tcp/1-2-3", reason: 'port "2-3" is not a number from 1 to 65535' },
  { line: "10.0.0.0/8:tcp/0-80", reason: 'port "0" is not a number from 1 to 65535' },
  { line: "10.0.0.0/8:tcp/80-65536", reason: 'port "65536" is not a number from 1 to 65535' },
  { line: "10.0.0.0/8:tcp/http", reason: 'port "http" is not a number from 1 to 65535' },
  { line: "10.0.0.0/8:tcp/2000-1000", reason: "port range 2000-1000 runs backwards" },
  { line: "[::1]:udp/81-80", reason: "port range 81-80 runs backwards" },
  // masks
  { line: "10.0.0.0/33:tcp/80", reason: 'mask "/33" is not from 0 to 32' },
  { line: "10.0.0.0/08:tcp/80", reason: 'mask "/08" is not from 0 to 32' },
  { line: "10.0.0.0/:tcp/80", reason: 'mask "/" is not from 0 to 32' },
  { line: "10.0.0.0/-1:tcp/80", reason: 'mask "/-1" is not from 0 to 32' },
  { line: "10.0.0.0/8/8:tcp/80", reason: 'mask "/8/8" is not from 0 to 32' },
  { line: "[::]/129:tcp/80", reason: 'mask "/129" is not from 0 to 128' },
  { line: "[::]/1000:tcp/80", reason: 'mask "/1000" is not from 0 to 128' },
  { line: "[::1]/64/2:tcp/80", reason: 'mask "/64/2" is not from 0 to 128' },
  // IPv4 addresses
  { line: "010.0.0.1:tcp/80", reason: '"010.0.0.1" is not an IPv4 address' },
  { line: "10.0.0.01:tcp/80", reason: '"10.0.0.01" is not an IPv4 address' },
  { line: "256.1.1.1:tcp/80", reason: '"256.1.1.1" is not an IPv4 address' },
  { line: "10.0.0:tcp/80", reason: '"10.0.0" is not an IPv4 address' },
  { line: "10.0.0.0.0:tcp/80", reason: '"10.0.0.0.0" is not an IPv4 address' },
  { line: "10..0.1:tcp/80", reason: '"10..0.1" is not an IPv4 address' },
  {
    line: "1e1.0.0.1:tcp/80",
    reason: '"1e1.0.0.1" ends in a number: write addresses as <ip>/<mask>:<proto>/<port>',
  },
  // IPv6 addresses
  { line: "2001:db8::/32:tcp/443", reason: V6_HINT },
  { line: "2001:db8::1:tcp/443", reason: V6_HINT },
  { line: "[10.0.0.1]:tcp/80", reason: '"10.0.0.1" is not an IPv6 address' },
  { line: "[1:2:3:4:5:6:7:8:9]:tcp/80", reason: '"1:2:3:4:5:6:7:8:9" is not an IPv6 address' },
  { line: "[1::2::3]:tcp/80", reason: '"1::2::3" is not an IPv6 address' },
  { line: "[2001:db8::1%eth0]:tcp/80", reason: '"2001:db8::1%eth0" is not an IPv6 address' },
  { line: "[12345::]:tcp/80", reason: '"12345::" is not an IPv6 address' },
  { line: "[::ffff:10.0.0.01]:tcp/80", reason: '"::ffff:10.0.0.01" is not an IPv6 address' },
  { line: "[]:tcp/80", reason: '"" is not an IPv6 address' },
  { line: "[2001:db8::1:tcp/80", reason: "IPv6 address has no closing ]" },
  { line: "[2001:db8::1]x:tcp/80", reason: 'unexpected "x" after the IPv6 address' },
  // missing or wrong protocol / ports
  { line: "10.0.0.1", reason: MISSING_PORT },
  { line: "10.0.0.0/8", reason: MISSING_PORT },
  { line: "10.0.0.0/", reason: MISSING_PORT },
  { line: "10.0.0.0/8:", reason: '"" is not <tcp|udp>/<port> or <tcp|udp>/<from>-<to>' },
  { line: "10.0.0.0/8:tcp", reason: '"tcp" is not <tcp|udp>/<port> or <tcp|udp>/<from>-<to>' },
  { line: "10.0.0.0/8:80", reason: '"80" is not <tcp|udp>/<port> or <tcp|udp>/<from>-<to>' },
  { line: "10.0.0.0/8:icmp/1", reason: '"icmp/1" is not <tcp|udp>/<port> or <tcp|udp>/<from>-<to>' },
  { line: "10.0.0.0/8:icmp", reason: '"icmp" is not <tcp|udp>/<port> or <tcp|udp>/<from>-<to>' },
  { line: "10.0.0.0/8:TCP/80", reason: '"TCP/80" is not <tcp|udp>/<port> or <tcp|udp>/<from>-<to>' },
  { line: "10.0.0.0/8:sctp/80", reason: '"sctp/80" is not <tcp|udp>/<port> or <tcp|udp>/<from>-<to>' },
  // spaces inside
  { line: "10.0.0.0/8: tcp/80", reason: SPACES },
  { line: "10.0.0.0/8 :tcp/80", reason: SPACES },
  { line: "a b", reason: SPACES },
  { line: "db\u00a0x", reason: SPACES }, // no-break space is a space too
  { line: "10.0.0.0/8:tcp/80 10.0.0.0/8:tcp/81", reason: SPACES },
  // unicode
  // full-width digits: not an address, and not an ASCII DNS name either
  { line: "\uff11\uff10.0.0.1:tcp/80", reason: /must be ASCII letters, digits/ },
  { line: "10.0.0.1:tcp/\uff18\uff10", reason: 'port "\uff18\uff10" is not a number from 1 to 65535' },
  { line: "s\u00e9rvice", reason: nameReason("service name", "s\u00e9rvice") },
  { line: "db\u200b", reason: nameReason("service name", "db\u200b") }, // zero-width space
  { line: "\u0434\u0431", reason: NOT_A_RULE }, // Cyrillic
  { line: "db\u{1f600}", reason: nameReason("service name", "db\u{1f600}") },
  // services
  { line: "tag.svc.extra", reason: nameReason("service name", "svc.extra") },
  { line: ".svc", reason: NOT_A_RULE },
  { line: "tag.", reason: nameReason("service name", "") },
  { line: "svc@", reason: nameReason("datacenter", "") },
  { line: "svc@dc@x", reason: nameReason("datacenter", "dc@x") },
  { line: "@dc1", reason: NOT_A_RULE },
  { line: "-svc", reason: nameReason("service name", "-svc") },
  { line: "_tag.svc", reason: nameReason("tag", "_tag") },
  { line: "x".repeat(129), reason: nameReason("service name", "x".repeat(129)) },
  { line: "svc/x", reason: nameReason("service name", "svc/x") },
  // length
  { line: "#".repeat(MAX_LINE + 1), reason: `line is longer than ${MAX_LINE} characters` },
  { line: "a".repeat(513), reason: "line is longer than 512 characters" },
  { line: "10.0.0.0/8:tcp/80 #" + "x".repeat(600), reason: "line is longer than 512 characters" },
];

Deno.test("grammar: every bad form is refused with its reason", () => {
  for (const c of BAD) {
    const reason = badReason(parseRuleLine(c.line));
    if (typeof c.reason === "string") assert.equal(reason, c.reason, JSON.stringify(c.line));
    else assert.match(reason, c.reason, JSON.stringify(c.line));
  }
});

Deno.test("grammar: a 512-character line is still looked at", () => {
  assert.equal(MAX_LINE, 512);
  assert.deepEqual(parseRuleLine("#".repeat(512)), { ok: true, rule: null });
  const padded = "10.0.0.0/8:tcp/80" + " ".repeat(512 - 17);
  assert.equal(padded.length, 512);
  assert.deepEqual(okRule(parseRuleLine(padded)).rule, v4("10.0.0.0", 8, "tcp", 80));
});

// Regression (fixed): src/rules/grammar.ts:163 sends `[<ipv6>]` without a port to parseCidrRule, whose lastIndexOf(":")
// (grammar.ts:98) then falls inside the brackets, so the reason is "IPv6 address has no closing ]"
// instead of the "missing :<tcp|udp>/<port>" it gives for IPv4 (grammar.ts:167 is never reached for these).
Deno.test({
  name: "grammar: an IPv6 address without a port says the port is missing",
  fn() {
    for (const line of ["[2001:db8::1]", "[2001:db8::]/32", "[::1]/128"]) {
      assert.equal(badReason(parseRuleLine(line)), MISSING_PORT, line);
    }
  },
});

// Regression (fixed): src/rules/grammar.ts:163/168: an unbracketed IPv6 address starting with a letter or ":" (fe80::,
// fd00::, ::1) is parsed as a service name (or not at all), so the "write IPv6 in brackets" hint that
// 2001:db8::/32:tcp/443 gets is missing.
Deno.test({
  name: "grammar: every unbracketed IPv6 address gets the bracket hint",
  fn() {
    for (const line of ["fe80::/10:tcp/443", "fd00::1:tcp/80", "::1:tcp/80", "::/0:udp/53"]) {
      assert.match(badReason(parseRuleLine(line)), V6_HINT, line);
    }
  },
});

// Regression (fixed): src/rules/ip.ts:36 accepts a dotted quad as the last group of the part BEFORE "::", so
// [1.2.3.4::] parses (as 102:304::) although an embedded IPv4 may only end the address.
Deno.test({
  name: "grammar: an embedded IPv4 must end the IPv6 address",
  fn() {
    for (const line of ["[1.2.3.4::]:tcp/80", "[1.2.3.4::5]:tcp/80"]) {
      assert.equal(parseRuleLine(line).ok, false, line);
    }
  },
});

// ---------------------------------------------------------------------------------------------------
// Hostile values

const HOSTILE = [
  "10.0.0.0/8:tcp/80\n-F",
  "-F",
  "\n-F",
  "-X",
  "*nat",
  "*filter",
  "COMMIT\n-F",
  ":OUTPUT ACCEPT [0:0]",
  "-A OUTPUT -j ACCEPT",
  "-A OUTPUT -j ACCEPT\nCOMMIT",
  "10.0.0.0/8:tcp/80 -j ACCEPT",
  "10.0.0.0/8:tcp/80\n*nat",
  "10.0.0.0/8:tcp/80\r\n*nat",
  "10.0.0.0/8:tcp/80\u2028-F",
  "$(reboot)",
  "svc$(reboot)",
  "10.0.0.0/8:tcp/80$(reboot)",
  ";",
  "svc;reboot",
  "10.0.0.0/8:tcp/80;reboot",
  "`reboot`",
  "svc`id`",
  "svc|sh",
  "svc&&reboot",
  "svc>/etc/passwd",
  "'svc'",
  '"svc"',
  "svc\\n-F",
  "svc\x00",
  "10.0.0.0/8:tcp/80\x00-F",
  "10.0.0.0/8:tcp/80\x1b[2J",
  "[::1]:tcp/80\n-A OUTPUT -j ACCEPT",
  "tag.svc@dc1 -j ACCEPT",
  "10.0.0.0/8:tcp/80,443",
  "10.0.0.0/8:tcp/80:tcp/81",
  "10.0.0.0/8:tcp/80 --dport 1",
  "../../etc/passwd",
];

Deno.test("grammar: hostile values as one line give only an error, never a rule", () => {
  const leaked: string[] = [];
  for (const v of HOSTILE) {
    let res: LineResult | undefined;
    assert.doesNotThrow(() => (res = parseRuleLine(v)), JSON.stringify(v));
    if (res!.ok) leaked.push(`${JSON.stringify(v)} -> ${JSON.stringify(res)}`);
    else assert.ok(res!.reason.length > 0, JSON.stringify(v));
  }
  assert.deepEqual(leaked, []);
});

Deno.test("grammar: a bare word like COMMIT is a service name, which only ever renders as resolved IPs", () => {
  // `COMMIT`, `nat` or `F` are valid Consul service names; the grammar keeps them as names (no iptables
  // text), and plan/render only turn a service into addresses from the catalog.
  for (const word of ["COMMIT", "nat", "filter", "F", "ACCEPT"]) {
    assert.deepEqual(okRule(parseRuleLine(word)).rule, svc(word));
  }
});

const SAFE_RULE_TEXT = /^[A-Za-z0-9_.:/\[\]@-]+$/;
// deno-lint-ignore no-control-regex
const PRINTABLE = /^[^\u0000-\u001f\u007f-\u009f]*$/;

Deno.test("grammar: hostile values as an ACL value: every hostile line is an error, nothing leaks", () => {
  // Lines that are well-formed on their own (before a `\n*nat`, or the bare word COMMIT, a valid
  // service name) may become rules; every other non-blank line must be an error on that line.
  const standalone = new Set(["10.0.0.0/8:tcp/80", "[::1]:tcp/80", "COMMIT"]);
  for (const v of HOSTILE) {
    const { rules, problems } = parseAcl("hostile", v);
    const lines = v.split("\n");
    const wantRules = lines.flatMap((l, i) => (standalone.has(l.trim()) ? [i + 1] : []));
    const wantErrors = lines.flatMap((l, i) => (l.trim() && !standalone.has(l.trim()) ? [i + 1] : []));
    assert.deepEqual(rules.map((r) => r.line), wantRules, JSON.stringify(v));
    assert.deepEqual(problems.map((p) => p.line), wantErrors, JSON.stringify(v));
    for (const r of rules) assert.match(formatRule(r), SAFE_RULE_TEXT, JSON.stringify(v));
    for (const p of problems) {
      assert.equal(p.severity, "error");
      assert.match(p.text, PRINTABLE, JSON.stringify(v));
      assert.ok(!formatProblem(p).includes("\n"), JSON.stringify(v));
    }
  }
  const all = parseAcl("hostile", "-F\n*nat\n-X\n-A OUTPUT -j ACCEPT\n$(reboot)\n;\n`reboot`\n");
  assert.deepEqual(all.rules, []);
  assert.deepEqual(all.problems.map((p) => [p.line, p.text]), [
    [1, "-F"],
    [2, "*nat"],
    [3, "-X"],
    [4, "-A OUTPUT -j ACCEPT"],
    [5, "$(reboot)"],
    [6, ";"],
    [7, "`reboot`"],
  ]);
  const mixed = parseAcl("k", "10.0.0.0/8:tcp/80\n*nat");
  assert.deepEqual(mixed.rules, [{ ...v4("10.0.0.0", 8, "tcp", 80), key: "k", line: 1 }]);
  assert.deepEqual(mixed.problems.map((p) => formatProblem(p)), [
    `k:2: *nat: ${NOT_A_RULE}`,
  ]);
});

Deno.test("grammar: a 10 MB value finishes fast and lists at most MAX_PROBLEMS_PER_KEY problems + 1", () => {
  const lines = 1_048_576;
  const value = "$(reboot)\n".repeat(lines); // 10 MiB, every line bad
  const t0 = performance.now();
  const { rules, problems } = parseAcl("big", value);
  const ms = performance.now() - t0;
  assert.ok(ms < 5000, `parseAcl took ${Math.round(ms)} ms`);
  assert.deepEqual(rules, []);
  assert.equal(problems.length, MAX_PROBLEMS_PER_KEY + 1);
  assert.equal(problems[0].line, 1);
  assert.equal(problems[MAX_PROBLEMS_PER_KEY - 1].line, MAX_PROBLEMS_PER_KEY);
  assert.deepEqual(problems[MAX_PROBLEMS_PER_KEY], {
    key: "big",
    line: 0,
    text: "",
    reason: `${lines - MAX_PROBLEMS_PER_KEY} more problems not listed`,
    severity: "error",
  });
  assert.equal(
    formatProblem(problems[MAX_PROBLEMS_PER_KEY]),
    `big: ${lines - MAX_PROBLEMS_PER_KEY} more problems not listed`,
  );

  // one 10 MB line: one problem, its text cut short
  const t1 = performance.now();
  const one = parseAcl("big", "1".repeat(10_000_000));
  assert.ok(performance.now() - t1 < 1000);
  assert.equal(one.problems.length, 1);
  assert.equal(one.problems[0].reason, "line is longer than 512 characters");
  assert.equal(one.problems[0].text.length, 80);
});

Deno.test("grammar: warnings count towards the cap too", () => {
  const { rules, problems } = parseAcl("w", "10.0.0.1/8:tcp/80\n".repeat(60));
  assert.equal(rules.length, 60);
  assert.equal(problems.length, MAX_PROBLEMS_PER_KEY + 1);
  assert.equal(problems[0].severity, "warning");
  assert.equal(problems[MAX_PROBLEMS_PER_KEY].reason, "10 more problems not listed");
});

Deno.test("grammar: non-UTF-8 bytes (via acl_source.parseEntry) are an error, shown as U+FFFD", () => {
  const enc = new TextEncoder();
  const bytes = new Uint8Array([...enc.encode("10.0.0.0/8:tcp/80\nsvc"), 0xff, 0xfe, ...enc.encode("\n")]);
  const entry = parseEntry("bin", bytes);
  assert.ok("rules" in entry);
  assert.deepEqual(entry.rules, [{ ...v4("10.0.0.0", 8, "tcp", 80), key: "bin", line: 1 }]);
  assert.equal(entry.problems.length, 1);
  const p = entry.problems[0];
  assert.equal(p.line, 2);
  assert.equal(p.severity, "error");
  assert.equal(p.text, "svc\ufffd\ufffd", "U+FFFD is printable; it shows where the bad bytes were");
  assert.equal(p.reason, nameReason("service name", "svc\ufffd\ufffd"));

  const only = parseEntry("bin", new Uint8Array([0xff, 0xfe, 0x00, 0x0a]));
  assert.ok("rules" in only);
  assert.deepEqual(only.rules, []);
  assert.equal(only.problems.length, 1);
  assert.equal(only.problems[0].text, "\ufffd\ufffd\\x00");
});

// ---------------------------------------------------------------------------------------------------
// formatRule / formatProblem / displayText

Deno.test("grammar: formatRule", () => {
  const cases: [RuleBody, string][] = [
    [svc("db"), "db"],
    [svc("db", "primary"), "primary.db"],
    [svc("db", undefined, "dc1"), "db@dc1"],
    [svc("db", "primary", "dc1"), "primary.db@dc1"],
    [v4("10.0.0.0", 8, "tcp", 80), "10.0.0.0/8:tcp/80"],
    [v4("10.0.0.0", 8, "udp", 1000, 2000), "10.0.0.0/8:udp/1000-2000"],
    [v6("2001:db8::", 32, "tcp", 443), "[2001:db8::]/32:tcp/443"],
    [v6("::1", 128, "udp", 53, 54), "[::1]/128:udp/53-54"],
  ];
  for (const [rule, text] of cases) assert.equal(formatRule(rule), text);
});

Deno.test("grammar: formatProblem is key:line: text: why", () => {
  const p = (over: Partial<RuleProblem>): RuleProblem => ({
    key: "web",
    line: 3,
    text: "bad line",
    reason: "why",
    severity: "error",
    ...over,
  });
  assert.equal(formatProblem(p({})), "web:3: bad line: why");
  assert.equal(formatProblem(p({ severity: "warning" })), "web:3: bad line: warning: why");
  assert.equal(formatProblem(p({ text: "" })), "web:3: why");
  assert.equal(formatProblem(p({ line: 0, text: "" })), "web: why");
  assert.equal(
    formatProblem(p({ key: "team/db", line: 0, text: "", reason: "ACL key not found", severity: "warning" })),
    "team/db: warning: ACL key not found",
  );
  const [bad] = parseAcl("team/web", "\n10.0.0.0/33:tcp/80").problems;
  assert.equal(formatProblem(bad), 'team/web:2: 10.0.0.0/33:tcp/80: mask "/33" is not from 0 to 32');
});

Deno.test("grammar: displayText makes text short and printable", () => {
  const cases: [string, string][] = [
    ["abc", "abc"],
    ["  padded  ", "padded"],
    ["line\r", "line"],
    ["a\tb", "a\\x09b"],
    ["\x00x", "\\x00x"],
    ["esc\x1b[2J", "esc\\x1b[2J"],
    ["bad\ufffd", "bad\ufffd"],
    ["a\nb", "a\\x0ab"],
    ["db\x7f\u009b", "db\\x7f\\x9b"],
    ["x".repeat(80), "x".repeat(80)],
    ["x".repeat(81), "x".repeat(77) + "..."],
    ["x".repeat(10_000), "x".repeat(77) + "..."],
  ];
  for (const [input, want] of cases) assert.equal(displayText(input), want, JSON.stringify(input));
});

// Regression (fixed): src/rules/grammar.ts:180 detects DEL (0x7f) and C1 controls (0x80-0x9f, e.g. 0x9b, the 8-bit CSI
// that starts a terminal escape) but escapes with JSON.stringify, which leaves exactly those characters raw:
// displayText("db\x7f") is '"db\x7f"' with a real DEL, so a hostile ACL line still reaches the terminal.
Deno.test({
  name: "grammar: displayText leaves no DEL or C1 control character in its output",
  fn() {
    for (const input of ["db\x7f", "c1\u0085", "csi\u009b2J"]) {
      assert.match(displayText(input), PRINTABLE, JSON.stringify(input));
    }
  },
});

// Regression (fixed): src/rules/grammar.ts:106, 113, 119, 140 (and parsePorts, :75) quote the raw piece of the line in the
// reason (`service name "svc<ESC>[2J" must be ...`). RuleProblem.text is made safe by displayText, but
// formatProblem prints the reason too, so `validate` still writes NUL/ESC/backspace from a KV value to the
// terminal. Expected: every formatted problem is free of control characters.
Deno.test({
  name: "grammar: formatted problems carry no control characters from the line, in the reason either",
  fn() {
    const inputs = [
      "svc\x00",
      "db\x1b[2J",
      "10.0.0.0/8:tcp/80\x1b[2J",
      "[::1]:tcp/\x08\x08",
      "10.0.0.\x07:tcp/1",
    ];
    for (const input of inputs) {
      const { problems } = parseAcl("k", input);
      assert.equal(problems.length, 1);
      assert.match(formatProblem(problems[0]), PRINTABLE, JSON.stringify(input));
    }
  },
});

// ---------------------------------------------------------------------------------------------------
// Property test

/** mulberry32: a small seeded PRNG, so a failure can be reproduced from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const TOKENS = [
  ..."0123456789",
  "1",
  "10",
  "255",
  "256",
  "65535",
  ".",
  ".",
  "/",
  "/",
  ":",
  ":",
  "::",
  "[",
  "]",
  ..."abcdefxyzAFG",
  "ffff",
  "db",
  "tcp/",
  "udp/",
  "tcp/",
  "-",
  "_",
  "@",
  "#",
  " ",
  " # ",
  "\t",
  "\r",
  "\n",
  "\x00",
  "\x1b",
  "\x7f",
  "\u00e9",
  "\ufffd",
  "$(",
  ";",
  "`",
];

function randomLine(rand: () => number): string {
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)];
  const int = (n: number) => Math.floor(rand() * n);
  const mode = rand();
  if (mode < 0.4) {
    // token soup
    let s = "";
    const n = 1 + int(20);
    for (let i = 0; i < n; i++) s += pick(TOKENS);
    return s;
  }
  // near-valid rules, sometimes mutated
  let s: string;
  const kind = rand();
  const ports = rand() < 0.5 ? `${int(70000)}` : `${int(70000)}-${int(70000)}`;
  const proto = pick(["tcp", "udp", "tcp", "icmp"]);
  if (kind < 0.4) {
    const quad = [0, 0, 0, 0].map(() => int(rand() < 0.9 ? 256 : 300)).join(".");
    const mask = rand() < 0.3 ? "" : `/${int(rand() < 0.9 ? 33 : 40)}`;
    s = `${quad}${mask}:${proto}/${ports}`;
  } else if (kind < 0.8) {
    const groups = Array.from({ length: 8 }, () => (rand() < 0.5 ? 0 : int(0x10000)).toString(16));
    const start = int(8), len = int(8 - start + 1);
    let addr = groups.join(":");
    if (len > 0) {
      addr = groups.slice(0, start).join(":") + "::" + groups.slice(start + len).join(":");
    }
    if (rand() < 0.1) addr = addr.toUpperCase();
    const mask = rand() < 0.3 ? "" : `/${int(rand() < 0.9 ? 129 : 140)}`;
    s = `[${addr}]${mask}:${proto}/${ports}`;
  } else {
    const name = () => Array.from({ length: 1 + int(6) }, () => pick([..."abz09_-"])).join("");
    s = `${rand() < 0.5 ? name() + "." : ""}${name()}${rand() < 0.3 ? "@" + name() : ""}`;
  }
  if (rand() < 0.3) {
    const at = int(s.length + 1);
    s = s.slice(0, at) + pick(TOKENS) + s.slice(at + (rand() < 0.5 ? 1 : 0));
  }
  if (rand() < 0.1) s = ` ${s} # comment`;
  return s;
}

Deno.test("grammar: property: 2000 random lines never throw; rules round-trip through formatRule", () => {
  const seed = 0x5eed_2026;
  const rand = prng(seed);
  let rules = 0, errors = 0, blanks = 0;
  for (let i = 0; i < 2000; i++) {
    const line = randomLine(rand);
    const ctx = `seed ${seed}, line #${i}: ${JSON.stringify(line)}`;
    let res: LineResult;
    try {
      res = parseRuleLine(line);
    } catch (err) {
      assert.fail(`${ctx} threw ${err}`);
    }
    if (!res.ok) {
      assert.equal(typeof res.reason, "string", ctx);
      assert.ok(res.reason.length > 0, ctx);
      errors++;
      continue;
    }
    if (res.rule === null) {
      blanks++;
      continue;
    }
    rules++;
    const text = formatRule(res.rule);
    assert.match(text, SAFE_RULE_TEXT, ctx);
    const again = parseRuleLine(text);
    assert.ok(again.ok && again.rule, `${ctx}: ${text} did not re-parse: ${JSON.stringify(again)}`);
    assert.deepEqual(again.rule, res.rule, ctx);
    assert.equal("warning" in again ? again.warning : undefined, undefined, `${ctx}: canonical text warned`);
  }
  // the generator must exercise both outcomes
  assert.ok(rules >= 200, `only ${rules} good rules`);
  assert.ok(errors >= 200, `only ${errors} errors`);
  assert.equal(rules + errors + blanks, 2000);
});
