/**
 * The runtime gate's endpoints on the daemon: `/v1/gate/render` answers a container's rules from the
 * warm caches, `/v1/gate/applied` adopts what the gate applied so the start event applies nothing.
 */
import type { Reconciler } from "./reconcile.ts";
import type { GateApplied } from "./state.ts";
import { buildRules } from "../render/build.ts";
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
  const intent = containerIntent(b.env, deps.config.policy);
  if (!intent.enabled) return Response.json({ error: "container does not opt in" }, { status: 400 });
  try {
    const want = { id: b.id, name: b.id.slice(0, 12), acls: intent.acls, policy: intent.policy };
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
    typeof b.denied === "boolean" && (b.pid === undefined || (Number.isInteger(b.pid) && b.pid > 0));
  if (!ok) return Response.json({ error: "bad gate report" }, { status: 400 });
  reconciler.adopt(b as GateApplied);
  return new Response(null, { status: 204 });
}
