/** The plan: allowed vs protected keys, service resolution, problems, dedupe, helpers. */
import assert from "node:assert/strict";
import {
  buildPlan,
  type Destination,
  parseAclList,
  type PlanInput,
  resolversByFamily,
  serviceRulesOf,
} from "../../src/rules/plan.ts";
import { snapshotFrom } from "../../src/rules/acl_source.ts";
import { formatProblem } from "../../src/rules/grammar.ts";
import { type ServiceLookup, toInstances } from "../../src/rules/services.ts";
import { DEFAULTS } from "../../src/config/config.ts";

const enc = new TextEncoder();
// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;
const snap = (keys: Record<string, string>) =>
  snapshotFrom(Object.entries(keys).map(([key, v]) => ({ key, value: enc.encode(v) })));

function input(over: Partial<PlanInput> & Pick<PlanInput, "snapshot">): PlanInput {
  return {
    acls: [],
    services: new Map(),
    policy: "protect",
    dnsResolvers: ["10.0.0.2"],
    hasCatalog: true,
    ...over,
  };
}

const dest = (cidr: string, proto: "tcp" | "udp", from: number, to: number, origin: string): Destination => ({
  family: cidr.includes(":") ? "ipv6" : "ipv4",
  cidr,
  proto,
  ports: { from, to },
  origin,
});

Deno.test("plan: keys in the container's list are allowed, the others protected", () => {
  const snapshot = snap({
    web: "10.0.0.0/8:tcp/80\n[2001:db8::]/32:tcp/443",
    db: "192.168.1.0/24:udp/1000-2000",
    ops: "172.16.0.0/12:tcp/22",
  });
  const plan = buildPlan(
    input({ snapshot, acls: ["web", "ops"], container: { id: "abc", name: "app" }, policy: "allowlist" }),
  );
  assert.equal(plan.policy, "allowlist");
  assert.deepEqual(plan.container, { id: "abc", name: "app" });
  assert.deepEqual(plan.acls, ["web", "ops"]);
  assert.deepEqual(plan.missing, []);
  assert.deepEqual(plan.allowed, [
    { key: "ops", destinations: [dest("172.16.0.0/12", "tcp", 22, 22, "172.16.0.0/12:tcp/22")], names: [] },
    {
      key: "web",
      destinations: [
        dest("10.0.0.0/8", "tcp", 80, 80, "10.0.0.0/8:tcp/80"),
        dest("2001:db8::/32", "tcp", 443, 443, "[2001:db8::]/32:tcp/443"),
      ],
      names: [],
    },
  ]);
  assert.deepEqual(plan.protected, [
    {
      key: "db",
      destinations: [dest("192.168.1.0/24", "udp", 1000, 2000, "192.168.1.0/24:udp/1000-2000")],
      names: [],
    },
  ]);
  assert.deepEqual(plan.problems, []);
  assert.deepEqual(plan.unresolved, []);
  assert.deepEqual(plan.dnsResolvers, { ipv4: ["10.0.0.2/32"], ipv6: [] });

  const none = buildPlan(input({ snapshot }));
  assert.equal(none.container, null);
  assert.deepEqual(none.allowed, []);
  assert.deepEqual(none.protected.map((a) => a.key), ["db", "ops", "web"]);
});

Deno.test("plan: names in the list without a key are missing, with a warning", () => {
  const plan = buildPlan(
    input({ snapshot: snap({ web: "10.0.0.0/8:tcp/80" }), acls: ["web", "gone", "also"] }),
  );
  assert.deepEqual(plan.missing, ["gone", "also"]);
  assert.deepEqual(plan.allowed.map((a) => a.key), ["web"]);
  assert.deepEqual(plan.problems, [
    { key: "gone", line: 0, text: "", reason: "ACL key not found", severity: "warning" },
    { key: "also", line: 0, text: "", reason: "ACL key not found", severity: "warning" },
  ]);
  assert.deepEqual(plan.problems.map(formatProblem), [
    "gone: warning: ACL key not found",
    "also: warning: ACL key not found",
  ]);
});

