/**
 * The runtime gate's endpoints on the daemon (unix socket only). `/v1/gate/enforce` does the whole job
 * for a created container with the daemon's warm caches and applier: the gate's fast path.
 * `/v1/gate/render` answers a container's rules, `/v1/gate/applied` adopts what the gate applied itself,
 * so the start event applies nothing.
 */
import type { Reconciler } from "./reconcile.ts";
import type { GateApplied } from "./state.ts";
import { type BuildDeps, buildRules } from "../render/build.ts";
import type { Applier } from "../apply/applier.ts";
import { containerIntent } from "../rules/intent.ts";
import { describeError } from "../errors.ts";

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
}

/** The gate's fast path: build and apply the rules of a created container, and adopt them. */
export async function gateEnforce(
  deps: GateEnforceDeps,
  body: unknown,
  signal: AbortSignal,
): Promise<Response> {
  const b = body as { id?: unknown; pid?: unknown; env?: unknown };
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
  const intent = containerIntent(b.env, deps.config.policy, deps.config.audit);
  if (!intent.enabled) return Response.json({ error: "container does not opt in" }, { status: 400 });
  // The pid must be the container's (its cgroup names the id): never apply to an arbitrary process.
  const cgroup = await Deno.readTextFile(`/proc/${b.pid}/cgroup`).catch(() => "");
  if (!cgroup.includes(b.id)) {
    return Response.json({ error: `pid ${b.pid} is not in container ${b.id.slice(0, 12)}` }, { status: 400 });
  }
  const deadline = AbortSignal.any([signal, AbortSignal.timeout(5000)]);
  try {
    const want = {
      id: b.id,
      name: b.id.slice(0, 12),
      acls: intent.acls,
      policy: intent.policy,
      audit: intent.audit,
    };
    const built = await buildRules(deps, want, deadline);
    await deps.applier.apply({ id: b.id, name: want.name, pid: b.pid }, built.rendered, deadline);
    const report: GateApplied = {
      id: b.id,
      hash: built.hash,
      acls: built.acls,
      policy: built.policy,
      audit: built.audit,
      ruleCount: built.ruleCount,
      denied: false,
      pid: b.pid,
    };
    deps.reconciler.adopt(report);
    return Response.json(report);
  } catch (err) {
    return Response.json({ error: describeError(err) }, { status: 503 });
  }
}
