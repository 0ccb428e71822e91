/** What changed between two ACL snapshots, by key (pure): the unit a live update is reported in. */
import type { AclSnapshot } from "./acl_source.ts";
import { serviceKey } from "./services.ts";

/** Keys whose content changed (`changed`) or that came or went (`addedOrRemoved`). */
export interface RuleChange {
  changed: Set<string>;
  addedOrRemoved: Set<string>;
}

/** Which keys differ between two snapshots. */
export function diffSnapshots(a: AclSnapshot | undefined, b: AclSnapshot): RuleChange {
  const before = new Map((a?.entries ?? []).map((e) => [e.key, JSON.stringify(e.rules)]));
  const after = new Map(b.entries.map((e) => [e.key, JSON.stringify(e.rules)]));
  const change: RuleChange = { changed: new Set(), addedOrRemoved: new Set() };
  for (const [k, v] of after) {
    if (!before.has(k)) change.addedOrRemoved.add(k);
    else if (before.get(k) !== v) change.changed.add(k);
  }
  for (const k of before.keys()) if (!after.has(k)) change.addedOrRemoved.add(k);
  return change;
}

/** Keys whose rules name a service. */
export function keysNaming(snapshot: AclSnapshot, key: string): Set<string> {
  return new Set(
    snapshot.entries
      .filter((e) => e.rules.some((r) => r.kind === "service" && serviceKey(r) === key))
      .map((e) => e.key),
  );
}