// Regression (fixed): src/plan.ts:172 puts the raw ACL name into the missing-key problem, unlike acl_source.ts (which escapes
// bad key names with safeKey). A name from --rules (or any caller that skips intent.ts's filter) with a
// newline is printed by formatProblem as two lines, e.g. `a\n-F: warning: ACL key not found`.
Deno.test({
  name: "plan: a missing-key problem is safe to print whatever the ACL name",
  fn() {
    const plan = buildPlan(input({ snapshot: snap({}), acls: ["a\n-F", "x\x1b[2J"] }));
    for (const p of plan.problems) assert.doesNotMatch(formatProblem(p), CONTROL);
  },
});

// Regression (fixed): src/plan.ts:87 (origin) and :75/:78 (warnings) embed the node name and address from Consul's catalog
// raw. Destination.origin is documented as "safe to print" and is in every template's context, so a custom
// template writing `# <%= d.origin %>` gets a node name like "n1\n-A OUTPUT -j ACCEPT" as a rule line;
// validate/render print the warnings with the newline too.
Deno.test({
  name: "plan: node names and addresses from the catalog are made safe before they are printed",
  fn() {
    const evil = "n1\n-A OUTPUT -j ACCEPT";
    const services = new Map<string, ServiceLookup>([
      ["db", {
        ok: true,
        instances: [
          { node: evil, address: "10.0.0.5", port: 5432 },
          { node: evil, address: "x\n-F", port: 5432 },
          { node: evil, address: "10.0.0.6", port: 0 },
        ],
      }],
    ]);
    const plan = buildPlan(input({ snapshot: snap({ k: "db" }), services }));
    for (const d of plan.protected[0].destinations) assert.doesNotMatch(d.origin, CONTROL);
    for (const p of plan.problems) assert.doesNotMatch(formatProblem(p), CONTROL);
  },
});

Deno.test("plan: snapshot and entry problems are carried into the plan", () => {
  const snapshot = snapshotFrom([
    { key: "bad key", value: enc.encode("10.0.0.0/8:tcp/80") },
    { key: "web", value: enc.encode("10.0.0.0/8:tcp/80\nnot a rule\n10.1.2.3/16:tcp/1") },
  ]);
  const plan = buildPlan(input({ snapshot, acls: ["web"] }));
  assert.deepEqual(plan.problems.map(formatProblem), [
    'bad key: key name may only use letters, digits, "_", "-", "." and "/"; key ignored',
    "web:2: not a rule: a rule has no spaces inside it (one rule per line)",
    "web:3: 10.1.2.3/16:tcp/1: warning: host bits set in 10.1.2.3/16; using 10.1.0.0/16",
  ]);
  assert.deepEqual(plan.allowed[0].destinations.map((d) => d.cidr), ["10.0.0.0/8", "10.1.0.0/16"]);
});

