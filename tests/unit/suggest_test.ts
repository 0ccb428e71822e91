/** `suggest`'s pure half: grouping by destination, merging port ranges, catalog names, what is left out. */
import assert from "node:assert/strict";
import { mergePorts, type SeenDestination, suggestLines } from "../../src/rules/suggest.ts";
import { parseAcl } from "../../src/rules/grammar.ts";

const seen = (dst: string, dport: number | undefined, proto = "tcp", acl = "allowlist"): SeenDestination => ({
  acl,
  proto,
  dst,
  dport,
  count: 1,
});

Deno.test("suggest: consecutive ports merge into ranges; gaps stay separate lines", () => {
  assert.deepEqual(mergePorts([8082, 8080, 8081, 8080, 9090, 22, 0, 70000]), [
    { from: 22, to: 22 },
    { from: 8080, to: 8082 },
    { from: 9090, to: 9090 },
  ]);
  assert.deepEqual(mergePorts([]), []);
});

Deno.test("suggest: one line per destination and protocol, sorted by address; IPv6 in brackets", () => {
  const { lines, notes } = suggestLines([
    seen("10.0.0.10", 443),
    seen("10.0.0.9", 8081),
    seen("10.0.0.9", 8080),
    seen("10.0.0.9", 8082),
    seen("10.0.0.9", 53, "udp"),
    seen("10.0.0.9", 9000),
    seen("fd00::2", 5432, "tcp", "deny-all"),
  ], { policy: "allowlist" });
  assert.deepEqual(lines, [
    "10.0.0.9/32:tcp/8080-8082",
    "10.0.0.9/32:tcp/9000",
    "10.0.0.9/32:udp/53",
    "10.0.0.10/32:tcp/443",
    "[fd00::2]/128:tcp/5432",
  ]);
  assert.deepEqual(notes, []);
  // What it prints is a valid ACL value: every line parses, none is a problem.
  const parsed = parseAcl("k", lines.join("\n"));
  assert.equal(parsed.rules.length, lines.length);
  assert.deepEqual(parsed.problems, []);
});

Deno.test("suggest: a catalog instance (address and port, tcp) becomes <tag>.<service>, once", () => {
  const catalog = [
    { service: "web", tags: ["prod", "blue"], address: "10.0.0.5", port: 8080 },
    { service: "web", tags: ["prod"], address: "10.0.0.6", port: 8080 },
    { service: "db", tags: [], address: "10.0.0.7", port: 5432 },
    // A name that is not a rule never gets out: it would be a line of its own in the KV value.
    { service: "x\n0.0.0.0/0:tcp/1-65535", tags: [], address: "10.0.0.8", port: 22 },
  ];
  const { lines } = suggestLines([
    seen("10.0.0.5", 8080),
    seen("10.0.0.6", 8080),
    seen("10.0.0.5", 9999), // not the instance's port
    seen("10.0.0.7", 5432),
    seen("10.0.0.7", 5432, "udp"), // services are tcp
    seen("10.0.0.8", 22),
  ], { policy: "allowlist", catalog });
  assert.deepEqual(lines, [
    "10.0.0.5/32:tcp/9999",
    "10.0.0.7/32:udp/5432",
    "10.0.0.8/32:tcp/22",
    "db",
    "prod.web",
  ]);
});

Deno.test("suggest: what no ACL line opens is a note, not a line", () => {
  const { lines, notes } = suggestLines([
    seen("9.9.9.9", 53, "udp", "dns-guard"),
    seen("1.2.3.4", 123, "udp", "ntp"),
    seen("10.0.0.1", undefined, "icmp"),
    seen("10.1.0.1", 443, "tcp", "team/db"),
    seen("10.1.0.2", 443, "tcp", "unknown"),
  ], { policy: "allowlist" });
  assert.deepEqual(lines, []);
  assert.deepEqual(notes, [
    "udp/53 to 9.9.9.9: DNS goes only to the --dns resolvers; no ACL line opens it",
    "udp/123 to 1.2.3.4: NTP (udp/123) is always refused",
    "icmp to 10.0.0.1: ACL lines name tcp or udp ports only; skipped",
    'tcp/443 to 10.1.0.1: refused by ACL key "team/db": list it in EGRESSTRATOR_ACL to reach it',
    "tcp/443 to 10.1.0.2: refused by a rule no longer known; skipped",
  ]);
  // Under protect, a deny-all refusal was a stand-in for rules that could not be had: no line fixes it.
  const p = suggestLines([seen("10.0.0.1", 80, "tcp", "deny-all")], { policy: "protect" });
  assert.deepEqual(p.lines, []);
  assert.equal(p.notes.length, 1);
});
