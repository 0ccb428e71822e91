/**
 * The runtime shim's own protocol on the daemon's unix socket: plain-text answers a POSIX shell can act
 * on (asked with the shim's perl lines, or curl), so an opted-in `create` needs no egresstrator process
 * at all while the daemon is up.
 *
 *   POST /v1/shim/prepare {bundle, allow}  before `runc create`: check (and edit) the spec.
 *       200 "enforce"          create it, then ask for /v1/shim/enforce
 *       200 "pass <note>"      create it as is (it joins another's namespace, or host network allowed)
 *       403 "<reason>"         refuse the create
 *   POST /v1/shim/created <the container's OCI state>  from the shim as runc's first prestart hook
 *       (prepare puts it in the spec when asked with hook {path, socket}): start applying now.
 *       202 "started" / 4xx "<reason>"   the hook ignores the answer; the enforce decides
 *   POST /v1/shim/enforce {id, pid, bundle, onFailure, client}  after `runc create`: rules in place,
 *       adopted (client: how the shim asked, "perl" or "curl", for the gate log). Takes the hook's apply
 *       when it succeeded for this very container and pid (gate_early.ts), else applies now.
 *       200 <one JSON line>    for the gate log (EGRESSTRATOR_GATE_LOG)
 *       4xx/5xx "<reason>"     refuse: the shim deletes the created container
 * Anything else (the daemon down, an old daemon) makes the shim run `egresstrator runtime`, which does it
 * all itself. The container's env is read from its bundle here, never taken from the caller.
 */
import { decideBundle } from "../gate/bundle.ts";
import { HOOK_ARG, type OciHook, specEnv } from "../gate/spec.ts";
import { enforceCreated, type GateEnforceDeps } from "./gate_api.ts";
import { EarlyApplies } from "./gate_early.ts";
import type { GateApplied } from "./state.ts";
import { describeError } from "../errors.ts";

