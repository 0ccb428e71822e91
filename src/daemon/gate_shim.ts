/**
 * The runtime shim's own protocol on the daemon's unix socket: plain-text answers a POSIX shell can act
 * on with curl, so an opted-in `create` needs no egresstrator process at all while the daemon is up.
 *
 *   POST /v1/shim/prepare {bundle, allow}  before `runc create`: check (and edit) the spec.
 *       200 "enforce"          create it, then ask for /v1/shim/enforce
 *       200 "pass <note>"      create it as is (it joins another's namespace, or host network allowed)
 *       403 "<reason>"         refuse the create
 *   POST /v1/shim/enforce {id, pid, bundle, onFailure}  after `runc create`: rules in place, adopted.
 *       200 <one JSON line>    for the gate log (EGRESSTRATOR_GATE_LOG)
 *       4xx/5xx "<reason>"     refuse: the shim deletes the created container
 * Anything else (the daemon down, an old daemon) makes the shim run `egresstrator runtime`, which does it
 * all itself. The container's env is read from its bundle here, never taken from the caller.
 */
import { decideBundle } from "../gate/bundle.ts";
import { specEnv } from "../gate/spec.ts";
import { enforceCreated, type GateEnforceDeps } from "./gate_api.ts";
import { describeError } from "../errors.ts";

/** One line, no quotes, backslashes or controls: safe for the shell to print and to put in JSON. */
function plain(text: string): string {
  // deno-lint-ignore no-control-regex
  return text.replace(/[\\"\u0000-\u001f\u007f]/g, "'").slice(0, 1000);
}

/** No trailing newline: the shell splits the answer from the status curl appends after a newline. */
const text = (body: string, status = 200) => new Response(body, { status });

function bundleOf(b: { bundle?: unknown }): string | undefined {
  const p = b.bundle;
  return typeof p === "string" && p.startsWith("/") && !p.split("/").includes("..") && p.length < 4096
    ? p
    : undefined;
}

function readSpec(bundle: string): string | undefined {
  try {
    return Deno.readTextFileSync(`${bundle}/config.json`);
  } catch {
    return undefined;
  }
}

/** `/v1/shim/prepare`. */
export function shimPrepare(body: unknown): Response {
  const b = body as { bundle?: unknown; allow?: Record<string, unknown> };
  const bundle = bundleOf(b);
  if (!bundle) return text("body must be {bundle: <absolute path>, allow: {...}}", 400);
  const spec = readSpec(bundle);
  if (spec === undefined) return text(`cannot read ${plain(bundle)}/config.json`, 400);
  const allow = b.allow ?? {};
  const flag = (k: string) => (allow[k] === true ? "1" : "");
  const d = decideBundle(`${bundle}/config.json`, spec, {
    EGRESSTRATOR_GATE_ALLOW_HOST_NETWORK: flag("hostNetwork"),
    EGRESSTRATOR_GATE_ALLOW_NET_ADMIN: flag("netAdmin"),
    EGRESSTRATOR_GATE_KEEP_NET_RAW: flag("keepNetRaw"),
  });
  if (d.refuse) return text(plain(d.refuse), 403);
  if (d.note) return text(`pass ${plain(d.note)}`);
  return d.enforceEnv ? text("enforce") : text("pass not opted in");
}

/** `/v1/shim/enforce`. */
export async function shimEnforce(
  deps: GateEnforceDeps,
  body: unknown,
  signal: AbortSignal,
): Promise<Response> {
  const t0 = performance.now();
  const b = body as { id?: unknown; pid?: unknown; bundle?: unknown; onFailure?: unknown };
  const bundle = bundleOf(b);
  if (
    typeof b.id !== "string" || !/^[0-9a-f]{12,64}$/.test(b.id) || !bundle ||
    typeof b.pid !== "number" || !Number.isInteger(b.pid) || b.pid <= 0
  ) {
    return text("body must be {id, pid, bundle, onFailure}", 400);
  }
  if (!deps.applier) return text("the daemon does not apply with nsenter", 501);
  const spec = readSpec(bundle);
  let env: string[];
  try {
    env = specEnv(JSON.parse(spec ?? ""));
  } catch (err) {
    return text(`cannot read the spec in ${plain(bundle)}: ${plain(describeError(err))}`, 400);
  }
  const onFailure = b.onFailure === "refuse" ? "error" : "deny";
  const out = await enforceCreated({ ...deps, applier: deps.applier }, {
    id: b.id,
    pid: b.pid,
    env,
    onFailure,
  }, signal);
  if (!("report" in out)) return text(plain(out.error), out.status);
  const line = {
    time: new Date().toISOString(),
    id: b.id,
    decision: out.report.denied ? "denied" : "applied",
    source: out.report.denied ? "deny" : "daemon",
    rules: out.report.ruleCount,
    ms: Math.round(performance.now() - t0),
    via: "shim",
  };
  return text(JSON.stringify(line));
}
