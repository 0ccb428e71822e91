// intent.ts, metrics.ts, status table, apply payload helpers.
import assert from "node:assert/strict";
import { containerIntent, envMap } from "../../src/rules/intent.ts";
import { ENFORCE_BUCKETS, Metrics } from "../../src/daemon/metrics.ts";
import { formatStatus } from "../../src/cli/commands/status.ts";
import { applyPayload, chunkEnv, normalizeSaved, RAW_TEXT, splitRead } from "../../src/apply/applier.ts";

Deno.test("containerIntent: opt-in is exactly 1; lists trimmed; bad names and policies reported", () => {
  assert.equal(containerIntent(["EGRESSTRATOR_ENABLE=1"], "protect").enabled, true);
  for (const v of ["true", "yes", "01"]) {
    const i = containerIntent([`EGRESSTRATOR_ENABLE=${v}`], "protect");
    assert.equal(i.enabled, false);
    assert.match(i.problems[0], /is not 1/);
  }
  assert.deepEqual(containerIntent(["EGRESSTRATOR_ENABLE=0"], "protect").problems, []);
  const i = containerIntent(
    ["EGRESSTRATOR_ENABLE=1", "EGRESSTRATOR_ACL= a,, b ,$(x),a\n-F", "EGRESSTRATOR_POLICY=bogus"],
    "allowlist",
  );
  assert.deepEqual(i.acls, ["a", "b"]);
  assert.equal(i.policy, "allowlist");
  assert.equal(i.problems.length, 3);
  assert.ok(i.problems.every((p) => !p.includes("\n")), "problems are one line each");
  assert.equal(containerIntent(["EGRESSTRATOR_POLICY=allowlist"], "protect").policy, "allowlist");
  assert.equal(envMap(["A=1", "A=2", "B==x", "junk"]).get("A"), "2");
  assert.equal(envMap(["B==x"]).get("B"), "=x");
});

