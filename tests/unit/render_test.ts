/**
 * Rendering through the real templates: exact text per policy and family, the checks on rendered text,
 * custom templates, and sanitising. Every text rendered here is also fed to the real
 * `iptables-restore --test` / `ip6tables-restore --test` in a scratch network namespace (root needed:
 * these tests fail, never skip, without it).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { buildPlan, type ContainerRef, type RulePlan } from "../../src/rules/plan.ts";
import { snapshotFrom } from "../../src/rules/acl_source.ts";
import type { Family } from "../../src/rules/grammar.ts";
import type { Policy } from "../../src/config/config.ts";
import {
  checkRendered,
  CLEAR_TEXT,
  loadTemplates,
  portMatch,
  Renderer,
  rulesHash,
  type TemplateContext,
  templateContext,
} from "../../src/render/renderer.ts";
import { commentSafe } from "../../src/util/text.ts";
import { TemplateError } from "../../src/errors.ts";
import { VERSION } from "../../src/version.ts";

// ---------------------------------------------------------------------------------------------------
// Kernel check: iptables-restore --test inside a throwaway network namespace

async function run(cmd: string, args: string[], stdin?: string) {
  const child = new Deno.Command(cmd, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Run fn with a fresh network namespace, deleted afterwards. Fails (never skips) without root. */
async function withNetns<T>(fn: (ns: string) => Promise<T>): Promise<T> {
  if (Deno.uid() !== 0) {
    throw new Error(
      `render tests check every rendered text with iptables-restore --test in a scratch network namespace, ` +
        `which needs root (uid is ${Deno.uid()}); run them as root (CI does). They are not skipped.`,
    );
  }
  const ns = `egt-unit-${crypto.randomUUID().slice(0, 8)}`;
  const add = await run("ip", ["netns", "add", ns]).catch((err) => {
    throw new Error(`cannot run "ip netns add ${ns}" (is iproute2 installed?): ${err}`);
  });
  if (add.code !== 0) throw new Error(`ip netns add ${ns} failed (${add.code}): ${add.stderr.trim()}`);
  try {
    return await fn(ns);
  } finally {
    await run("ip", ["netns", "del", ns]);
  }
}

const numbered = (text: string) =>
  text.split("\n").map((l, i) => `${String(i + 1).padStart(3)} ${l}`).join("\n");

async function restoreTest(ns: string, family: Family, text: string) {
  const tool = family === "ipv4" ? "iptables-restore" : "ip6tables-restore";
  return { tool, ...(await run("ip", ["netns", "exec", ns, tool, "--test"], text)) };
}