Deno.test("plan: services resolve to their instances", () => {
  const snapshot = snap({
    svc: [
      "db",
      "primary.db@dc1",
      "empty",
      "broken",
      "unlooked",
    ].join("\n"),
  });
  const services = new Map<string, ServiceLookup>([
    [
      "db",
      {
        ok: true,
        instances: [
          { node: "n1", address: "10.0.0.5", port: 5432 },
          { node: "n2", address: "2001:DB8::5", port: 5433 },
          { node: "n3", address: "db.example.com", port: 5432 },
          { node: "n4", address: "10.0.0.6", port: 0 },
          { node: "n5", address: "", port: 5432 },
        ],
      },
    ],
    ["primary.db@dc1", { ok: true, instances: [{ node: "m1", address: "10.1.0.7", port: 6432 }] }],
    ["empty", { ok: true, instances: [] }],
    ["broken", { ok: false, error: "consul at http://127.0.0.1:8500 answered 500: boom" }],
  ]);
  // allowlist + listed: the key's destinations are rendered, so every lookup matters.
  const plan = buildPlan(input({ snapshot, acls: ["svc"], services, policy: "allowlist" }));
  assert.deepEqual(plan.allowed, [{
    key: "svc",
    destinations: [
      dest("10.0.0.5/32", "tcp", 5432, 5432, "db (n1 10.0.0.5 port 5432)"),
      dest("2001:db8::5/128", "tcp", 5433, 5433, "db (n2 2001:db8::5 port 5433)"),
      dest("10.1.0.7/32", "tcp", 6432, 6432, "primary.db@dc1 (m1 10.1.0.7 port 6432)"),
    ],
    names: [],
  }]);
  assert.deepEqual(plan.problems.map(formatProblem), [
    'svc:1: db: warning: db: instance on node n3 has address "db.example.com", not an IP; skipped',
    "svc:1: db: warning: db: instance on node n4 has no port (0); skipped",
    'svc:1: db: warning: db: instance on node n5 has address "", not an IP; skipped',
    "svc:3: empty: warning: service has no instances in the catalog",
    "svc:4: broken: service lookup failed: consul at http://127.0.0.1:8500 answered 500: boom",
    "svc:5: unlooked: service lookup failed: service was not looked up",
  ]);
  assert.deepEqual(plan.unresolved.toSorted(), ["broken", "unlooked"]);
  assert.deepEqual(serviceRulesOf(snapshot).map((r) => [r.service, r.tag, r.datacenter]), [
    ["db", undefined, undefined],
    ["db", "primary", "dc1"],
    ["empty", undefined, undefined],
    ["broken", undefined, undefined],
    ["unlooked", undefined, undefined],
  ]);
  // protect + listed: the key renders nothing, so failed or missing lookups are no reason to fail.
  const unused = buildPlan(input({ snapshot, acls: ["svc"], services }));
  assert.deepEqual(unused.unresolved, []);
  assert.ok(!unused.problems.some((p) => /lookup failed/.test(p.reason)));
  // A report-only plan skips services not looked up yet, but not failed lookups.
  const report = buildPlan(input({ snapshot, services, skipUnlooked: true }));
  assert.deepEqual(report.unresolved, ["broken"]);
  assert.deepEqual(serviceRulesOf(snapshot, (k) => k !== "svc"), []);
});

Deno.test("plan: bad instance ports are skipped", () => {
  const snapshot = snap({ k: "svc" });
  for (const port of [0, -1, 65536, 1.5, NaN]) {
    const services = new Map<string, ServiceLookup>([
      ["svc", { ok: true, instances: [{ node: "n", address: "10.0.0.1", port }] }],
    ]);
    const plan = buildPlan(input({ snapshot, services }));
    assert.deepEqual(plan.protected[0].destinations, [], String(port));
    assert.equal(plan.problems.length, 1);
    assert.equal(plan.problems[0].severity, "warning");
  }
});

Deno.test("plan: toInstances prefers the service address over the node address", () => {
  assert.deepEqual(
    toInstances([
      { node: "n1", address: "10.0.0.1", serviceAddress: "10.0.1.1", servicePort: 80 },
      { node: "n2", address: "10.0.0.2", serviceAddress: "", servicePort: 81 },
      { node: "n3", address: "2001:db8::3", serviceAddress: "", servicePort: 82 },
    ]),
    [
      { node: "n1", address: "10.0.1.1", port: 80 },
      { node: "n2", address: "10.0.0.2", port: 81 },
      { node: "n3", address: "2001:db8::3", port: 82 },
    ],
  );
});

Deno.test("plan: without a catalog (--acl-dir) a service rule is an error", () => {
  const snapshot = snap({ web: "10.0.0.0/8:tcp/80\nprimary.db@dc1" });
  const services = new Map<string, ServiceLookup>([
    ["primary.db@dc1", { ok: true, instances: [{ node: "n", address: "10.0.0.9", port: 1 }] }],
  ]);
  const plan = buildPlan(input({ snapshot, acls: ["web"], services, hasCatalog: false }));
  assert.deepEqual(plan.allowed[0].destinations, [dest("10.0.0.0/8", "tcp", 80, 80, "10.0.0.0/8:tcp/80")]);
  assert.deepEqual(plan.problems, [{
    key: "web",
    line: 2,
    text: "primary.db@dc1",
    reason: "service rules need Consul's catalog, and --acl-dir has none",
    severity: "error",
  }]);
  assert.deepEqual(plan.unresolved, []);
});

