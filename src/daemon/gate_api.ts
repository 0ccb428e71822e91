/**
 * The runtime gate's endpoints on the daemon (unix socket only). `/v1/gate/enforce` does the whole job
 * for a created container with the daemon's warm caches and applier: the gate's fast path.
 * `/v1/gate/render` answers a container's rules, `/v1/gate/applied` adopts what the gate applied itself,
 * so the start event applies nothing.
 */
import type { Reconciler } from "./reconcile.ts";
import type { GateApplied } from "./state.ts";
import { type BuildDeps, buildRules, countRules, denyPlan } from "../render/build.ts";
import { type RenderedRules, rulesHash } from "../render/renderer.ts";
import type { Policy } from "../config/config.ts";
import { type Applier, EMPTY_RULES } from "../apply/applier.ts";
import { containerIntent } from "../rules/intent.ts";
import { describeError } from "../errors.ts";
import { dnsApplied, type DnsSteering, withDns } from "../apply/enforce.ts";

function isStrings(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === "string");
}

/** `/v1/gate/render`: a container's rules from the warm caches, for the runtime gate. */
export async function gateRender(deps: Parameters<typeof buildRules>[0], body: unknown, signal: AbortSignal) {
  const b = body as { id?: unknown; env?: unknown };
  if (typeof b.id !== "string" || !/^[0-9a-f]{12,64}$/.test(b.id) || !isStrings(b.env)) {
    return Response.json({ error: "body must be {id: <container id>, env: [KEY=value...]}" }, {
      status: 400,
    });
  }
  const intent = containerIntent(b.env, deps.config.policy, deps.config.audit);
  if (!intent.enabled) return Response.json({ error: "container does not opt in" }, { status: 400 });
  try {
    const want = {
      id: b.id,
      name: b.id.slice(0, 12),
      acls: intent.acls,
      policy: intent.policy,
      audit: intent.audit,
    };
    const built = await buildRules(deps, want, AbortSignal.any([signal, AbortSignal.timeout(5000)]));
    const { rendered, ...rest } = built;
    return Response.json({ ...rest, ipv4: rendered.ipv4, ipv6: rendered.ipv6 });
  } catch (err) {
    return Response.json({ error: describeError(err) }, { status: 503 });
  }
}

/** `/v1/gate/applied`: the gate applied rules before start; adopt them so the start event applies nothing. */
export function gateApplied(reconciler: Reconciler, body: unknown): Response {
  const b = body as Partial<GateApplied>;
  const ok = typeof b.id === "string" && typeof b.hash === "string" && isStrings(b.acls) &&
    (b.policy === "protect" || b.policy === "allowlist") && typeof b.ruleCount === "number" &&
    typeof b.denied === "boolean" && (b.audit === undefined || typeof b.audit === "boolean") &&
    (b.pid === undefined || (Number.isInteger(b.pid) && b.pid > 0));
  if (!ok) return Response.json({ error: "bad gate report" }, { status: 400 });
  reconciler.adopt(b as GateApplied);
  return new Response(null, { status: 204 });
}

/** What `/v1/gate/enforce` needs. */
export interface GateEnforceDeps extends BuildDeps {
  /** The daemon's applier, when it can reach a created container (nsenter); absent in helper mode. */
  applier?: Applier;
  reconciler: Reconciler;
  dns?: DnsSteering;
}

/** A created container to enforce: its id, its init's pid, its env, and what to do when rules are not to be had. */
export interface CreatedContainer {
  id: string;
  pid: number;
  env: string[];
  /** `deny`: deny-all (built-in templates) when the rules cannot be built; `error`: report the failure. */
  onFailure: "deny" | "error";
  /** Runc just made its namespace: no raw table to empty (false for a namespace given as a path). */
  unstarted?: boolean;
  /** Fail, rather than apply, rules that use DNS names (the shim's hook: see gate_shim.ts). */
  withoutNames?: boolean;
  /** How long building and applying may take (default 5 s). */
  deadlineMs?: number;
}

