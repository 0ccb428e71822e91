/** What a container asks for, from its env (pure): opt-in, ACL list, policy and audit mode. */
import type { Policy } from "../config/config.ts";
import { parseAclList } from "./plan.ts";
import { keyProblem } from "./acl_source.ts";
import { commentSafe } from "../util/text.ts";

/** A container's request, and what was wrong with its env. */
export interface Intent {
  enabled: boolean;
  acls: string[];
  policy: Policy;
  /** EGRESSTRATOR_AUDIT=1: log what the rules would refuse and refuse nothing (=0: enforce, whatever --audit). */
  audit: boolean;
  /** Garbage env values, reported and otherwise ignored. */
  problems: string[];
}

/** Last value of each `KEY=value` entry. */
export function envMap(env: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const e of env) {
    const eq = e.indexOf("=");
    if (eq > 0) out.set(e.slice(0, eq), e.slice(eq + 1));
  }
  return out;
}

/**
 * Opt-in is `EGRESSTRATOR_ENABLE=1` exactly, as in the original tool. `defaultAudit` is `--audit`, for
 * containers that do not set EGRESSTRATOR_AUDIT themselves.
 */
export function containerIntent(env: readonly string[], defaultPolicy: Policy, defaultAudit = false): Intent {
  const vars = envMap(env);
  const problems: string[] = [];
  const enable = vars.get("EGRESSTRATOR_ENABLE");
  const enabled = enable === "1";
  if (enable !== undefined && !enabled && enable !== "0" && enable !== "") {
    problems.push(`EGRESSTRATOR_ENABLE="${commentSafe(enable)}" is not 1: not enforced`);
  }
  const acls: string[] = [];
  for (const name of parseAclList(vars.get("EGRESSTRATOR_ACL"))) {
    const bad = keyProblem(name);
    if (bad) problems.push(`EGRESSTRATOR_ACL entry "${commentSafe(name)}" ignored: ${bad}`);
    else acls.push(name);
  }
  let policy = defaultPolicy;
  const p = vars.get("EGRESSTRATOR_POLICY");
  if (p === "protect" || p === "allowlist") policy = p;
  else if (p !== undefined && p !== "") {
    problems.push(
      `EGRESSTRATOR_POLICY="${commentSafe(p)}" is not protect or allowlist: using ${defaultPolicy}`,
    );
  }
  let audit = defaultAudit;
  const a = vars.get("EGRESSTRATOR_AUDIT");
  if (a === "1" || a === "0") audit = a === "1";
  else if (a !== undefined && a !== "") {
    problems.push(
      `EGRESSTRATOR_AUDIT="${commentSafe(a)}" is not 0 or 1: ${defaultAudit ? "audit" : "enforcing"}`,
    );
  }
  return { enabled, acls, policy, audit, problems };
}
