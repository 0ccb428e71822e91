/**
 * `suggest`, the pure half: from what a container was refused (or audited), the ACL lines that would let
 * exactly that through under allowlist. One line per destination and protocol with its ports merged into
 * ranges where they are consecutive, or `<tag>.<service>` where the destination is a catalog instance
 * (address and port). Every line is parsed back with the rule grammar before it is offered: a catalog name
 * that is not a valid rule never reaches the output.
 */
import { type CidrRule, formatRule, parseRuleLine, type Proto } from "./grammar.ts";
import { parseAddress } from "./ip.ts";

/** One refused destination, as the daemon remembers it. */
export interface SeenDestination {
  /** The ACL key whose rule refused it, or a fixed label (allowlist, deny-all, dns-guard, ntp). */
  acl: string;
  proto: string;
  dst: string;
  dport?: number;
  count: number;
}

/** A catalog instance: which service (and tags) an address and port belong to. */
export interface CatalogInstance {
  service: string;
  tags: string[];
  address: string;
  port: number;
}

/** What `suggest` prints: lines for the KV value, and notes on what no ACL line can let through. */
export interface Suggestion {
  lines: string[];
  notes: string[];
}

/** Merge sorted, distinct ports into ranges of consecutive ports. */
export function mergePorts(ports: number[]): { from: number; to: number }[] {
  const sorted = [...new Set(ports)].filter((p) => Number.isInteger(p) && p >= 1 && p <= 65535)
    .sort((a, b) => a - b);
  const out: { from: number; to: number }[] = [];
  for (const p of sorted) {
    const last = out[out.length - 1];
    if (last && p === last.to + 1) last.to = p;
    else out.push({ from: p, to: p });
  }
  return out;
}

/** `tag.service` (or `service`) for an instance, if it parses back as that rule. */
function serviceLine(inst: CatalogInstance): string | undefined {
  const text = inst.tags.length ? `${inst.tags[0]}.${inst.service}` : inst.service;
  const parsed = parseRuleLine(text);
  const r = parsed.ok ? parsed.rule : null;
  if (!r || r.kind !== "service") return undefined;
  return r.service === inst.service && (r.tag ?? "") === (inst.tags[0] ?? "") && !r.datacenter
    ? formatRule(r)
    : undefined;
}

function byAddress(a: string, b: string): number {
  const pa = parseAddress(a)!, pb = parseAddress(b)!;
  if (pa.family !== pb.family) return pa.family === "ipv4" ? -1 : 1;
  for (let i = 0; i < pa.bytes.length; i++) if (pa.bytes[i] !== pb.bytes[i]) return pa.bytes[i] - pb.bytes[i];
  return 0;
}

function sameAddress(a: string, b: string): boolean {
  const pa = parseAddress(a), pb = parseAddress(b);
  return !!pa && !!pb && pa.family === pb.family && pa.bytes.every((x, i) => x === pb.bytes[i]);
}

function noteFor(e: SeenDestination, policy: string): string | undefined {
  const where = `${e.proto}${e.dport === undefined ? "" : "/" + e.dport} to ${e.dst}`;
  if (e.acl === "dns-guard") return `${where}: DNS goes only to the --dns resolvers; no ACL line opens it`;
  if (e.acl === "ntp") return `${where}: NTP (udp/123) is always refused`;
  if (e.acl === "unknown") return `${where}: refused by a rule no longer known; skipped`;
  if (e.acl === "deny-all" && policy !== "allowlist") {
    return `${where}: refused by deny-all while the real rules could not be had; skipped`;
  }
  if (e.acl !== "allowlist" && e.acl !== "deny-all") {
    return `${where}: refused by ACL key "${e.acl}": list it in EGRESSTRATOR_ACL to reach it`;
  }
  if ((e.proto !== "tcp" && e.proto !== "udp") || e.dport === undefined) {
    return `${where}: ACL lines name tcp or udp ports only; skipped`;
  }
  if (!parseAddress(e.dst)) return `${where}: not an address; skipped`;
  return undefined;
}

/** The ACL lines (and notes) for what a container was seen refused (pure). */
export function suggestLines(
  seen: SeenDestination[],
  opts: { policy: string; catalog?: CatalogInstance[] },
): Suggestion {
  const notes = new Set<string>();
  const services = new Set<string>();
  const ports = new Map<string, { dst: string; proto: Proto; ports: number[] }>();
  for (const e of seen) {
    const note = noteFor(e, opts.policy);
    if (note) {
      notes.add(note);
      continue;
    }
    const proto = e.proto as Proto;
    const inst = proto === "tcp"
      ? opts.catalog?.find((i) => i.port === e.dport && sameAddress(i.address, e.dst))
      : undefined;
    const svc = inst && serviceLine(inst);
    if (svc) {
      services.add(svc);
      continue;
    }
    const key = `${e.dst}|${proto}`;
    const g = ports.get(key) ?? { dst: e.dst, proto, ports: [] };
    g.ports.push(e.dport!);
    ports.set(key, g);
  }
  const groups = [...ports.values()].sort((a, b) =>
    byAddress(a.dst, b.dst) || a.proto.localeCompare(b.proto)
  );
  const lines: string[] = [];
  for (const g of groups) {
    const addr = parseAddress(g.dst)!;
    const prefix = addr.family === "ipv4" ? 32 : 128;
    for (const range of mergePorts(g.ports)) {
      const rule: CidrRule = {
        kind: "cidr",
        family: addr.family,
        address: g.dst,
        prefix,
        cidr: `${g.dst}/${prefix}`,
        proto: g.proto,
        ports: range,
      };
      lines.push(formatRule(rule));
    }
  }
  lines.push(...[...services].sort());
  return { lines, notes: [...notes] };
}
