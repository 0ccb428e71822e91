/** Which enforced containers a rule change can touch, and which services they need (pure). */
import type { RuleChange } from "../rules/change.ts";
import type { AclSnapshot } from "../rules/acl_source.ts";
import { serviceKey } from "../rules/services.ts";
import type { Policy } from "../config/config.ts";
import { usesKey } from "../rules/plan.ts";

/** What the decision needs to know of a container. */
export interface Enforced {
  id: string;
  acls: string[];
  policy: Policy;
  /** Holding deny-all or failing: any change may be the one that fixes it. */
  unsettled: boolean;
}

function uses(c: Enforced, key: string): boolean {
  return usesKey(c.policy, c.acls, key);
}

/** Containers whose rendered text may differ after `change`. */
export function affectedBy(change: RuleChange, containers: Iterable<Enforced>): string[] {
  const out: string[] = [];
  for (const c of containers) {
    const hit = c.unsettled ||
      [...change.changed].some((k) => uses(c, k)) ||
      // A key that comes or goes also changes the comments (allowed/missing) of a container listing it.
      [...change.addedOrRemoved].some((k) => uses(c, k) || c.acls.includes(k));
    if (hit) out.push(c.id);
  }
  return out;
}

/** Services named by keys that some enforced container uses: the service watches worth keeping. */
export function neededServices(snapshot: AclSnapshot, containers: Iterable<Enforced>): Set<string> {
  const list = [...containers];
  const out = new Set<string>();
  for (const e of snapshot.entries) {
    if (!list.some((c) => c.unsettled || uses(c, e.key))) continue;
    for (const r of e.rules) if (r.kind === "service") out.add(serviceKey(r));
  }
  return out;
}
