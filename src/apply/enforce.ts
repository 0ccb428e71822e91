/**
 * One container, one decision: read what it asks for, build and render its rules, and apply them
 * unless the text is what was last applied. Shared by the daemon's reconcile loop and `set`.
 */
import type { Config, Policy } from "../config/config.ts";
import { type Applier, normalizeSaved } from "./applier.ts";
import type { ContainerInfo } from "../docker/types.ts";
import { buildPlan, type RulePlan } from "../rules/plan.ts";
import { type RenderedRules, type Renderer, rulesHash } from "../render/renderer.ts";
import type { RuleProvider } from "../rules/rule_cache.ts";
import { containerIntent } from "../rules/intent.ts";
import { describeError } from "../errors.ts";
import { snapshotFrom } from "../rules/acl_source.ts";

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
  constructor(message: string, readonly notes: string[], opts: { cause?: unknown } = {}) {
    super(message, { cause: opts.cause });
  }
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

async function applyIfChanged(
  deps: EnforceDeps,
  req: EnforceRequest,
  rendered: RenderedRules,
  known?: string,
) {
  const hash = known ?? await rulesHash(rendered);
  if (hash === req.previousHash) return { hash, applied: false, saved: undefined };
  const target = { id: req.info.id, name: req.info.name, pid: req.info.pid };
  const saved = await savedHash(await deps.applier.apply(target, rendered, req.signal));
  return { hash, applied: true, saved };
}

/** Rendered rules for one container, and what went into them. */
export interface BuiltRules {
  acls: string[];
  policy: Policy;
  rendered: RenderedRules;
  hash: string;
  ruleCount: number;
  /** This container's own problems (missing ACL keys). */
  notes: string[];
}

/** What a container asks for, as far as building its rules goes. */
export interface RulesWant {
  id: string;
  name: string;
  acls: string[];
  policy: Policy;
}

/**
 * Plan and render one container's rules. Throws when they cannot be complete (no ACL data, a service
 * lookup failed): a partial protect set would open what it should close.
 */
export async function buildRules(
  deps: Pick<EnforceDeps, "rules" | "renderer" | "config">,
  want: RulesWant,
  signal: AbortSignal,
): Promise<BuiltRules> {
  const data = await deps.rules.get(signal, { acls: want.acls, policy: want.policy });
  const plan = buildPlan({
    ...data,
    acls: want.acls,
    policy: want.policy,
    dnsResolvers: deps.config.dnsResolvers,
    container: { id: want.id, name: want.name },
  });
  // Key problems are reported once per snapshot by the rule provider; only this container's own go here.
  const notes = plan.missing.map((m) => `ACL key "${m}" not found`);
  if (plan.unresolved.length > 0) throw new Error(`service lookup failed for ${plan.unresolved.join(", ")}`);
  const rendered = deps.renderer().renderAll(plan);
  const hash = await rulesHash(rendered);
  return { acls: want.acls, policy: want.policy, rendered, hash, ruleCount: countRules(rendered), notes };
}

/** Decide and apply for one container. Throws EnforceFailure; never anything else except on abort. */
export async function enforce(deps: EnforceDeps, req: EnforceRequest): Promise<EnforceOutcome> {
  const { info } = req;
  const intent = containerIntent(info.env, deps.config.policy);
  const notes = [...intent.problems];
  if (!info.running) return { status: "skipped", reason: "not running", notes };
  if (!req.aclsOverride && !intent.enabled) return { status: "skipped", reason: "not opted in", notes };
  const want = { id: info.id, name: info.name, acls: req.aclsOverride ?? intent.acls, policy: intent.policy };
  let built: BuiltRules;
  try {
    built = await buildRules(deps, want, req.signal);
    notes.push(...built.notes);
  } catch (err) {
    req.signal.throwIfAborted();
    const why = describeError(err);
    // Keep what is in place; with nothing in place, --on-error deny shuts egress until it works.
    if (req.previousHash || deps.config.onError !== "deny") {
      throw new EnforceFailure(`rules for ${info.name} could not be built: ${why}`, notes, {
        cause: err,
      });
    }
    const rendered = deps.renderer().renderAll(denyPlan(deps.config, info));
    const { hash, saved } = await applyIfChanged(deps, req, rendered).catch((e) => {
      throw new EnforceFailure(describeError(e), notes, { cause: e });
    });
    const ruleCount = countRules(rendered);
    return {
      status: "denied",
      acls: want.acls,
      policy: "allowlist",
      hash,
      savedHash: saved,
      ruleCount,
      notes,
      error: why,
    };
  }
  try {
    const { hash, applied, saved } = await applyIfChanged(deps, req, built.rendered, built.hash);
    const status = applied ? "applied" : "unchanged";
    return {
      status,
      acls: want.acls,
      policy: want.policy,
      hash,
      savedHash: saved,
      ruleCount: built.ruleCount,
      notes,
    };
  } catch (err) {
    req.signal.throwIfAborted();
    throw new EnforceFailure(describeError(err), notes, { cause: err });
  }
}
