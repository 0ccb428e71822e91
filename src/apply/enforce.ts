/**
 * One container, one decision: read what it asks for, build and render its rules, and apply them
 * unless the text is what was last applied. Shared by the daemon's reconcile loop and `set`.
 */
import type { Policy } from "../config/config.ts";
import { type Applier, normalizeSaved } from "./applier.ts";
import type { ContainerInfo } from "../docker/types.ts";
import { type RenderedRules, rulesHash } from "../render/renderer.ts";
import { type BuildDeps, buildRules, type BuiltRules, countRules, denyPlan } from "../render/build.ts";
import { containerIntent } from "../rules/intent.ts";
import { namespaceProblem } from "../rules/isolation.ts";
import { describeError } from "../errors.ts";
import type { SteerRequest } from "../fqdn/forwarder.ts";
import { STEER_OFF } from "../fqdn/steering.ts";

/** The daemon's DNS forwarder, as enforcing uses it (rules by DNS name). */
export interface DnsSteering {
  /** Open the container's DNS listeners; the steering and known set entries to write with its rules. */
  steer(r: SteerRequest): Promise<{ nft: string; ipset: string }>;
  /** Its rules are in: its sets may now be written for others' answers too. */
  activate(id: string): void;
  /** It has no names any more, or is gone: close its listeners. False if it had none. */
  release(id: string): boolean;
  has(id: string): boolean;
}

/** What enforcing needs: building, plus somewhere to apply. */
export interface EnforceDeps extends BuildDeps {
  applier: Applier;
  /** Absent (`set`, the gate on its own, helper mode): rules by DNS name cannot be enforced. */
  dns?: DnsSteering;
}

/**
 * Rules by DNS name need the daemon's forwarder: with it, the container's steering and set entries join
 * the rendered rules (and the hash, so new listener ports are written); without it, an error, so the
 * caller fails closed.
 */
export async function withDns(
  deps: Pick<EnforceDeps, "dns">,
  c: {
    id: string;
    name: string;
    pid: number;
    dns?: string[];
    resolvConfPath?: string;
    /** A namespace this daemon has not written yet that existed before it: it may hold old steering. */
    unknown?: boolean;
  },
  built: Pick<BuiltRules, "fqdn" | "policy" | "rendered" | "hash">,
): Promise<{ rendered: RenderedRules; hash: string }> {
  if (built.fqdn.length === 0) {
    if (!deps.dns?.has(c.id) && !(deps.dns && c.unknown)) {
      return { rendered: built.rendered, hash: built.hash };
    }
    return { rendered: { ...built.rendered, nft: STEER_OFF }, hash: built.hash };
  }
  if (!deps.dns) {
    throw new Error(
      `its rules name destinations by DNS name (${
        built.fqdn.join(", ")
      }), which only the daemon (egresstrator run, nsenter mode) can enforce`,
    );
  }
  const { nft, ipset } = await deps.dns.steer({
    id: c.id,
    name: c.name,
    pid: c.pid,
    policy: built.policy,
    patterns: built.fqdn,
    dockerDns: c.dns,
    resolvConfPath: c.resolvConfPath,
  });
  const rendered = { ...built.rendered, nft, ipset };
  const hash = await rulesHash({ ipv4: built.rendered.ipv4, ipv6: `${built.rendered.ipv6}\n${nft}` });
  return { rendered, hash };
}

/** After a successful write of {@link withDns}'s rules. */
export function dnsApplied(deps: Pick<EnforceDeps, "dns">, id: string, built: Pick<BuiltRules, "fqdn">) {
  if (!deps.dns) return;
  if (built.fqdn.length > 0) deps.dns.activate(id);
  else deps.dns.release(id);
}

/** Options for one container. */
export interface EnforceRequest {
  info: ContainerInfo;
  /** `set --rules`: this list instead of EGRESSTRATOR_ACL, and no opt-in needed. */
  aclsOverride?: string[];
  /** Hash of what was last applied; equal text is not applied again. */
  previousHash?: string;
  /**
   * What is in the namespace now, when the caller knows (its last write there, or empty tables for a
   * namespace nothing was written to yet): a failed family is then rolled back without a save first.
   */
  previousRules?: RenderedRules;
  /** A namespace from before this daemon, not written by it yet (it may hold an old DNS steering). */
  unknownNamespace?: boolean;
  signal: AbortSignal;
}

/** The decision and what came of it. */
export type EnforceOutcome =
  | { status: "skipped"; reason: string; notes: string[] }
  /** Opted in, but without a network namespace of its own: nothing is ever written for it. */
  | { status: "refused"; reason: string; notes: string[] }
  | {
    status: "applied" | "unchanged" | "denied";
    acls: string[];
    policy: Policy;
    /** Audit mode: the rules log what they would refuse and refuse nothing. */
    audit: boolean;
    hash: string;
    ruleCount: number;
    /** The text now in the namespace (what was written, or found unchanged). */
    rendered: RenderedRules;
    /** The tables as read back right after the write, when the applier did that anyway (helper mode). */
    readBack?: RenderedRules;
    notes: string[];
    /** Set for "denied": why the real rules could not be built or written. */
    error?: string;
  };