Deno.test("plan: destinations are deduplicated within a key, not across keys", () => {
  const snapshot = snap({
    a: [
      "10.0.0.0/8:tcp/80",
      "10.1.2.3/8:tcp/80", // same network once masked
      "10.0.0.0/8:udp/80",
      "10.0.0.0/8:tcp/80-81",
      "10.0.0.5:tcp/5432",
      "db", // resolves to 10.0.0.5:5432 too
      "[2001:db8::1]/32:tcp/443",
      "[2001:DB8::]/32:tcp/443",
    ].join("\n"),
    b: "10.0.0.0/8:tcp/80",
  });
  const services = new Map<string, ServiceLookup>([
    ["db", { ok: true, instances: [{ node: "n1", address: "10.0.0.5", port: 5432 }] }],
  ]);
  const plan = buildPlan(input({ snapshot, acls: ["a"], services }));
  assert.deepEqual(plan.allowed[0].destinations, [
    dest("10.0.0.0/8", "tcp", 80, 80, "10.0.0.0/8:tcp/80"),
    dest("10.0.0.0/8", "udp", 80, 80, "10.0.0.0/8:udp/80"),
    dest("10.0.0.0/8", "tcp", 80, 81, "10.0.0.0/8:tcp/80-81"),
    dest("10.0.0.5/32", "tcp", 5432, 5432, "10.0.0.5/32:tcp/5432"),
    dest("2001:db8::/32", "tcp", 443, 443, "[2001:db8::]/32:tcp/443"),
  ]);
  assert.deepEqual(plan.protected[0].destinations, [dest("10.0.0.0/8", "tcp", 80, 80, "10.0.0.0/8:tcp/80")]);
});

Deno.test("plan: parseAclList trims, drops empties and duplicates", () => {
  const cases: [string | undefined, string[]][] = [
    [" a, ,b,a ", ["a", "b"]],
    [undefined, []],
    ["", []],
    [",,,", []],
    ["web", ["web"]],
    ["team/db,web,team/db", ["team/db", "web"]],
    ["\tx\t,\ny\n", ["x", "y"]],
  ];
  for (const [value, want] of cases) assert.deepEqual(parseAclList(value), want, JSON.stringify(value));
});

Deno.test("plan: resolversByFamily splits and normalises", () => {
  assert.deepEqual(resolversByFamily(DEFAULTS.dnsResolvers), {
    ipv4: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "8.8.8.8/32", "8.8.4.4/32"],
    ipv6: ["fc00::/7", "fe80::/10", "2001:4860:4860::8888/128", "2001:4860:4860::8844/128"],
  });
  assert.deepEqual(resolversByFamily(["2001:DB8:0:0::53", "10.0.0.2/32", "::1/128"]), {
    ipv4: ["10.0.0.2/32"],
    ipv6: ["2001:db8::53/128", "::1/128"],
  });
  assert.deepEqual(resolversByFamily([]), { ipv4: [], ipv6: [] });
  assert.deepEqual(resolversByFamily(["not-an-ip"]), { ipv4: [], ipv6: [] });
});

Deno.test("plan: buildPlan never throws on odd input", () => {
  const plan = buildPlan(input({
    snapshot: snap({ k: "svc\n$(x)\n" + "z".repeat(600) }),
    acls: ["a\n-F", "x;rm", "", "k"],
    services: new Map([["svc", {
      ok: true,
      instances: [{ node: "n\n", address: "::ffff:1.2.3.4", port: 1 }],
    }]]),
  }));
  assert.deepEqual(plan.allowed[0].destinations.map((d) => d.cidr), ["::ffff:102:304/128"]);
  assert.deepEqual(plan.missing, ["a\n-F", "x;rm", ""]);
});
