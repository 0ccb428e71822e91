/**
 * One container, one decision: read what it asks for, build and render its rules, and apply them
 * unless the text is what was last applied. Shared by the daemon's reconcile loop and `set`.
 */
import type { Config, Policy } from "./config.ts";
import { type Applier, normalizeSaved } from "./apply/applier.ts";
import type { ContainerInfo } from "./docker/types.ts";
import { buildPlan, type RulePlan } from "./plan.ts";
import { type RenderedRules, type Renderer, rulesHash } from "./render.ts";
import type { RuleProvider } from "./rule_cache.ts";
import { containerIntent } from "./intent.ts";
import { describeError } from "./errors.ts";
import { snapshotFrom } from "./rules/acl_source.ts";

/** What enforcing needs. `renderer` is a getter because SIGHUP replaces it. */
export interface EnforceDeps {
  applier: Applier;
  rules: RuleProvider;
  renderer: () => Renderer;
  config: Pick<Config, "policy" | "dnsResolvers" | "onError">;
}

/** Options for one container. */
export interface EnforceRequest {
  info: ContainerInfo;
  /** `set --rules`: this list instead of EGRESSTRATOR_ACL, and no opt-in needed. */
  aclsOverride?: string[];
  /** Hash of what was last applied; equal text is not applied again. */
  previousHash?: string;
  signal: AbortSignal;
}

/** The decision and what came of it. */
export type EnforceOutcome =
  | { status: "skipped"; reason: string; notes: string[] }
  | {
    status: "applied" | "unchanged" | "denied";
    acls: string[];
    policy: Policy;
    hash: string;
    /** Baseline for drift checks; absent when nothing was applied ("unchanged"). */
    savedHash?: string;
    ruleCount: number;
    notes: string[];
    /** Set for "denied": why the real rules could not be built. */
    error?: string;
  };

/** Thrown when the rules could not be built or applied; `notes` carry ACL problems found on the way. */
export class EnforceFailure extends Error {
  constructor(message: string, readonly notes: string[], opts: { cause?: unknown; transient: boolean }) {
    super(message, { cause: opts.cause });
    this.transient = opts.transient;
  }
  readonly transient: boolean;
}

/** Count the rules a text adds (lines starting with -A), both families. */
export function countRules(r: RenderedRules): number {
  return (r.ipv4.match(/^-A /gm)?.length ?? 0) + (r.ipv6.match(/^-A /gm)?.length ?? 0);
}

/** The deny-all set (allowlist with nothing allowed: loopback and DNS kept). */
export function denyPlan(config: EnforceDeps["config"], info: ContainerInfo): RulePlan {
  return buildPlan({
    snapshot: snapshotFrom([]),
    acls: [],
    services: new Map(),
    policy: "allowlist",
    dnsResolvers: config.dnsResolvers,
    container: { id: info.id, name: info.name },
    hasCatalog: false,
  });
}

/** Hash of tables as read back, comments and counters ignored (what drift checks compare). */
export function savedHash(saved: RenderedRules): Promise<string> {
  return rulesHash({ ipv4: normalizeSaved(saved.ipv4), ipv6: normalizeSaved(saved.ipv6) });
}

async function applyIfChanged(deps: EnforceDeps, req: EnforceRequest, rendered: RenderedRules) {
  const hash = await rulesHash(rendered);
  if (hash === req.previousHash) return { hash, applied: false, saved: undefined };
  const target = { id: req.info.id, name: req.info.name, pid: req.info.pid };
  const saved = await savedHash(await deps.applier.apply(target, rendered, req.signal));
  return { hash, applied: true, saved };
}

/** Decide and apply for one container. Throws EnforceFailure; never anything else except on abort. */
export async function enforce(deps: EnforceDeps, req: EnforceRequest): Promise<EnforceOutcome> {
  const { info } = req;
  const intent = containerIntent(info.env, deps.config.policy);
  const notes = [...intent.problems];
  if (!info.running) return { status: "skipped", reason: "not running", notes };
  if (!req.aclsOverride && !intent.enabled) return { status: "skipped", reason: "not opted in", notes };
  const acls = req.aclsOverride ?? intent.acls;
  let plan: RulePlan;
  let buildError: unknown;
  try {
    const data = await deps.rules.get(req.signal);
    plan = buildPlan({
      ...data,
      acls,
      policy: intent.policy,
      dnsResolvers: deps.config.dnsResolvers,
      container: info,
    });
    // Key problems are reported once per snapshot by the RuleCache; only this container's own go here.
    notes.push(...plan.missing.map((m) => `ACL key "${m}" not found`));
    if (plan.unresolved.length > 0) {
      buildError = new Error(`service lookup failed for ${plan.unresolved.join(", ")}`);
    }
  } catch (err) {
    req.signal.throwIfAborted();
    buildError = err;
  }
  if (buildError !== undefined) {
    const why = describeError(buildError);
    // Keep what is in place; with nothing in place, --on-error deny shuts egress until it works.
    if (req.previousHash || deps.config.onError !== "deny") {
      throw new EnforceFailure(`rules for ${info.name} could not be built: ${why}`, notes, {
        cause: buildError,
        transient: true,
      });
    }
    const rendered = deps.renderer().renderAll(denyPlan(deps.config, info));
    const { hash } = await applyIfChanged(deps, req, rendered).catch((err) => {
      throw new EnforceFailure(describeError(err), notes, { cause: err, transient: true });
    });
    return {
      status: "denied",
      acls,
      policy: "allowlist",
      hash,
      ruleCount: countRules(rendered),
      notes,
      error: why,
    };
  }
  try {
    const rendered = deps.renderer().renderAll(plan!);
    const { hash, applied, saved } = await applyIfChanged(deps, req, rendered);
    const status = applied ? "applied" : "unchanged";
    return {
      status,
      acls,
      policy: intent.policy,
      hash,
      savedHash: saved,
      ruleCount: countRules(rendered),
      notes,
    };
  } catch (err) {
    req.signal.throwIfAborted();
    throw new EnforceFailure(describeError(err), notes, { cause: err, transient: true });
  }
}
