/**
 * RulePlan -> iptables-restore text for one address family, through Eta templates (pure once the
 * templates are loaded). Templates only ever see parsed, validated values.
 */
import { Eta } from "eta/core";
import type { ContainerRef, Destination, RulePlan } from "../rules/plan.ts";
import type { Family, Proto } from "../rules/grammar.ts";
import type { Policy } from "../config/config.ts";
import { TemplateError } from "../errors.ts";
import { commentSafe } from "../util/text.ts";
import { type LogChain, logChains, type LogContext } from "./deny_log.ts";
import { setName } from "../fqdn/names.ts";
import { createHash } from "node:crypto";

/** A destination with its iptables match ready to print. */
export interface TemplateDestination extends Destination {
  /** `-p tcp -m tcp --dport 80` or `-p tcp -m multiport --dports 1000:2000`. */
  match: string;
}

/** A destination by DNS name as templates see it, for one family. */
export interface TemplateName {
  /** `api.example.com` or `*.example.com`. */
  pattern: string;
  /** The ipset (`hash:ip` with timeouts) DNS answers fill: `-m set --match-set <set> dst`. */
  set: string;
  /** Connection mark for connections this rule let through, so they outlive the set entry: `0x1a2b3c4d`. */
  mark: string;
  proto: Proto;
  ports: { from: number; to: number };
  /** Same as {@link TemplateDestination.match}. */
  match: string;
  origin: string;
}

/** An ACL key as templates see it. */
export interface TemplateAcl {
  key: string;
  destinations: TemplateDestination[];
  /** Its destinations by DNS name (see README, "Rules by DNS name"). */
  names: TemplateName[];
  /** Under protect, for a protected key with destinations in this family: where its refusals are logged. */
  log: LogChain | null;
}

/** The documented context every template receives as `it` (see README, "Template context"). */
export interface TemplateContext {
  version: string;
  family: Family;
  policy: Policy;
  container: ContainerRef | null;
  acls: string[];
  missing: string[];
  allowed: TemplateAcl[];
  protected: TemplateAcl[];
  dnsResolvers: string[];
  /** REJECT targets for this family: `REJECT --reject-with tcp-reset` and ICMP variants (ACCEPT in audit). */
  reject: { tcp: string; udp: string; other: string };
  /** The DNS guard's silent refusal: DROP (ACCEPT in audit). */
  drop: string;
  /** Audit mode: nothing is refused; `reject` and `drop` are ACCEPT, the log prefixes end in `A`. */
  audit: boolean;
  /** Its rules use DNS names: its DNS is steered to the daemon's listeners (see README). */
  steered: boolean;
  /** Where refusals are logged: jump to a chain with the NEW packets a rule is about to refuse. */
  log: Omit<LogContext, "protected">;
}

/** The template sources: the two policies and the shared partials. */
export interface TemplateSet {
  protect: string;
  allowlist: string;
  partials: Record<string, string>;
  /** A user's template (--template): used for every policy when set. */
  custom?: { path: string; source: string };
}

const TEMPLATE_DIR = new URL("../../templates/", import.meta.url);

/** Read the built-in templates (embedded in the compiled binary) and an optional custom one. */
export async function loadTemplates(customPath?: string): Promise<TemplateSet> {
  const read = (rel: string) => Deno.readTextFile(new URL(rel, TEMPLATE_DIR));
  try {
    const set: TemplateSet = {
      protect: await read("protect.eta"),
      allowlist: await read("allowlist.eta"),
      partials: { header: await read("partials/header.eta"), guards: await read("partials/guards.eta") },
    };
    if (customPath) set.custom = { path: customPath, source: await Deno.readTextFile(customPath) };
    return set;
  } catch (err) {
    const what = customPath ? `template ${customPath}` : "built-in templates";
    throw new TemplateError(`cannot read ${what}: ${(err as Error).message}`, { cause: err });
  }
}

/** iptables match text for a destination, from parsed numbers only. */
export function portMatch(proto: Proto, from: number, to: number): string {
  return from === to
    ? `-p ${proto} -m ${proto} --dport ${from}`
    : `-p ${proto} -m multiport --dports ${from}:${to}`;
}

function forFamily(
  acls: RulePlan["allowed"],
  family: Family,
  policy: Policy,
  logs?: (LogChain | null)[],
): TemplateAcl[] {
  return acls.map((a, i) => ({
    key: a.key,
    destinations: a.destinations.filter((d) => d.family === family).map((d) => ({
      ...d,
      match: portMatch(d.proto, d.ports.from, d.ports.to),
    })),
    names: a.names.map((n) => ({
      pattern: n.pattern,
      set: setName(n.pattern, family, policy),
      mark: connMark(n.pattern),
      proto: n.proto,
      ports: n.ports,
      match: portMatch(n.proto, n.ports.from, n.ports.to),
      origin: n.origin,
    })),
    log: logs?.[i] ?? null,
  }));
}

/** The connection mark of a DNS-name pattern's connections (never 0): `0x` and 8 hex digits. */
export function connMark(pattern: string): string {
  const h = createHash("sha256").update(`egresstrator-mark:${pattern}`).digest();
  return `0x${((h.readUInt32BE(0) | 0x1000000) >>> 0).toString(16).padStart(8, "0")}`;
}

