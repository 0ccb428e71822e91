/**
 * The plan (pure): from all ACL keys, a container's ACL list, resolved services and the policy, work
 * out which destinations are allowed and which are protected. Rendering turns the plan into text.
 */
import type { Policy } from "../config/config.ts";
import type { Family, PortRange, Proto, Rule, RuleProblem } from "./grammar.ts";
import { formatRule } from "./grammar.ts";
import { commentSafe, displayText } from "../util/text.ts";
import type { AclSnapshot } from "./acl_source.ts";
import { serviceKey, type ServiceLookup } from "./services.ts";
import { formatAddress, parseAddress } from "./ip.ts";

/** One destination a rule names, after service resolution. */
export interface Destination {
  family: Family;
  /** `address/prefix`. */
  cidr: string;
  proto: Proto;
  ports: PortRange;
  /** Where it came from, canonical and safe to print: `10.0.0.0/8:tcp/80` or `db (node1 10.0.0.5:5432)`. */
  origin: string;
}

/** A destination by DNS name: its addresses live in a set per family that DNS answers fill. */
export interface NameDestination {
  /** `api.example.com` or `*.example.com` (canonical). */
  pattern: string;
  proto: Proto;
  ports: PortRange;
  /** The rule as written, canonical: `api.example.com:tcp/443`. */
  origin: string;
}

/** An ACL key with its resolved destinations. */
export interface PlannedAcl {
  key: string;
  destinations: Destination[];
  /** Destinations by DNS name (both families). */
  names: NameDestination[];
}

/** Which container a plan is for (absent for `render --rules`). */
export interface ContainerRef {
  id: string;
  name: string;
}

/** Everything the templates need, for both families. */
export interface RulePlan {
  policy: Policy;
  container: ContainerRef | null;
  /** The container's ACL list, as asked. */
  acls: string[];
  /** Names in the list that no key under the prefix has. */
  missing: string[];
  /** Keys in the container's list. */
  allowed: PlannedAcl[];
  /** Keys not in the list (the protect policy rejects these). */
  protected: PlannedAcl[];
  dnsResolvers: { ipv4: string[]; ipv6: string[] };
  problems: RuleProblem[];
  /** Services whose lookup failed: the plan is incomplete and should not replace a good one. */
  unresolved: string[];
  /** Audit mode: the same rules, but what they would refuse is logged and accepted. */
  audit: boolean;
  /** Refused (or, in audit mode, would-be refused) NEW connections are logged through rate-limited chains. */
  denyLog: boolean;
  /** The deny-all set (allowlist with nothing allowed), put in when the real rules cannot be had. */
  denyAll: boolean;
  /**
   * The DNS-name patterns this container's rules use (allowed keys under allowlist, protected keys under
   * protect), sorted: what its DNS answers must be watched for. Empty: no sets, no DNS steering.
   */
  fqdn: string[];
}

/** Input of {@link buildPlan}. */
export interface PlanInput {
  snapshot: AclSnapshot;
  acls: string[];
  services: Map<string, ServiceLookup>;
  policy: Policy;
  dnsResolvers: readonly string[];
  container?: ContainerRef;
  /** False for `--acl-dir`: service rules are problems there. */
  hasCatalog: boolean;
  /** Report-only plans: services not looked up yet are skipped, not errors. */
  skipUnlooked?: boolean;
  /** Audit mode (default false). */
  audit?: boolean;
  /** Log refused connections (default true). */
  denyLog?: boolean;
  /** This is the deny-all set (default false). */
  denyAll?: boolean;
}

/** Split a comma list like EGRESSTRATOR_ACL: trimmed, empty entries dropped, duplicates removed. */
export function parseAclList(value: string | undefined): string[] {
  if (!value) return [];
  return [...new Set(value.split(",").map((s) => s.trim()).filter(Boolean))];
}

function instanceDestination(rule: Rule, inst: { node: string; address: string; port: number }) {
  const name = formatRule(rule);
  // Catalog names are Consul's, not ours: keep only what is safe in a comment or a log line.
  const node = commentSafe(inst.node, 64);
  const addr = parseAddress(inst.address);
  if (!addr) {
    return `${name}: instance on node ${node} has address "${displayText(inst.address)}", not an IP; skipped`;
  }
  if (!Number.isInteger(inst.port) || inst.port < 1 || inst.port > 65535) {
    return `${name}: instance on node ${node} has no port (${Number(inst.port)}); skipped`;
  }
  const address = formatAddress(addr.family, addr.bytes);
  const prefix = addr.family === "ipv4" ? 32 : 128;
  const d: Destination = {
    family: addr.family,
    cidr: `${address}/${prefix}`,
    proto: "tcp",
    ports: { from: inst.port, to: inst.port },
    origin: `${name} (${node} ${address} port ${inst.port})`,
  };
  return d;
}

/** Whether a key's destinations end up in the rules: protect rejects unlisted keys, allowlist accepts listed. */
export function usesKey(policy: Policy, acls: readonly string[], key: string): boolean {
  return policy === "protect" ? !acls.includes(key) : acls.includes(key);
}

