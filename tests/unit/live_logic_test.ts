// Pure parts of the live-rules path: snapshot diffs, who a change affects, which services to watch.
import assert from "node:assert/strict";
import { diffSnapshots, keysNaming } from "../../src/rules/change.ts";
import { affectedBy, type Enforced, neededServices } from "../../src/daemon/affected.ts";
import { snapshotFrom } from "../../src/rules/acl_source.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const snap = (kv: Record<string, string>) =>
  snapshotFrom(Object.entries(kv).map(([key, v]) => ({ key, value: enc(v) })));

Deno.test("diffSnapshots: changed, added and removed keys; comment-only edits are no change", () => {
  const a = snap({ a: "10.0.0.0/8:tcp/80", b: "10.1.0.0/16:tcp/80", c: "db" });
  const b = snap({ a: "10.0.0.0/8:tcp/80 # same rule", b: "10.2.0.0/16:tcp/80", d: "web" });
  const d = diffSnapshots(a, b);
  assert.deepEqual([...d.changed], ["b"]);
  assert.deepEqual([...d.addedOrRemoved].sort(), ["c", "d"]);
  assert.deepEqual([...diffSnapshots(undefined, a).addedOrRemoved].sort(), ["a", "b", "c"]);
});

Deno.test("keysNaming finds the keys whose rules name a service", () => {
  const s = snap({ a: "prod.db\n10.0.0.0/8:tcp/1", b: "db", c: "prod.db@dc2" });
  assert.deepEqual([...keysNaming(s, "prod.db")], ["a"]);
  assert.deepEqual([...keysNaming(s, "db")], ["b"]);
});

const c = (id: string, policy: "protect" | "allowlist", acls: string[], unsettled = false): Enforced => ({
  id,
  policy,
  acls,
  unsettled,
});

Deno.test("affectedBy: protect uses keys it does not list, allowlist the keys it lists", () => {
  const list = [
    c("p1", "protect", ["k"]),
    c("p2", "protect", []),
    c("a1", "allowlist", ["k"]),
    c("a2", "allowlist", []),
  ];
  const change = { changed: new Set(["k"]), addedOrRemoved: new Set<string>() };
  assert.deepEqual(affectedBy(change, list), ["p2", "a1"]);
  const added = { changed: new Set<string>(), addedOrRemoved: new Set(["k"]) };
  assert.deepEqual(
    affectedBy(added, list),
    ["p1", "p2", "a1"],
    "a listed key coming or going changes comments",
  );
  const other = { changed: new Set(["x"]), addedOrRemoved: new Set<string>() };
  assert.deepEqual(affectedBy(other, [...list, c("u", "allowlist", [], true)]), ["p1", "p2", "u"]);
});

Deno.test("neededServices: only services named by keys some container uses", () => {
  const s = snap({ k1: "prod.db", k2: "cache", k3: "10.0.0.0/8:tcp/1" });
  assert.deepEqual([...neededServices(s, [])], []);
  assert.deepEqual([...neededServices(s, [c("a", "allowlist", ["k2"])])], ["cache"]);
  assert.deepEqual([...neededServices(s, [c("p", "protect", ["k2"])])], ["prod.db"]);
  assert.deepEqual([...neededServices(s, [c("u", "allowlist", [], true)])].sort(), ["cache", "prod.db"]);
});
