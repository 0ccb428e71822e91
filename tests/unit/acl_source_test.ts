/** ACL sources: snapshots from raw pairs, Consul KV listings and directories. */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  ConsulAclSource,
  DirAclSource,
  keyProblem,
  type KvReader,
  MAX_VALUE_BYTES,
  normalizePrefix,
  parseEntry,
  snapshotFrom,
} from "../../src/rules/acl_source.ts";
import { ValidationError } from "../../src/errors.ts";

const enc = new TextEncoder();
const pair = (key: string, value: string | null) => ({
  key,
  value: value === null ? null : enc.encode(value),
});

Deno.test("acl_source: snapshotFrom sorts keys (by code unit) and keeps the index", () => {
  const snap = snapshotFrom(
    [
      pair("web", "10.0.0.0/8:tcp/80"),
      pair("team/db", "db"),
      pair("Zeta", ""),
      pair("a", null),
      pair("team", "# only a comment"),
      pair("a-b", "10.0.0.1:udp/53"),
    ],
    42,
  );
  assert.deepEqual(snap.entries.map((e) => e.key), ["Zeta", "a", "a-b", "team", "team/db", "web"]);
  assert.equal(snap.index, 42);
  assert.deepEqual(snap.problems, []);
  const byKey = Object.fromEntries(snap.entries.map((e) => [e.key, e]));
  assert.equal(byKey["web"].rules.length, 1);
  assert.equal(byKey["web"].rules[0].key, "web");
  assert.equal(byKey["team/db"].rules[0].kind, "service");
  assert.deepEqual(byKey["a"].rules, []); // null value: an empty key
  assert.deepEqual(byKey["team"].rules, []);
  assert.equal(snapshotFrom([]).index, undefined);
});

Deno.test("acl_source: bad key names become key problems, the other keys survive", () => {
  const long = "k".repeat(300);
  const snap = snapshotFrom([
    pair("good", "10.0.0.0/8:tcp/80"),
    pair("a b", "10.0.0.0/8:tcp/80"),
    pair("../x", "10.0.0.0/8:tcp/80"),
    pair("a\nb", "10.0.0.0/8:tcp/80"),
    pair(long, "10.0.0.0/8:tcp/80"),
    pair("team/./x", "10.0.0.0/8:tcp/80"),
    pair("team//x", "10.0.0.0/8:tcp/80"),
    pair("/abs", "10.0.0.0/8:tcp/80"),
    pair("x;rm", "10.0.0.0/8:tcp/80"),
    pair("caf\u00e9", "10.0.0.0/8:tcp/80"),
    pair("also-good", "db"),
  ]);
  assert.deepEqual(snap.entries.map((e) => e.key), ["also-good", "good"]);
  const names = 'key name may only use letters, digits, "_", "-", "." and "/"; key ignored';
  const problems = Object.fromEntries(snap.problems.map((p) => [p.key, p]));
  for (const k of ["a b", "../x", "team/./x", "team//x", "/abs", "x;rm", "caf\u00e9"]) {
    assert.deepEqual(problems[k], { key: k, line: 0, text: "", reason: names, severity: "error" }, k);
  }
  // a newline in a key name is escaped, never printed raw
  assert.deepEqual(problems["a\\x0ab"], {
    key: "a\\x0ab",
    line: 0,
    text: "",
    reason: names,
    severity: "error",
  });
  const longKey = "k".repeat(77) + "...";
  assert.deepEqual(problems[longKey], {
    key: longKey,
    line: 0,
    text: "",
    reason: "key name is longer than 256 characters; key ignored",
    severity: "error",
  });
  assert.equal(snap.problems.length, 9);
  // deno-lint-ignore no-control-regex
  for (const p of snap.problems) assert.ok(!/[\n\r\x00]/.test(p.key), p.key);
});

Deno.test("acl_source: keyProblem", () => {
  for (const ok of ["web", "team/db", "a.b", "a-b_c", "v1.2/x", "k".repeat(256), "..a", "a..b"]) {
    assert.equal(keyProblem(ok), undefined, ok);
  }
  for (const bad of ["", "a b", "..", ".", "a/..", "../x", "a/", "/a", "a\tb", "k".repeat(257), "a:b"]) {
    assert.ok(keyProblem(bad), JSON.stringify(bad));
  }
});

Deno.test("acl_source: parseEntry strips a BOM and refuses values over 1 MiB", () => {
  const bom = parseEntry("web", enc.encode("\ufeff10.0.0.0/8:tcp/80\n"));
  assert.ok("rules" in bom);
  assert.equal(bom.rules.length, 1);
  assert.deepEqual(bom.problems, []);

  assert.equal(MAX_VALUE_BYTES, 1024 * 1024);
  const atLimit = parseEntry("big", new Uint8Array(MAX_VALUE_BYTES).fill(0x23)); // one long "#..." line
  assert.ok("rules" in atLimit);
  const over = parseEntry("big", null, MAX_VALUE_BYTES + 1);
  assert.deepEqual(over, {
    key: "big",
    line: 0,
    text: "",
    reason: `value is larger than 1 MiB (${MAX_VALUE_BYTES + 1} bytes); key ignored`,
    severity: "error",
  });
  const overBytes = parseEntry("big", new Uint8Array(MAX_VALUE_BYTES + 1));
  assert.ok(!("rules" in overBytes));
});

/** A fake KV reader that records its calls. */
function fakeKv(data: { key: string; value: Uint8Array | null }[], index: number) {
  const calls: { prefix: string; signal?: AbortSignal }[] = [];
  const kv: KvReader = {
    kvTree(prefix, q) {
      calls.push({ prefix, signal: q?.signal });
      return Promise.resolve({ data, index });
    },
  };
  return { kv, calls };
}