/** One line, no quotes, backslashes or controls: safe for the shell to print and to put in JSON. */
function plain(text: string): string {
  // deno-lint-ignore no-control-regex
  return text.replace(/[\\"\u0000-\u001f\u007f]/g, "'").slice(0, 1000);
}

/** No trailing newline: the shell splits the answer from the status its client appends after a newline. */
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

/** An absolute path a spec can name: no `..`, no controls. */
function absolute(p: unknown): p is string {
  return typeof p === "string" && p.startsWith("/") && !p.split("/").includes("..") &&
    // deno-lint-ignore no-control-regex
    !/[\u0000-\u001f]/.test(p) && p.length < 4096;
}

/** The prestart hook the shim asked for: itself, told the daemon's socket. Undefined if not asked or not sane. */
function hookOf(h: unknown): OciHook | undefined {
  const { path, socket } = (h ?? {}) as { path?: unknown; socket?: unknown };
  if (!absolute(path) || !absolute(socket)) return undefined;
  try {
    if (!Deno.statSync(path).isFile) return undefined;
  } catch {
    return undefined;
  }
  // The hook's own deadline (2 s) is well inside runc's, so it never fails a create by running late.
  return {
    path,
    args: [path, HOOK_ARG, socket],
    env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    timeout: 10,
  };
}

/**
 * `/v1/shim/prepare`. `canEnforce`: false for a daemon in helper mode, which cannot reach a namespace
 * whose container is only created: 501, and the shim runs the gate binary, which applies itself.
 */
export function shimPrepare(body: unknown, canEnforce = true): Response {
  if (!canEnforce) return text("the daemon does not apply with nsenter", 501);
  const b = body as { bundle?: unknown; allow?: Record<string, unknown>; hook?: unknown };
  const bundle = bundleOf(b);
  if (!bundle) {
    return text("body must be {bundle: <absolute path>, allow: {...}, hook?: {path, socket}}", 400);
  }
  const spec = readSpec(bundle);
  if (spec === undefined) return text(`cannot read ${plain(bundle)}/config.json`, 400);
  const allow = b.allow ?? {};
  const flag = (k: string) => (allow[k] === true ? "1" : "");
  const d = decideBundle(`${bundle}/config.json`, spec, {
    EGRESSTRATOR_GATE_ALLOW_HOST_NETWORK: flag("hostNetwork"),
    EGRESSTRATOR_GATE_ALLOW_NET_ADMIN: flag("netAdmin"),
    EGRESSTRATOR_GATE_KEEP_NET_RAW: flag("keepNetRaw"),
  }, hookOf(b.hook));
  if (d.refuse) return text(plain(d.refuse), 403);
  if (d.note) return text(`pass ${plain(d.note)}`);
  return d.enforceEnv ? text("enforce") : text("pass not opted in");
}

/** A created container as the shim names it: id, its init's pid, its bundle. */
function createdOf(b: { id?: unknown; pid?: unknown; bundle?: unknown }) {
  const bundle = bundleOf(b);
  return typeof b.id === "string" && /^[0-9a-f]{12,64}$/.test(b.id) && bundle &&
      typeof b.pid === "number" && Number.isInteger(b.pid) && b.pid > 0
    ? { id: b.id, pid: b.pid, bundle }
    : undefined;
}

/** The container's env, from its bundle (never from the caller). */
function bundleEnv(bundle: string): string[] | { error: string } {
  try {
    return specEnv(JSON.parse(readSpec(bundle) ?? ""));
  } catch (err) {
    return { error: `cannot read the spec in ${plain(bundle)}: ${plain(describeError(err))}` };
  }
}

/** What the hook's applies hold until the enforce takes them. */
export type EarlyShim = EarlyApplies<GateApplied>;

export function earlyShim(): EarlyShim {
  return new EarlyApplies<GateApplied>();
}

/**
 * `/v1/shim/created`: the hook's news (the OCI state: id, pid, bundle) that runc has made the namespace.
 * Starts the apply and answers at once. Only the plain case starts early: a spec it cannot read, or rules
 * that cannot be had or use DNS names (their listeners read the container's resolv.conf, which is not in
 * place yet), are left to the enforce, which applies (or denies, or refuses) as without the hook.
 */
export function shimCreated(
  deps: GateEnforceDeps,
  early: EarlyShim,
  body: unknown,
  signal: AbortSignal,
): Response {
  const c = createdOf(body as { id?: unknown; pid?: unknown; bundle?: unknown });
  if (!c) return text("body must be the container's OCI state {id, pid, bundle}", 400);
  if (!deps.applier) return text("the daemon does not apply with nsenter", 501);
  const env = bundleEnv(c.bundle);
  if (!Array.isArray(env)) return text(env.error, 400);
  const applier = deps.applier;
  const started = early.start(c.id, c.pid, c.bundle, async () => {
    const out = await enforceCreated({ ...deps, applier }, {
      id: c.id,
      pid: c.pid,
      env,
      onFailure: "error",
      withoutNames: true,
      // Short: the enforce waits for it, and after a failure still has its own time to apply.
      deadlineMs: 3000,
    }, signal);
    return "report" in out ? out.report : undefined;
  });
  return started ? text("started", 202) : text("too many creates in flight", 429);
}

/** `/v1/shim/enforce`. */
export async function shimEnforce(
  deps: GateEnforceDeps,
  early: EarlyShim,
  body: unknown,
  signal: AbortSignal,
): Promise<Response> {
  const t0 = performance.now();
  const b = body as { id?: unknown; pid?: unknown; bundle?: unknown; onFailure?: unknown; client?: unknown };
  const c = createdOf(b);
  if (!c) return text("body must be {id, pid, bundle, onFailure}", 400);
  if (!deps.applier) return text("the daemon does not apply with nsenter", 501);
  const taken = await early.take(c.id, c.pid, c.bundle);
  let report: GateApplied;
  if (taken) {
    report = taken.value;
  } else {
    const env = bundleEnv(c.bundle);
    if (!Array.isArray(env)) return text(env.error, 400);
    const onFailure = b.onFailure === "refuse" ? "error" : "deny";
    const out = await enforceCreated({ ...deps, applier: deps.applier }, {
      id: c.id,
      pid: c.pid,
      env,
      onFailure,
    }, signal);
    if (!("report" in out)) return text(plain(out.error), out.status);
    report = out.report;
  }
  const line = {
    time: new Date().toISOString(),
    id: c.id,
    decision: report.denied ? "denied" : "applied",
    source: report.denied ? "deny" : "daemon",
    rules: report.ruleCount,
    ms: Math.round(performance.now() - t0),
    via: "shim",
    ...(b.client === "perl" || b.client === "curl" ? { client: b.client } : {}),
    // Put in from the hook, during the create: how long that took.
    ...(taken ? { hook: true, applyMs: Math.round(taken.ms) } : { hook: false }),
  };
  return text(JSON.stringify(line));
}