/** Build (or deny-all), apply and adopt; the adopted report, or why not. */
export async function enforceCreated(
  deps: GateEnforceDeps & { applier: Applier },
  c: CreatedContainer,
  signal: AbortSignal,
): Promise<{ report: GateApplied } | { error: string; status: number }> {
  const intent = containerIntent(c.env, deps.config.policy, deps.config.audit);
  if (!intent.enabled) return { error: "container does not opt in", status: 400 };
  // The pid must be the container's (its cgroup names the id): never apply to an arbitrary process.
  const cgroup = await Deno.readTextFile(`/proc/${c.pid}/cgroup`).catch(() => "");
  if (!cgroup.includes(c.id)) {
    return { error: `pid ${c.pid} is not in container ${c.id.slice(0, 12)}`, status: 400 };
  }
  let deadline = AbortSignal.any([signal, AbortSignal.timeout(c.deadlineMs ?? 5000)]);
  const want = {
    id: c.id,
    name: c.id.slice(0, 12),
    acls: intent.acls,
    policy: intent.policy,
    audit: intent.audit,
  };
  let rules: {
    rendered: RenderedRules;
    hash: string;
    acls: string[];
    policy: Policy;
    audit: boolean;
    ruleCount: number;
  };
  let denied = false;
  let fqdn: string[] = [];
  try {
    const built = await buildRules(deps, want, deadline);
    if (c.withoutNames && built.fqdn.length > 0) {
      return { error: "rules by DNS name go in after the create", status: 409 };
    }
    rules = { ...built, ...await withDns(deps, { id: c.id, name: want.name, pid: c.pid }, built) };
    fqdn = built.fqdn;
  } catch (err) {
    if (c.onFailure !== "deny") return { error: `no rules could be had: ${describeError(err)}`, status: 503 };
    // The build may have used up the deadline: deny-all gets a short one of its own.
    if (deadline.aborted) deadline = AbortSignal.any([signal, AbortSignal.timeout(3000)]);
    const rendered = (deps.denyRenderer ?? deps.renderer()).renderAll(
      denyPlan(deps.config, want, want.audit),
    );
    rules = {
      rendered,
      hash: await rulesHash(rendered),
      acls: [],
      policy: "allowlist",
      audit: want.audit,
      ruleCount: countRules(rendered),
    };
    denied = true;
  }
  try {
    // Just created: nothing is in its namespace yet, so a failed family rolls back to empty tables,
    // and no raw table needs emptying.
    await deps.applier.apply(
      { id: c.id, name: want.name, pid: c.pid },
      rules.rendered,
      deadline,
      EMPTY_RULES,
      c.unstarted ?? true,
    );
  } catch (err) {
    return { error: `rules could not be applied: ${describeError(err)}`, status: 500 };
  }
  dnsApplied(deps, c.id, { fqdn });
  const report: GateApplied = {
    id: c.id,
    hash: rules.hash,
    acls: rules.acls,
    policy: rules.policy,
    audit: rules.audit,
    ruleCount: rules.ruleCount,
    denied,
    pid: c.pid,
  };
  deps.reconciler.adopt(report, rules.rendered);
  return { report };
}

/** The gate's fast path: build and apply the rules of a created container, and adopt them. */
export async function gateEnforce(
  deps: GateEnforceDeps,
  body: unknown,
  signal: AbortSignal,
): Promise<Response> {
  const b = body as { id?: unknown; pid?: unknown; env?: unknown; unstarted?: unknown };
  if (
    typeof b.id !== "string" || !/^[0-9a-f]{12,64}$/.test(b.id) || !isStrings(b.env) ||
    typeof b.pid !== "number" || !Number.isInteger(b.pid) || b.pid <= 0
  ) {
    return Response.json({ error: "body must be {id, pid, env: [KEY=value...]}" }, { status: 400 });
  }
  // A helper container cannot join a namespace whose container is only created: the gate applies itself.
  if (!deps.applier) {
    return Response.json({ error: "the daemon does not apply with nsenter" }, { status: 501 });
  }
  const out = await enforceCreated(
    { ...deps, applier: deps.applier },
    { id: b.id, pid: b.pid, env: b.env, onFailure: "error", unstarted: b.unstarted !== false },
    signal,
  );
  return "report" in out
    ? Response.json(out.report)
    : Response.json({ error: out.error }, { status: out.status });
}