Deno.test("acl_source: ConsulAclSource strips the prefix and skips folder keys", async () => {
  const data = [
    pair("egress/acl/", null),
    pair("egress/acl/team/", null),
    pair("egress/acl/web", "10.0.0.0/8:tcp/80"),
    pair("egress/acl/team/db", "db\n[::1]:tcp/5432"),
    pair("egress/aclother", "10.0.0.0/8:tcp/81"),
    pair("other/acl/web", "10.0.0.0/8:tcp/82"),
  ];
  const { kv, calls } = fakeKv(data, 7);
  const src = new ConsulAclSource(kv, "/egress/acl");
  assert.equal(src.prefix, "egress/acl/");
  assert.equal(src.description, "consul kv egress/acl/");
  assert.equal(src.hasCatalog, true);

  const direct = src.fromKv(data, 3);
  assert.deepEqual(direct.entries.map((e) => e.key), ["team/db", "web"]);
  assert.equal(direct.index, 3);
  assert.deepEqual(direct.entries[0].rules.map((r) => r.key), ["team/db", "team/db"]);

  const ctl = new AbortController();
  const snap = await src.read(ctl.signal);
  assert.deepEqual(calls, [{ prefix: "egress/acl/", signal: ctl.signal }]);
  assert.equal(snap.index, 7);
  assert.deepEqual(snap.entries.map((e) => e.key), ["team/db", "web"]);
  assert.deepEqual(snap.problems, []);

  // the root prefix keeps whole keys
  const root = new ConsulAclSource(kv, "");
  assert.deepEqual(root.fromKv([pair("a/b", "db"), pair("a/", null)]).entries.map((e) => e.key), ["a/b"]);
});

Deno.test("acl_source: normalizePrefix", () => {
  const cases: [string, string][] = [
    ["egress/acl", "egress/acl/"],
    ["egress/acl/", "egress/acl/"],
    ["/egress/acl", "egress/acl/"],
    ["///egress/acl/", "egress/acl/"],
    ["", ""],
    ["/", ""],
    ["x", "x/"],
  ];
  for (const [input, want] of cases) assert.equal(normalizePrefix(input), want, input);
});

Deno.test("acl_source: DirAclSource reads nested files, skips hidden ones, reports oversized files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "egt-acl-" });
  try {
    await Deno.mkdir(join(dir, "team/inner"), { recursive: true });
    await Deno.mkdir(join(dir, ".git"));
    await Deno.writeTextFile(join(dir, "web"), "10.0.0.0/8:tcp/80\n");
    await Deno.writeTextFile(join(dir, "team/db"), "[2001:db8::]/32:tcp/5432\nbad line\n");
    await Deno.writeTextFile(join(dir, "team/inner/cache"), "10.1.0.0/16:udp/11211\n");
    await Deno.writeTextFile(join(dir, ".hidden"), "10.9.0.0/16:tcp/1\n");
    await Deno.writeTextFile(join(dir, ".git/config"), "10.9.0.0/16:tcp/2\n");
    await Deno.writeTextFile(join(dir, "web~"), "10.9.0.0/16:tcp/3\n");
    await Deno.writeFile(join(dir, "huge"), new Uint8Array(MAX_VALUE_BYTES + 1).fill(0x23));
    await Deno.writeTextFile(join(dir, "with space"), "10.0.0.0/8:tcp/80\n");

    const src = new DirAclSource(dir);
    assert.equal(src.hasCatalog, false);
    assert.equal(src.description, `directory ${dir}`);
    const snap = await src.read();
    assert.deepEqual(snap.entries.map((e) => e.key), ["team/db", "team/inner/cache", "web"]);
    assert.equal(snap.index, undefined);
    const db = snap.entries[0];
    assert.equal(db.rules.length, 1);
    assert.deepEqual(db.problems.map((p) => [p.key, p.line, p.text]), [["team/db", 2, "bad line"]]);
    assert.deepEqual(snap.problems.map((p) => [p.key, p.reason]), [
      ["huge", `value is larger than 1 MiB (${MAX_VALUE_BYTES + 1} bytes); key ignored`],
      ["with space", 'key name may only use letters, digits, "_", "-", "." and "/"; key ignored'],
    ]);

    const ctl = new AbortController();
    ctl.abort(new Error("stop"));
    await assert.rejects(src.read(ctl.signal), /stop/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("acl_source: DirAclSource on a missing dir or a file is a ValidationError", async () => {
  const dir = await Deno.makeTempDir({ prefix: "egt-acl-" });
  try {
    const missing = join(dir, "nope");
    await assert.rejects(new DirAclSource(missing).read(), (err: unknown) => {
      assert.ok(err instanceof ValidationError);
      assert.equal(err.exitCode, 2);
      assert.match(err.message, new RegExp(`^--acl-dir ${missing} cannot be read: `));
      return true;
    });
    const file = join(dir, "file");
    await Deno.writeTextFile(file, "");
    await assert.rejects(new DirAclSource(file).read(), (err: unknown) => {
      assert.ok(err instanceof ValidationError);
      assert.equal(err.message, `--acl-dir ${file} is not a directory`);
      return true;
    });
    // an empty directory is fine: no keys; an empty file is a key without rules
    await Deno.mkdir(join(dir, "empty"));
    assert.deepEqual(await new DirAclSource(join(dir, "empty")).read(), {
      entries: [],
      problems: [],
      index: undefined,
    });
    assert.deepEqual(await new DirAclSource(dir).read().then((s) => s.entries), [{
      key: "file",
      rules: [],
      problems: [],
    }]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