Deno.test("Metrics renders counters, gauges and histograms in Prometheus text", () => {
  const m = new Metrics();
  m.inc("x_total", "X", { mode: "nsenter" });
  m.inc("x_total", "X", { mode: "nsenter" }, 2);
  m.set("g", "G", 5);
  m.observe("h_seconds", "H", 0.03, ENFORCE_BUCKETS, { mode: 'a"b' });
  const text = m.render();
  assert.match(text, /# TYPE x_total counter\nx_total\{mode="nsenter"\} 3/);
  assert.match(text, /\ng 5\n/);
  assert.match(text, /h_seconds_bucket\{mode="a\\"b",le="0.025"\} 0/);
  assert.match(text, /h_seconds_bucket\{mode="a\\"b",le="0.05"\} 1/);
  assert.match(text, /h_seconds_count\{mode="a\\"b"\} 1/);
  assert.equal(m.get("x_total", { mode: "nsenter" }), 3);
});

Deno.test("formatStatus prints a header and one row per container, sorted by name", () => {
  const text = formatStatus({
    version: "0.3.0",
    mode: "nsenter",
    policy: "protect",
    source: "consul kv egress/acl/",
    ipv6: true,
    watches: 3,
    docker: { connected: true },
    consul: { errors: 0 },
    unfiltered: 1,
    containers: [
      {
        id: "b".repeat(64),
        name: "web",
        acls: ["db"],
        policy: "protect",
        ruleCount: 12,
        hash: "abc",
        denied: false,
        unfiltered: false,
      },
      {
        id: "a".repeat(64),
        name: "api",
        acls: [],
        policy: "allowlist",
        ruleCount: 4,
        denied: true,
        unfiltered: false,
        lastError: "x",
      },
      {
        id: "d".repeat(64),
        name: "rollout",
        acls: ["db"],
        policy: "allowlist",
        ruleCount: 9,
        denied: false,
        unfiltered: false,
        audit: true,
        deniedCount: 7,
        lastApplied: "2026-01-01T00:00:00.000Z",
      },
      {
        id: "c".repeat(64),
        name: "zed",
        acls: ["db"],
        policy: "protect",
        ruleCount: 0,
        denied: false,
        unfiltered: true,
        lastError: "deny-all failed too",
      },
    ],
  });
  const lines = text.trim().split("\n");
  assert.match(lines[0], /3 watches, docker connected, 3 containers enforced, 1 UNFILTERED/);
  assert.match(lines[1], /^CONTAINER\s+NAME/);
  assert.match(lines[2], /^aaaaaaaaaaaa\s+api\s+deny-all\s+-\s+4/);
  assert.match(lines[4], /^bbbbbbbbbbbb\s+web\s+protect\s+db\s+12/);
  assert.match(
    lines[3],
    /^dddddddddddd\s+rollout\s+allowlist \(audit\)\s+db\s+9\s+-\s+2026-01-01T00:00:00\.000Z\s+7$/,
  );
  assert.match(lines[5], /^cccccccccccc\s+zed\s+UNFILTERED\s+db\s+0\s.*deny-all failed too$/);
});

Deno.test("applyPayload chunks big texts; the script saves ipv4 before any write and rolls it back", () => {
  const big = "x".repeat(150 * 1024);
  assert.equal(Object.keys(chunkEnv("4", big)).length, 3);
  const { env, script } = applyPayload({ ipv4: big, ipv6: "small" });
  assert.equal(Object.keys(env).length, 5, "three ipv4 chunks, one ipv6, and the raw table");
  assert.equal(env.EGTRAW, RAW_TEXT);
  assert.equal(env.EGT4_0 + env.EGT4_1 + env.EGT4_2, big);
  // Without a known previous text: a save of ipv4 first, then one restore per family, no --test, no read.
  const lines = script.split("\n");
  assert.equal(lines.length, 3);
  assert.match(lines[0], /^old4=\$\(iptables-save -t filter\) \|\| exit 5$/);
  assert.match(lines[1], /\| iptables-restore -w 5 \|\|/);
  assert.match(
    lines[2],
    /\| ip6tables-restore -w 5 \|\| \{ printf '%s\\n' "\$old4" \| iptables-restore -w 5;/,
  );
  assert.ok(!script.includes("--test") && !script.includes("-save -t raw"), "no --test runs, no read-back");
  // With one: no save, the rollback text travels in the env.
  const known = applyPayload({ ipv4: "a", ipv6: "b" }, true, { ipv4: "p4", ipv6: "p6" });
  assert.ok(!known.script.includes("iptables-save"));
  assert.equal(known.env.EGTP4_0, "p4");
  assert.match(
    known.script,
    /printf '%s' "\$EGTP4_0" "\$EGTRAW" \| iptables-restore -w 5; echo "egresstrator: ipv6/,
  );
  assert.equal(applyPayload({ ipv4: "a", ipv6: "b" }, false).script.split("\n").length, 1, "IPv4 alone");
  // A namespace no code of the container has run in (the gate): its raw table is left alone.
  const fresh = applyPayload({ ipv4: "a", ipv6: "b" }, true, { ipv4: "p4", ipv6: "p6" }, true);
  assert.equal(fresh.env.EGTRAW, undefined);
  assert.ok(!fresh.script.includes("EGTRAW"), fresh.script);
  assert.match(fresh.script, /^printf '%s' "\$EGT4_0" \| iptables-restore -w 5 \|\|/);
});

Deno.test("normalizeSaved ignores comments, counters and blank lines; splitRead splits families", () => {
  const a =
    "# Generated by iptables-save v1.8.9 on Tue\n*filter\n:INPUT ACCEPT [12:345]\n-A OUTPUT -j ACCEPT\nCOMMIT\n";
  const b =
    "# Generated at another time\n*filter\n:INPUT ACCEPT [0:0]\n\n-A OUTPUT -j ACCEPT\nCOMMIT\n# Completed\n";
  assert.equal(normalizeSaved(a), normalizeSaved(b));
  assert.notEqual(normalizeSaved(a), normalizeSaved(a.replace("ACCEPT\nCOMMIT", "DROP\nCOMMIT")));
  // `iptables-save -c` (what drift checks read, for the deny log's counters) puts counters before rules.
  assert.equal(normalizeSaved(a.replace("-A OUTPUT", "[1234:56789] -A OUTPUT")), normalizeSaved(b));
  assert.deepEqual(splitRead("v4\n#--egresstrator-ipv6--\nv6\n"), { ipv4: "v4\n", ipv6: "v6\n" });
});

Deno.test("kernelHasIPv6: only a missing /proc/sys/net/ipv6 means no IPv6; an unreadable one fails closed", async () => {
  const { kernelHasIPv6 } = await import("../../src/apply/applier.ts");
  assert.equal(kernelHasIPv6(() => true), true);
  assert.equal(kernelHasIPv6(() => false), false);
  assert.equal(kernelHasIPv6(), true, "this machine has IPv6");
  // Where /proc may not be read (a permission flag short of it), the answer is still "IPv6 is there".
  const url = new URL("../../src/apply/applier.ts", import.meta.url).href;
  const dir = await Deno.makeTempDir();
  const script = `${dir}/probe.ts`;
  await Deno.writeTextFile(
    script,
    `const m = await import(${JSON.stringify(url)}); console.log(m.kernelHasIPv6());\n`,
  );
  const repo = new URL("../../", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", `--allow-read=${repo},${dir}`, "--config", `${repo}deno.json`, script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  await Deno.remove(dir, { recursive: true });
  assert.equal(new TextDecoder().decode(out.stdout).trim(), "true", new TextDecoder().decode(out.stderr));
});