/**
 * Thrown when the rules could not be built or applied; `notes` carry ACL problems found on the way.
 * `unfiltered`: nothing of ours is known to be in the namespace (no earlier apply there, and deny-all
 * could not be written either, or was not asked for).
 */
export class EnforceFailure extends Error {
  readonly unfiltered: boolean;
  constructor(
    message: string,
    readonly notes: string[],
    opts: { cause?: unknown; unfiltered?: boolean } = {},
  ) {
    super(message, { cause: opts.cause });
    this.unfiltered = opts.unfiltered ?? false;
  }
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
  if (hash === req.previousHash) return { hash, applied: false };
  const target = { id: req.info.id, name: req.info.name, pid: req.info.pid };
  const readBack = await deps.applier.apply(target, rendered, req.signal, req.previousRules) ?? undefined;
  return { hash, applied: true, readBack };
}

/** Decide and apply for one container. Throws EnforceFailure; never anything else except on abort. */
export async function enforce(deps: EnforceDeps, req: EnforceRequest): Promise<EnforceOutcome> {
  const { info } = req;
  const intent = containerIntent(info.env, deps.config.policy, deps.config.audit);
  const notes = [...intent.problems];
  if (!info.running) return { status: "skipped", reason: "not running", notes };
  if (!req.aclsOverride && !intent.enabled) return { status: "skipped", reason: "not opted in", notes };
  // Only a container's own namespace is ever written: the host's tables, or another container's, never.
  const shared = namespaceProblem(info);
  if (shared) return { status: "refused", reason: shared, notes };
  const want = {
    id: info.id,
    name: info.name,
    acls: req.aclsOverride ?? intent.acls,
    policy: intent.policy,
    audit: intent.audit,
  };
  let built: BuiltRules;
  try {
    built = await buildRules(deps, want, req.signal);
    notes.push(...built.notes);
    const dns = await withDns(deps, { ...info, unknown: req.unknownNamespace }, built);
    built = { ...built, ...dns };
  } catch (err) {
    req.signal.throwIfAborted();
    const why = `rules for ${info.name} could not be built: ${describeError(err)}`;
    // Keep what is in place: it was complete when it was written.
    if (req.previousHash) throw new EnforceFailure(why, notes, { cause: err });
    return await failClosed(deps, req, want, notes, why, err);
  }
  try {
    const { hash, applied, readBack } = await applyIfChanged(deps, req, built.rendered, built.hash);
    dnsApplied(deps, info.id, built);
    const status = applied ? "applied" : "unchanged";
    return {
      status,
      acls: want.acls,
      policy: want.policy,
      audit: want.audit,
      hash,
      ruleCount: built.ruleCount,
      rendered: built.rendered,
      readBack,
      notes,
    };
  } catch (err) {
    req.signal.throwIfAborted();
    // A failed restore changes nothing (atomic per family, ipv4 rolled back), so what was there stays;
    // the rules it should have replaced may be stale, so deny-all goes in where it can.
    return await failClosed(deps, req, want, notes, `rules could not be applied: ${describeError(err)}`, err);
  }
}

/**
 * The real rules cannot be had or written: with `--on-error deny`, deny-all (built-in templates only, so
 * it cannot depend on a custom template that may be what failed). Throws EnforceFailure when that is not
 * asked for or fails too; `unfiltered` when nothing of ours was in this namespace before.
 */
async function failClosed(
  deps: EnforceDeps,
  req: EnforceRequest,
  want: { acls: string[]; audit: boolean },
  notes: string[],
  why: string,
  cause: unknown,
): Promise<EnforceOutcome> {
  const unfiltered = !req.previousHash;
  if (deps.config.onError !== "deny") throw new EnforceFailure(why, notes, { cause, unfiltered });
  const plan = denyPlan(deps.config, req.info, want.audit);
  const rendered = (deps.denyRenderer ?? deps.renderer()).renderAll(plan);
  let applied;
  try {
    applied = await applyIfChanged(deps, req, rendered);
  } catch (err) {
    req.signal.throwIfAborted();
    throw new EnforceFailure(`${why}; deny-all failed too: ${describeError(err)}`, notes, {
      cause,
      unfiltered,
    });
  }
  return {
    status: "denied",
    acls: want.acls,
    policy: "allowlist",
    audit: want.audit,
    hash: applied.hash,
    ruleCount: countRules(rendered),
    rendered,
    readBack: applied.readBack,
    notes,
    error: why,
  };
}