/**
 * The sets a plan's text must use, for one family: those of the patterns its policy renders. A template
 * (a custom one above all) that leaves one out would leave that name unfiltered under protect.
 */
export function requiredSets(plan: RulePlan, family: Family): string[] {
  return plan.fqdn.map((p) => setName(p, family, plan.policy));
}

/** The context a template gets for one family (also what `render --json` prints). */
export function templateContext(plan: RulePlan, family: Family, version: string): TemplateContext {
  const icmp = family === "ipv4" ? "icmp-port-unreachable" : "icmp6-port-unreachable";
  const { protected: protectedLogs, ...log } = logChains(plan, family);
  const verdict = (target: string) => (plan.audit ? "ACCEPT" : target);
  return {
    version,
    family,
    policy: plan.policy,
    container: plan.container
      ? { id: commentSafe(plan.container.id), name: commentSafe(plan.container.name) }
      : null,
    acls: plan.acls.map((a) => commentSafe(a)),
    missing: plan.missing.map((m) => commentSafe(m)),
    allowed: forFamily(plan.allowed, family, plan.policy),
    protected: forFamily(plan.protected, family, plan.policy, protectedLogs),
    dnsResolvers: plan.dnsResolvers[family],
    reject: {
      tcp: verdict("REJECT --reject-with tcp-reset"),
      udp: verdict(`REJECT --reject-with ${icmp}`),
      other: verdict(`REJECT --reject-with ${icmp}`),
    },
    drop: verdict("DROP"),
    audit: plan.audit,
    steered: plan.fqdn.length > 0,
    log,
  };
}

/** Checks on any rendered text, custom templates included: filter table only, one COMMIT at the end. */
export function checkRendered(text: string, source: string): void {
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  const tables = lines.filter((l) => l.startsWith("*"));
  const fail = (why: string) => {
    throw new TemplateError(`${source} rendered an unusable rule set: ${why}`);
  };
  if (tables.length !== 1 || tables[0] !== "*filter") fail("it must write exactly one table, *filter");
  if (lines[lines.length - 1] !== "COMMIT" || lines.filter((l) => l === "COMMIT").length !== 1) {
    fail("it must end with a single COMMIT");
  }
  if (text.includes("\0")) fail("it contains a NUL byte");
}

/** Compiled templates; one per process, re-created on SIGHUP. */
export class Renderer {
  private readonly eta: Eta;
  constructor(readonly templates: TemplateSet, readonly version: string) {
    this.eta = new Eta({ autoEscape: false, autoTrim: false, cache: true });
    try {
      for (const [name, src] of Object.entries(templates.partials)) this.eta.loadTemplate(`@${name}`, src);
      this.eta.loadTemplate("@protect", templates.protect);
      this.eta.loadTemplate("@allowlist", templates.allowlist);
      if (templates.custom) this.eta.loadTemplate("@custom", templates.custom.source);
    } catch (err) {
      throw new TemplateError(`cannot compile ${this.sourceName()}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  private sourceName(policy?: Policy): string {
    return this.templates.custom
      ? `template ${this.templates.custom.path}`
      : `built-in ${policy ?? ""} template`;
  }

  /** Render one family. Throws TemplateError naming the template. */
  render(plan: RulePlan, family: Family): string {
    const name = this.templates.custom ? "@custom" : `@${plan.policy}`;
    let text: string;
    try {
      text = this.eta.render(name, templateContext(plan, family, this.version));
    } catch (err) {
      throw new TemplateError(`${this.sourceName(plan.policy)} failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
    checkRendered(text, this.sourceName(plan.policy));
    const missing = requiredSets(plan, family).filter((set) => !text.includes(`--match-set ${set} `));
    if (missing.length > 0) {
      throw new TemplateError(
        `${this.sourceName(plan.policy)} rendered no rule for DNS name destinations (${
          plan.fqdn.join(", ")
        }): it must use each name's set (${missing.join(", ")})`,
      );
    }
    return text;
  }

  /** Both families, as the appliers take them. */
  renderAll(plan: RulePlan): RenderedRules {
    return { ipv4: this.render(plan, "ipv4"), ipv6: this.render(plan, "ipv6") };
  }
}

/** Rendered text per family. */
export interface RenderedRules {
  ipv4: string;
  ipv6: string;
  /**
   * Set entries to add with the rules (`ipset restore` lines), for rules by DNS name: what is already
   * known of protected names. Not part of the hash. The sets themselves are created from the texts.
   */
  ipset?: string;
  /** The DNS steering to write with the rules (an `nft -f` text), for rules by DNS name. Not hashed. */
  nft?: string;
}

/** The empty rule set `clear` writes: an ACCEPT filter table. */
export const CLEAR_TEXT =
  "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

/** SHA-256 of the rendered rules without comment lines, for "has anything changed" checks. */
export async function rulesHash(rules: RenderedRules): Promise<string> {
  // Comments (container name, ACL names) say nothing iptables acts on: text that differs only there is
  // the same rule set, so the gate's rules (rendered before Docker names the container) match the daemon's.
  const strip = (t: string) => t.split("\n").filter((l) => !l.trimStart().startsWith("#")).join("\n");
  const data = new TextEncoder().encode(`${strip(rules.ipv4)}\n--\n${strip(rules.ipv6)}`);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest.slice(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
}