function namesOf(rules: Rule[]): NameDestination[] {
  const seen = new Set<string>();
  const out: NameDestination[] = [];
  for (const r of rules) {
    if (r.kind !== "fqdn") continue;
    const origin = formatRule(r);
    if (seen.has(origin)) continue;
    seen.add(origin);
    out.push({ pattern: r.pattern, proto: r.proto, ports: r.ports, origin });
  }
  return out;
}

function destinationsOf(
  rules: Rule[],
  input: PlanInput,
  problems: RuleProblem[],
  unresolved: Set<string>,
  used: boolean,
) {
  const out: Destination[] = [];
  for (const rule of rules) {
    const where = { key: rule.key, line: rule.line, text: formatRule(rule) };
    if (rule.kind === "fqdn") continue;
    if (rule.kind === "cidr") {
      out.push({
        family: rule.family,
        cidr: rule.cidr,
        proto: rule.proto,
        ports: rule.ports,
        origin: where.text,
      });
      continue;
    }
    if (!input.hasCatalog) {
      problems.push({
        ...where,
        reason: "service rules need Consul's catalog, and --acl-dir has none",
        severity: "error",
      });
      continue;
    }
    const found = input.services.get(serviceKey(rule));
    // A key whose destinations this policy does not render needs no lookup; a used one must have one.
    if (!found && (!used || input.skipUnlooked)) continue;
    if (found && !found.ok && !used) continue;
    if (!found || !found.ok) {
      const why = found ? found.error : "service was not looked up";
      unresolved.add(serviceKey(rule));
      problems.push({ ...where, reason: `service lookup failed: ${why}`, severity: "error" });
      continue;
    }
    if (found.instances.length === 0) {
      problems.push({ ...where, reason: "service has no instances in the catalog", severity: "warning" });
    }
    for (const inst of found.instances) {
      const d = instanceDestination(rule, inst);
      if (typeof d === "string") problems.push({ ...where, reason: d, severity: "warning" });
      else out.push(d);
    }
  }
  return dedupe(out);
}

function dedupe(ds: Destination[]): Destination[] {
  const seen = new Set<string>();
  return ds.filter((d) => {
    const k = `${d.cidr}|${d.proto}|${d.ports.from}|${d.ports.to}`;
    return seen.has(k) ? false : (seen.add(k), true);
  });
}

/** Split configured resolvers by family (they were validated when the Config was built). */
export function resolversByFamily(list: readonly string[]): { ipv4: string[]; ipv6: string[] } {
  const out = { ipv4: [] as string[], ipv6: [] as string[] };
  for (const r of list) {
    const [addr, prefix] = r.split("/");
    const p = parseAddress(addr);
    if (!p) continue;
    const text = formatAddress(p.family, p.bytes);
    out[p.family].push(`${text}/${prefix ?? (p.family === "ipv4" ? 32 : 128)}`);
  }
  return out;
}

/** Build the plan. Never throws: every problem lands in `problems`. */
export function buildPlan(input: PlanInput): RulePlan {
  const problems: RuleProblem[] = [...input.snapshot.problems];
  const wanted = new Set(input.acls);
  const present = new Set(input.snapshot.entries.map((e) => e.key));
  const allowed: PlannedAcl[] = [];
  const protectedAcls: PlannedAcl[] = [];
  const unresolved = new Set<string>();
  for (const entry of input.snapshot.entries) {
    problems.push(...entry.problems);
    const planned = {
      key: entry.key,
      destinations: destinationsOf(
        entry.rules,
        input,
        problems,
        unresolved,
        usesKey(input.policy, input.acls, entry.key),
      ),
      names: namesOf(entry.rules),
    };
    (wanted.has(entry.key) ? allowed : protectedAcls).push(planned);
  }
  const used = input.policy === "protect" ? protectedAcls : allowed;
  const fqdn = [...new Set(used.flatMap((a) => a.names.map((n) => n.pattern)))].sort();
  const missing = input.acls.filter((a) => !present.has(a));
  for (const m of missing) {
    problems.push({
      key: displayText(m),
      line: 0,
      text: "",
      reason: "ACL key not found",
      severity: "warning",
    });
  }
  return {
    policy: input.policy,
    container: input.container ?? null,
    acls: [...input.acls],
    missing,
    allowed,
    protected: protectedAcls,
    dnsResolvers: resolversByFamily(input.dnsResolvers),
    problems,
    unresolved: [...unresolved],
    audit: input.audit ?? false,
    denyLog: input.denyLog ?? true,
    denyAll: input.denyAll ?? false,
    fqdn,
  };
}

/** The service rules a snapshot references (what must be looked up before planning). */
export function serviceRulesOf(snapshot: AclSnapshot, keep: (key: string) => boolean = () => true) {
  return snapshot.entries.filter((e) => keep(e.key)).flatMap((e) => e.rules).filter((r) =>
    r.kind === "service"
  );
}
