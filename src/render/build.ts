/**
 * Plan and render one container's rules (plan -> render, no I/O but the rule provider's): what the
 * daemon, `set` and the gate all apply.
 */
import type { Config, Policy } from "../config/config.ts";
import type { ContainerInfo } from "../docker/types.ts";
import { buildPlan, type RulePlan } from "../rules/plan.ts";
import type { RuleProvider } from "../rules/rule_cache.ts";
import { snapshotFrom } from "../rules/acl_source.ts";
import { type RenderedRules, type Renderer, rulesHash } from "./renderer.ts";

/** What building needs. `renderer` is a getter because SIGHUP replaces it. */
export interface BuildDeps {
  rules: RuleProvider;
  renderer: () => Renderer;
  /** Built-in templates only, for deny-all (default: `renderer()`). */
  denyRenderer?: Renderer;
  /** `audit` and `denyLog` default to false and true. */
  config: Pick<Config, "policy" | "dnsResolvers" | "onError"> & Partial<Pick<Config, "audit" | "denyLog">>;
}

/** Count the rules a text adds (lines starting with -A), both families. */
export function countRules(r: RenderedRules): number {
  return (r.ipv4.match(/^-A /gm)?.length ?? 0) + (r.ipv6.match(/^-A /gm)?.length ?? 0);
}

/**
 * The deny-all set (allowlist with nothing allowed: loopback and DNS kept). An audit container gets it in
 * audit form: logged, nothing refused, as its real rules would be.
 */
export function denyPlan(
  config: BuildDeps["config"],
  info: Pick<ContainerInfo, "id" | "name">,
  audit = false,
): RulePlan {
  return buildPlan({
    snapshot: snapshotFrom([]),
    acls: [],
    services: new Map(),
    policy: "allowlist",
    dnsResolvers: config.dnsResolvers,
    container: { id: info.id, name: info.name },
    hasCatalog: false,
    audit,
    denyLog: config.denyLog,
    denyAll: true,
  });
}

/** Rendered rules for one container, and what went into them. */
export interface BuiltRules {
  acls: string[];
  policy: Policy;
  audit: boolean;
  rendered: RenderedRules;
  hash: string;
  ruleCount: number;
  /** This container's own problems (missing ACL keys). */
  notes: string[];
  /** The DNS-name patterns its rules use: its DNS must be steered and its sets filled. */
  fqdn: string[];
}

/** What a container asks for, as far as building its rules goes. */
export interface RulesWant {
  id: string;
  name: string;
  acls: string[];
  policy: Policy;
  /** Audit mode (default false): nothing refused, would-be refusals logged. */
  audit?: boolean;
}

/**
 * Plan and render one container's rules. Throws when they cannot be complete (no ACL data, a service
 * lookup failed): a partial protect set would open what it should close.
 */
export async function buildRules(
  deps: BuildDeps,
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
    audit: want.audit ?? false,
    denyLog: deps.config.denyLog,
  });
  // Key problems are reported once per snapshot by the rule provider; only this container's own go here.
  const notes = plan.missing.map((m) => `ACL key "${m}" not found`);
  if (plan.unresolved.length > 0) throw new Error(`service lookup failed for ${plan.unresolved.join(", ")}`);
  const rendered = deps.renderer().renderAll(plan);
  const hash = await rulesHash(rendered);
  return {
    acls: want.acls,
    policy: want.policy,
    audit: want.audit ?? false,
    rendered,
    hash,
    ruleCount: countRules(rendered),
    notes,
    fqdn: plan.fqdn,
  };
}