/** Assert the kernel's own parser accepts every text (each with the tool for its family). */
async function assertKernelAccepts(texts: { name: string; family: Family; text: string }[]) {
  assert.ok(texts.length > 0);
  await withNetns(async (ns) => {
    for (const t of texts) {
      const r = await restoreTest(ns, t.family, t.text);
      assert.equal(
        r.code,
        0,
        `${r.tool} --test refused ${t.name}:\n${r.stderr}${r.stdout}\n--- text ---\n${numbered(t.text)}`,
      );
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Fixtures

const enc = new TextEncoder();
const ACLS = {
  web: "10.0.0.0/8:tcp/80\n[2001:db8::]/32:tcp/443",
  db: "192.168.1.0/24:udp/1000-2000\n[fd00::]/8:tcp/5432\n10.9.0.0/16:tcp/1-65535",
};
const CONTAINER: ContainerRef = { id: "3f2a9c1b7d4e5f60aa11", name: "app" };

function planFor(opts: {
  policy: Policy;
  acls: string[];
  aclText?: Record<string, string>;
  container?: ContainerRef;
  dns?: string[];
}): RulePlan {
  const snapshot = snapshotFrom(
    Object.entries(opts.aclText ?? ACLS).map(([key, v]) => ({ key, value: enc.encode(v) })),
  );
  return buildPlan({
    snapshot,
    acls: opts.acls,
    services: new Map(),
    policy: opts.policy,
    dnsResolvers: opts.dns ?? ["10.0.0.2", "fd00::53"],
    hasCatalog: false,
    container: opts.container,
  });
}

const templates = await loadTemplates();
const renderer = new Renderer(templates, VERSION);

const header = (policy: Policy, family: Family, acls: string, missing?: string) =>
  [
    `# egresstrator ${VERSION}: policy ${policy}, ${family}`,
    `# container: app 3f2a9c1b7d4e`,
    `# acls: ${acls}`,
    ...(missing ? [`# missing acls: ${missing}`] : []),
  ].join("\n") + "\n";

/** ICMPv6 that IPv6 needs to work at all: MLD, router and neighbour discovery. */
const ND =
  "# IPv6 needs these to reach anything: MLD (130-132, 143), router and neighbour discovery (133-136)\n" +
  [130, 131, 132, 133, 134, 135, 136, 143].map((t) =>
    `-A OUTPUT -p ipv6-icmp -m icmp6 --icmpv6-type ${t} -j ACCEPT\n`
  )
    .join("");

/** A log chain's rule for container CONTAINER (3f2a9c1b7d4e), as the guards partial prints it. */
const logRule = (chain: string, tag: string) =>
  `-A ${chain} -m limit --limit 5/sec --limit-burst 10 -j LOG --log-prefix "egt:3f2a9c1b7d4e:${tag}:D " --log-level 6\n`;

/** The log chains of a text: allowlist's final reject (allowlist only), DNS guard, NTP, then protected keys. */
const logChains = (chains: [string, string][]) =>
  chains.map(([c]) => `:${c} - [0:0]\n`).join("") +
  "# NEW connections about to be refused are logged, rate-limited, from these chains\n" +
  chains.map(([c, t]) => logRule(c, t)).join("");

/** Tags of the labels (FNV-1a of the name: literal here, so a change of the scheme shows). */
const TAG = { allowlist: "44cce26e", dns: "deb7cf70", ntp: "2f74d03d", db: "571cc6c3" };

const guards = (family: Family, resolver: string, policy: Policy) => {
  const icmp = family === "ipv4" ? "icmp-port-unreachable" : "icmp6-port-unreachable";
  const chains: [string, string][] = [
    ...(policy === "allowlist" ? [["egt-log-allow", TAG.allowlist] as [string, string]] : []),
    ["egt-log-dns", TAG.dns],
    ["egt-log-ntp", TAG.ntp],
    ...(policy === "protect" ? [["egt-log-k0", TAG.db] as [string, string]] : []),
  ];
  return `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:egresstrator-dns - [0:0]
${
    logChains(chains)
  }# loopback is never filtered (Docker's embedded DNS lives there, and so do the listeners DNS is steered to:
# a packet nat sent to loopback still shows its first interface to -o, hence the address match too)
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -d ${family === "ipv6" ? "::1/128" : "127.0.0.0/8"} -j ACCEPT
${family === "ipv6" ? ND : ""}# a NEW tcp connection must start with SYN
-A OUTPUT -p tcp ! --syn -m conntrack --ctstate NEW -j REJECT --reject-with tcp-reset
# DNS (udp and tcp 53) and DNS over TLS (tcp 853) only to allowed resolvers
-A OUTPUT -p udp -m udp --dport 53 -j egresstrator-dns
-A OUTPUT -p tcp -m tcp --dport 53 -j egresstrator-dns
-A OUTPUT -p tcp -m tcp --dport 853 -j egresstrator-dns
-A egresstrator-dns -d ${resolver} -j RETURN
-A egresstrator-dns -m conntrack --ctstate NEW -j egt-log-dns
-A egresstrator-dns -p tcp -j REJECT --reject-with tcp-reset
-A egresstrator-dns -j DROP
# no NTP
-A OUTPUT -p udp -m udp --dport 123 -m conntrack --ctstate NEW -j egt-log-ntp
-A OUTPUT -p udp -m udp --dport 123 -j REJECT --reject-with ${icmp}
`;
};

const PROTECT_LINE =
  "# protect: destinations named by ACL keys this container does not list are rejected; the rest is open.\n" +
  "# Every packet the container sends on its own connections is checked, not only the first: a destination\n" +
  "# that becomes protected is cut at its next packet.\n";
const ALLOWLIST_LINE =
  "# allowlist: only this container's own ACL destinations (and DNS to allowed resolvers) are reachable.\n" +
  "# Every packet of a connection the container opened must match an allowed destination, not only the\n" +
  "# first: a destination taken off the list is cut at its next packet.\n";
const ALLOWLIST_HEAD = `# replies on connections made to the container, and ICMP errors about any flow
-A OUTPUT -m conntrack --ctstate ESTABLISHED --ctdir REPLY -j ACCEPT
-A OUTPUT -m conntrack --ctstate RELATED -j ACCEPT
# DNS: the guards above let it reach the allowed resolvers only
-A OUTPUT -p udp -m udp --dport 53 -j ACCEPT
-A OUTPUT -p tcp -m multiport --dports 53,853 -j ACCEPT
`;

const EXPECTED: Record<string, string> = {
  "protect ipv4": header("protect", "ipv4", "web,gone", "gone") + PROTECT_LINE +
    guards("ipv4", "10.0.0.2/32", "protect") +
    `# protected: db
-A OUTPUT -d 192.168.1.0/24 -p udp -m multiport --dports 1000:2000 -m conntrack --ctstate NEW -j egt-log-k0
-A OUTPUT -d 192.168.1.0/24 -p udp -m multiport --dports 1000:2000 -m conntrack --ctdir ORIGINAL -j REJECT --reject-with icmp-port-unreachable
-A OUTPUT -d 10.9.0.0/16 -p tcp -m multiport --dports 1:65535 -m conntrack --ctstate NEW -j egt-log-k0
-A OUTPUT -d 10.9.0.0/16 -p tcp -m multiport --dports 1:65535 -m conntrack --ctdir ORIGINAL -j REJECT --reject-with tcp-reset
# allowed: web
COMMIT
`,
  "protect ipv6": header("protect", "ipv6", "web,gone", "gone") + PROTECT_LINE +
    guards("ipv6", "fd00::53/128", "protect") +
    `# protected: db
-A OUTPUT -d fd00::/8 -p tcp -m tcp --dport 5432 -m conntrack --ctstate NEW -j egt-log-k0
-A OUTPUT -d fd00::/8 -p tcp -m tcp --dport 5432 -m conntrack --ctdir ORIGINAL -j REJECT --reject-with tcp-reset
# allowed: web
COMMIT
`,
  "allowlist ipv4": header("allowlist", "ipv4", "web,gone", "gone") + ALLOWLIST_LINE +
    guards("ipv4", "10.0.0.2/32", "allowlist") +
    ALLOWLIST_HEAD + `# allowed: web
-A OUTPUT -d 10.0.0.0/8 -p tcp -m tcp --dport 80 -j ACCEPT
# everything else is logged and refused
-A OUTPUT -m conntrack --ctstate NEW -j egt-log-allow
-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset
-A OUTPUT -j REJECT --reject-with icmp-port-unreachable
COMMIT
`,
  "allowlist ipv6": header("allowlist", "ipv6", "web,gone", "gone") + ALLOWLIST_LINE +
    guards("ipv6", "fd00::53/128", "allowlist") +
    ALLOWLIST_HEAD + `# allowed: web
-A OUTPUT -d 2001:db8::/32 -p tcp -m tcp --dport 443 -j ACCEPT
# everything else is logged and refused
-A OUTPUT -m conntrack --ctstate NEW -j egt-log-allow
-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset
-A OUTPUT -j REJECT --reject-with icmp6-port-unreachable
COMMIT
`,
};

// ---------------------------------------------------------------------------------------------------
// The built-in templates

Deno.test("render: protect and allowlist, ipv4 and ipv6, exact text; the kernel accepts them", async () => {
  const texts: { name: string; family: Family; text: string }[] = [];
  for (const policy of ["protect", "allowlist"] as const) {
    const plan = planFor({ policy, acls: ["web", "gone"], container: CONTAINER });
    for (const family of ["ipv4", "ipv6"] as const) {
      const name = `${policy} ${family}`;
      const text = renderer.render(plan, family);
      assert.equal(text, EXPECTED[name], name);
      texts.push({ name, family, text });
    }
    assert.deepEqual(renderer.renderAll(plan), {
      ipv4: EXPECTED[`${policy} ipv4`],
      ipv6: EXPECTED[`${policy} ipv6`],
    });
  }
  await assertKernelAccepts(texts);
});

Deno.test("render: the kernel check is real: it refuses an ipv6 text given to iptables-restore", async () => {
  const text = EXPECTED["protect ipv6"];
  await withNetns(async (ns) => {
    const r = await restoreTest(ns, "ipv4", text);
    assert.notEqual(r.code, 0, "iptables-restore --test accepted IPv6 rules: the check proves nothing");
    const bad = await restoreTest(ns, "ipv4", "*filter\n-A OUTPUT -d 10.0.0.0/33 -j ACCEPT\nCOMMIT\n");
    assert.notEqual(bad.code, 0);
  });
});

Deno.test("render: without a container or ACLs, and with no resolvers for a family", async () => {
  const plan = planFor({ policy: "protect", acls: [], dns: ["10.0.0.2"] });
  const v4 = renderer.render(plan, "ipv4");
  assert.ok(
    v4.startsWith(`# egresstrator ${VERSION}: policy protect, ipv4\n# container: (none)\n# acls: (none)\n#`),
  );
  assert.ok(!v4.includes("# missing acls"));
  const v6 = renderer.render(plan, "ipv6");
  // no IPv6 resolver: DNS (udp, tcp, DoT) over IPv6 is all refused
  assert.match(
    v6,
    /-A OUTPUT -p tcp -m tcp --dport 853 -j egresstrator-dns\n-A egresstrator-dns -m conntrack --ctstate NEW -j egt-log-dns\n-A egresstrator-dns -p tcp -j REJECT --reject-with tcp-reset\n-A egresstrator-dns -j DROP\n/,
  );
  assert.match(v6, /# protected: db\n-A OUTPUT -d fd00::\/8 /);
  const allow = planFor({ policy: "allowlist", acls: [], dns: ["10.0.0.2"] });
  const a6 = renderer.render(allow, "ipv6");
  // The DNS accepts follow the guard, which has no RETURN without a resolver: nothing gets to them.
  assert.ok(!a6.includes("-A egresstrator-dns -d "), "no resolver RETURN without a resolver");
  await assertKernelAccepts([
    { name: "no container ipv4", family: "ipv4", text: v4 },
    { name: "no resolver ipv6", family: "ipv6", text: v6 },
    { name: "allowlist, no acls ipv4", family: "ipv4", text: renderer.render(allow, "ipv4") },
    { name: "allowlist, no acls ipv6", family: "ipv6", text: a6 },
  ]);
});

Deno.test("render: port ranges use multiport, single ports the protocol match", async () => {
  assert.equal(portMatch("tcp", 80, 80), "-p tcp -m tcp --dport 80");
  assert.equal(portMatch("udp", 53, 53), "-p udp -m udp --dport 53");
  assert.equal(portMatch("tcp", 1000, 2000), "-p tcp -m multiport --dports 1000:2000");
  assert.equal(portMatch("udp", 1, 65535), "-p udp -m multiport --dports 1:65535");
  const aclText = {
    ranges:
      "10.0.0.0/8:tcp/1000-2000\n10.0.0.0/8:udp/5000-5001\n[2001:db8::]/32:udp/1-65535\n10.1.0.0/16:tcp/22",
  };
  const texts: { name: string; family: Family; text: string }[] = [];
  for (const policy of ["protect", "allowlist"] as const) {
    const plan = planFor({ policy, acls: policy === "allowlist" ? ["ranges"] : [], aclText });
    const v4 = renderer.render(plan, "ipv4");
    const tail = policy === "protect" ? " -m conntrack --ctdir ORIGINAL -j REJECT" : " -j ACCEPT";
    assert.ok(v4.includes(`-A OUTPUT -d 10.0.0.0/8 -p tcp -m multiport --dports 1000:2000${tail}`), v4);
    assert.ok(v4.includes(`-A OUTPUT -d 10.0.0.0/8 -p udp -m multiport --dports 5000:5001${tail}`), v4);
    assert.ok(v4.includes(`-A OUTPUT -d 10.1.0.0/16 -p tcp -m tcp --dport 22${tail}`), v4);
    const v6 = renderer.render(plan, "ipv6");
    assert.ok(v6.includes(`-A OUTPUT -d 2001:db8::/32 -p udp -m multiport --dports 1:65535${tail}`), v6);
    texts.push({ name: `${policy} ranges ipv4`, family: "ipv4", text: v4 });
    texts.push({ name: `${policy} ranges ipv6`, family: "ipv6", text: v6 });
  }
  await assertKernelAccepts(texts);
});

Deno.test("render: protect writes no reject rule when every key is allowed", async () => {
  const plan = planFor({ policy: "protect", acls: ["db", "web"], container: CONTAINER });
  const texts: { name: string; family: Family; text: string }[] = [];
  for (const family of ["ipv4", "ipv6"] as const) {
    const text = renderer.render(plan, family);
    assert.ok(!text.includes("# protected:"), text);
    // No destination rule: only the guards' loopback accept has an address.
    assert.ok(!/^-A OUTPUT -d (?!127\.0\.0\.0\/8 |::1\/128 )/m.test(text), text);
    assert.match(text, /# allowed: db\n# allowed: web\nCOMMIT\n$/);
    texts.push({ name: `all allowed ${family}`, family, text });
  }
  await assertKernelAccepts(texts);
});

// ---------------------------------------------------------------------------------------------------
// checkRendered

Deno.test("render: checkRendered accepts one *filter ending in one COMMIT", () => {
  checkRendered(CLEAR_TEXT, "x");
  checkRendered(
    "# c\n\n*filter\n  \n-A OUTPUT -j ACCEPT\n# COMMIT in a comment\n  COMMIT  \n\n# done\n",
    "x",
  );
  for (const text of Object.values(EXPECTED)) checkRendered(text, "x");
});

Deno.test("render: checkRendered refuses other tables, extra or missing COMMITs, NUL bytes", () => {
  const table = /^template t\.eta rendered an unusable rule set: it must write exactly one table, \*filter$/;
  const commit = /^template t\.eta rendered an unusable rule set: it must end with a single COMMIT$/;
  const cases: [string, RegExp][] = [
    ["*nat\n-A OUTPUT -j ACCEPT\nCOMMIT\n", table],
    ["*filter\nCOMMIT\n*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n", table],
    ["*filter\n*filter\nCOMMIT\n", table],
    ["*raw\nCOMMIT\n", table],
    ["", table],
    ["-A OUTPUT -j ACCEPT\nCOMMIT\n", table],
    ["*filter\n-A OUTPUT -j ACCEPT\nCOMMIT\nCOMMIT\n", commit],
    ["*filter\nCOMMIT\n-A OUTPUT -j ACCEPT\nCOMMIT\n", commit],
    ["*filter\n-A OUTPUT -j ACCEPT\n", commit],
    ["*filter\nCOMMIT\n-A OUTPUT -j ACCEPT\n", commit],
    ["*filter\n-A OUTPUT -j ACCEPT\ncommit\n", commit],
    ["*filter\n# \0\nCOMMIT\n", /it contains a NUL byte$/],
  ];
  for (const [text, want] of cases) {
    assert.throws(() => checkRendered(text, "template t.eta"), (err: unknown) => {
      assert.ok(err instanceof TemplateError, JSON.stringify(text));
      assert.equal(err.exitCode, 1);
      assert.match(err.message, want, JSON.stringify(text));
      return true;
    });
  }
});

// ---------------------------------------------------------------------------------------------------
// Custom templates

async function withTemplate<T>(source: string, fn: (path: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "egt-tpl-" });
  const path = join(dir, "custom.eta");
  try {
    await Deno.writeTextFile(path, source);
    return await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const CUSTOM = `# ctx <%= JSON.stringify(it) %>
# family <%= it.family %>, policy <%= it.policy %>, version <%= it.version %>
*filter
:OUTPUT ACCEPT [0:0]
<% for (const acl of it.allowed) { for (const d of acl.destinations) { -%>
-A OUTPUT -d <%= d.cidr %> <%= d.match %> -j ACCEPT
<% } } -%>
<% for (const acl of it.protected) { for (const d of acl.destinations) { -%>
-A OUTPUT -d <%= d.cidr %> <%= d.match %> -j <%= it.reject[d.proto] %>
<% } } -%>
-A OUTPUT -j <%= it.reject.other %>
COMMIT
`;

Deno.test("render: a custom template gets the same context, for every policy", async () => {
  await withTemplate(CUSTOM, async (path) => {
    const set = await loadTemplates(path);
    assert.deepEqual(set.custom, { path, source: CUSTOM });
    const custom = new Renderer(set, VERSION);
    const texts: { name: string; family: Family; text: string }[] = [];
    for (const policy of ["protect", "allowlist"] as const) {
      const plan = planFor({ policy, acls: ["web"], container: CONTAINER });
      for (const family of ["ipv4", "ipv6"] as const) {
        const text = custom.render(plan, family);
        const ctx: TemplateContext = JSON.parse(text.split("\n")[0].slice("# ctx ".length));
        assert.deepEqual(ctx, JSON.parse(JSON.stringify(templateContext(plan, family, VERSION))));
        assert.equal(ctx.family, family);
        assert.equal(ctx.policy, policy);
        assert.equal(ctx.version, VERSION);
        assert.deepEqual(ctx.acls, ["web"]);
        assert.deepEqual(ctx.allowed.map((a) => a.key), ["web"]);
        assert.deepEqual(ctx.protected.map((a) => a.key), ["db"]);
        assert.deepEqual(ctx.container, CONTAINER);
        assert.equal(text.split("\n")[1], `# family ${family}, policy ${policy}, version ${VERSION}`);
        texts.push({ name: `custom ${policy} ${family}`, family, text });
      }
    }
    const v4 = texts[0].text;
    assert.ok(v4.includes("-A OUTPUT -d 10.0.0.0/8 -p tcp -m tcp --dport 80 -j ACCEPT\n"));
    assert.ok(
      v4.includes(
        "-A OUTPUT -d 192.168.1.0/24 -p udp -m multiport --dports 1000:2000 -j REJECT --reject-with icmp-port-unreachable\n",
      ),
    );
    await assertKernelAccepts(texts);
  });
});

Deno.test("render: the template context, field by field", () => {
  const plan = planFor({ policy: "protect", acls: ["web", "gone"], container: CONTAINER });
  const ctx = templateContext(plan, "ipv6", "9.9.9");
  assert.deepEqual(ctx, {
    version: "9.9.9",
    family: "ipv6",
    policy: "protect",
    container: CONTAINER,
    acls: ["web", "gone"],
    missing: ["gone"],
    allowed: [{
      key: "web",
      destinations: [{
        family: "ipv6",
        cidr: "2001:db8::/32",
        proto: "tcp",
        ports: { from: 443, to: 443 },
        origin: "[2001:db8::]/32:tcp/443",
        match: "-p tcp -m tcp --dport 443",
      }],
      names: [],
      log: null,
    }],
    protected: [{
      key: "db",
      destinations: [{
        family: "ipv6",
        cidr: "fd00::/8",
        proto: "tcp",
        ports: { from: 5432, to: 5432 },
        origin: "[fd00::]/8:tcp/5432",
        match: "-p tcp -m tcp --dport 5432",
      }],
      names: [],
      log: chain("db", "egt-log-k0", TAG.db),
    }],
    dnsResolvers: ["fd00::53/128"],
    reject: {
      tcp: "REJECT --reject-with tcp-reset",
      udp: "REJECT --reject-with icmp6-port-unreachable",
      other: "REJECT --reject-with icmp6-port-unreachable",
    },
    drop: "DROP",
    audit: false,
    steered: false,
    log: {
      chains: [
        chain("dns-guard", "egt-log-dns", TAG.dns),
        chain("ntp", "egt-log-ntp", TAG.ntp),
        chain("db", "egt-log-k0", TAG.db),
      ],
      allowlist: null,
      dnsGuard: chain("dns-guard", "egt-log-dns", TAG.dns),
      ntp: chain("ntp", "egt-log-ntp", TAG.ntp),
    },
  });
  assert.equal(templateContext(plan, "ipv4", "1").reject.udp, "REJECT --reject-with icmp-port-unreachable");
});

/** A log chain as the context has it, for container CONTAINER, enforcing. */
function chain(label: string, name: string, tag: string) {
  const prefix = `egt:3f2a9c1b7d4e:${tag}:D `;
  return { label, chain: name, prefix, rule: logRule(name, tag).trimEnd() };
}

Deno.test("render: audit mode renders the same rules, every refusal an ACCEPT after its log jump", async () => {
  const texts: { name: string; family: Family; text: string }[] = [];
  for (const policy of ["protect", "allowlist"] as const) {
    const enforcing = planFor({ policy, acls: ["web", "gone"], container: CONTAINER });
    const plan = { ...enforcing, audit: true };
    for (const family of ["ipv4", "ipv6"] as const) {
      const text = renderer.render(plan, family);
      const want = EXPECTED[`${policy} ${family}`]
        .replace(
          "# acls: web,gone\n# missing acls: gone\n",
          "$&# AUDIT MODE: nothing is refused; every connection these rules would refuse is logged and accepted.\n",
        )
        .replace("about to be refused are logged", "about to be accepted in audit mode are logged")
        .replace("everything else is logged and refused", "everything else is logged and accepted (audit)")
        .replaceAll(/:D "/g, ':A "')
        .replaceAll(/-j (REJECT --reject-with \S+|DROP)$/gm, "-j ACCEPT");
      assert.equal(text, want, `${policy} ${family}`);
      assert.ok(!/REJECT|DROP/.test(text.replace(/^#.*$/gm, "")), text);
      texts.push({ name: `audit ${policy} ${family}`, family, text });
    }
  }
  const ctx = templateContext(
    { ...planFor({ policy: "allowlist", acls: [] }), audit: true },
    "ipv4",
    VERSION,
  );
  assert.deepEqual([ctx.audit, ctx.reject.tcp, ctx.reject.udp, ctx.drop], [
    true,
    "ACCEPT",
    "ACCEPT",
    "ACCEPT",
  ]);
  await assertKernelAccepts(texts);
});

Deno.test("render: --deny-log off renders no log chains and no jumps; deny-all logs as deny-all", async () => {
  const off = { ...planFor({ policy: "protect", acls: ["web"], container: CONTAINER }), denyLog: false };
  const text = renderer.render(off, "ipv4");
  assert.ok(!text.includes("egt-log"), text);
  assert.ok(!text.includes("LOG"), text);
  const denyAll = { ...planFor({ policy: "allowlist", acls: [], container: CONTAINER }), denyAll: true };
  const d4 = renderer.render(denyAll, "ipv4");
  assert.ok(d4.includes(`--log-prefix "egt:3f2a9c1b7d4e:4f79b6cd:D "`), d4);
  await assertKernelAccepts([{ name: "no log", family: "ipv4", text }, {
    name: "deny-all",
    family: "ipv4",
    text: d4,
  }]);
});

Deno.test("render: a custom template that throws, does not compile, or writes *nat names its file", async () => {
  const plan = planFor({ policy: "protect", acls: ["web"] });
  await withTemplate(`*filter\n<% throw new Error("boom from template") %>\nCOMMIT\n`, async (path) => {
    const r = new Renderer(await loadTemplates(path), VERSION);
    assert.throws(() => r.render(plan, "ipv4"), (err: unknown) => {
      assert.ok(err instanceof TemplateError);
      assert.equal(err.exitCode, 1);
      assert.ok(err.message.startsWith(`template ${path} failed: `), err.message);
      assert.match(err.message, /boom from template/);
      return true;
    });
  });
  await withTemplate(`*filter\n<%= it.nope.deeper %>\nCOMMIT\n`, async (path) => {
    const r = new Renderer(await loadTemplates(path), VERSION);
    assert.throws(() => r.render(plan, "ipv6"), (err: unknown) => {
      assert.ok(err instanceof TemplateError);
      assert.ok(err.message.startsWith(`template ${path} failed: `), err.message);
      return true;
    });
  });
  await withTemplate(`*filter\n<% if ( { %>\nCOMMIT\n`, async (path) => {
    const set = await loadTemplates(path);
    assert.throws(() => new Renderer(set, VERSION), (err: unknown) => {
      assert.ok(err instanceof TemplateError);
      assert.ok(err.message.startsWith(`cannot compile template ${path}: `), err.message);
      return true;
    });
  });
  await withTemplate(`*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n`, async (path) => {
    const r = new Renderer(await loadTemplates(path), VERSION);
    assert.throws(
      () => r.render(plan, "ipv4"),
      (err: unknown) =>
        err instanceof TemplateError &&
        err.message ===
          `template ${path} rendered an unusable rule set: it must write exactly one table, *filter`,
    );
  });
  const missing = "/nonexistent/egt-template.eta";
  await assert.rejects(loadTemplates(missing), (err: unknown) => {
    assert.ok(err instanceof TemplateError);
    assert.ok(err.message.startsWith(`cannot read template ${missing}: `), err.message);
    return true;
  });
});

// ---------------------------------------------------------------------------------------------------
// Sanitising and hashing

Deno.test("render: hostile ACL names and container names from a container env become harmless comments", async () => {
  const hostile = ["web", "a\n-F", "x;rm", "$(reboot)", "`id`", "b\r\nCOMMIT", "c\u2028*nat", "d\x00e"];
  const container = { id: "abc\n-F\ndef", name: "app\n*nat" };
  const texts: { name: string; family: Family; text: string }[] = [];
  for (const policy of ["protect", "allowlist"] as const) {
    const plan = planFor({ policy, acls: hostile, container });
    const ctx = templateContext(plan, "ipv4", VERSION);
    assert.deepEqual(ctx.acls, ["web", "a?-F", "x?rm", "??reboot?", "?id?", "b??COMMIT", "c??nat", "d?e"]);
    assert.deepEqual(ctx.missing, ctx.acls.slice(1));
    assert.deepEqual(ctx.container, { id: "abc?-F?def", name: "app??nat" });
    for (const family of ["ipv4", "ipv6"] as const) {
      const text = renderer.render(plan, family);
      for (const line of text.split("\n")) {
        assert.match(
          line,
          /^(#.*|\*filter|:[A-Za-z0-9-]+ [A-Z-]+ \[0:0\]|-A [A-Za-z0-9-]+ .*|COMMIT|)$/,
          line,
        );
        // A container id that is not Docker's hex never makes it into a log prefix.
        if (line.includes("--log-prefix")) assert.match(line, /--log-prefix "egt:-:[0-9a-f]{8}:D "/, line);
      }
      assert.ok(text.includes("# container: app??nat abc?-F?def\n"), text);
      assert.ok(text.includes("# acls: web,a?-F,x?rm,??reboot?,?id?,b??COMMIT,c??nat,d?e\n"), text);
      assert.ok(text.includes("# missing acls: a?-F,x?rm,??reboot?,?id?,b??COMMIT,c??nat,d?e\n"), text);
      assert.equal(text.match(/^COMMIT$/gm)?.length, 1);
      assert.equal(text.match(/^\*/gm)?.length, 1);
      texts.push({ name: `hostile ${policy} ${family}`, family, text });
    }
  }
  await assertKernelAccepts(texts);
});

Deno.test("render: commentSafe keeps safe characters and caps the length", () => {
  assert.equal(commentSafe("team/db.v1_x-y,z@dc:1+2=3"), "team/db.v1_x-y,z@dc:1+2=3");
  assert.equal(commentSafe("a b\tc\nd#e*f'g\"h\\i"), "a?b?c?d?e?f?g?h?i");
  assert.equal(commentSafe("\u00e9\u{1f600}"), "???"); // the emoji is two UTF-16 units
  assert.equal(commentSafe("x".repeat(500)), "x".repeat(200));
});

Deno.test("render: rulesHash is stable and changes with the text", async () => {
  const a = { ipv4: EXPECTED["protect ipv4"], ipv6: EXPECTED["protect ipv6"] };
  const h = await rulesHash(a);
  assert.match(h, /^[0-9a-f]{32}$/);
  assert.equal(await rulesHash({ ...a }), h);
  assert.equal(await rulesHash({ ipv4: String(a.ipv4), ipv6: String(a.ipv6) }), h);
  const others = [
    { ipv4: a.ipv4 + "\n", ipv6: a.ipv6 },
    { ipv4: a.ipv4, ipv6: a.ipv6.replace("5432", "5433") },
    { ipv4: a.ipv6, ipv6: a.ipv4 },
    { ipv4: "", ipv6: "" },
    { ipv4: CLEAR_TEXT, ipv6: CLEAR_TEXT },
  ];
  const hashes = await Promise.all(others.map(rulesHash));
  assert.equal(new Set([h, ...hashes]).size, others.length + 1);
});

Deno.test("render: CLEAR_TEXT is accepted by both families", async () => {
  await assertKernelAccepts([
    { name: "clear ipv4", family: "ipv4", text: CLEAR_TEXT },
    { name: "clear ipv6", family: "ipv6", text: CLEAR_TEXT },
  ]);
});
