/**
 * Deny logging, the pure half shared by the renderer and the daemon: the LOG prefix that names a container
 * and the rule that refused (`egt:<id12>:<tag>:<D|A> `), the log chains a rule set needs, and reading the
 * packet counters of those chains back from `iptables-save -c`.
 *
 * The prefix holds only what the daemon derives itself: the container's id as Docker reports it (12 hex),
 * an 8-hex tag of the ACL key or fixed rule (FNV-1a of its name, so any daemon, after a restart too, maps it
 * back from the keys it knows) and D (denied) or A (audit). Nothing a container or a KV value controls.
 */
import type { Family } from "../rules/grammar.ts";

/** Labels of the fixed rules that refuse (an ACL key's own name is the label of its rules). */
export const FIXED_LABELS = ["allowlist", "deny-all", "dns-guard", "ntp"] as const;

/** The kernel's rate limit per log chain (per label and namespace): lines beyond it are only counted. */
export const LOG_LIMIT = "-m limit --limit 5/sec --limit-burst 10";

/** syslog level of the kernel's lines: info, so they never reach a console at the default loglevel. */
export const LOG_LEVEL = 6;

/** A log chain as templates see it: jump to `chain` with the packets about to be refused. */
export interface LogChain {
  /** The ACL key, or a fixed label (`allowlist`, `deny-all`, `dns-guard`, `ntp`). */
  label: string;
  /** Chain name, unique within one family's text. */
  chain: string;
  /** The LOG prefix, trailing space included (at most 29 characters: the kernel's limit). */
  prefix: string;
  /** The chain's one rule, ready to print: rate-limited LOG, then back to the caller. */
  rule: string;
}

/** 8 hex digits naming a label in a prefix (FNV-1a, 32 bits: stable across processes and versions). */
export function labelTag(label: string): string {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(label)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}

/** The 12-hex short id of a Docker container id, or "-" for anything else (never mapped back). */
export function shortId(id: string | undefined): string {
  return id && /^[0-9a-f]{12}/.test(id) ? id.slice(0, 12) : "-";
}

/** `egt:<id12>:<tag>:<D|A> ` */
export function logPrefix(containerId: string | undefined, label: string, audit: boolean): string {
  return `egt:${shortId(containerId)}:${labelTag(label)}:${audit ? "A" : "D"} `;
}

/** A prefix as the daemon reads it back. */
export interface PrefixFields {
  id12: string;
  tag: string;
  audit: boolean;
}

const PREFIX_RE = /^egt:([0-9a-f]{12}):([0-9a-f]{8}):([DA]) /;

/** Parse the prefix at the start of a kernel log message; undefined when it is not ours. */
export function parsePrefix(message: string): (PrefixFields & { rest: string }) | undefined {
  const m = PREFIX_RE.exec(message);
  if (!m) return undefined;
  return { id12: m[1], tag: m[2], audit: m[3] === "A", rest: message.slice(m[0].length) };
}

function chainFor(label: string, chain: string, containerId: string | undefined, audit: boolean): LogChain {
  const prefix = logPrefix(containerId, label, audit);
  return {
    label,
    chain,
    prefix,
    rule: `-A ${chain} ${LOG_LIMIT} -j LOG --log-prefix "${prefix}" --log-level ${LOG_LEVEL}`,
  };
}

/** What {@link logChains} needs of a plan. */
export interface LogPlan {
  policy: "protect" | "allowlist";
  denyLog: boolean;
  denyAll: boolean;
  audit: boolean;
  container: { id: string } | null;
  protected: { key: string; destinations: { family: Family }[]; names?: unknown[] }[];
}

/** The log chains of one family's text: the fixed ones, and under protect one per key that renders a rule. */
export interface LogContext {
  /** Every chain the text uses: declare each and print its rule. Empty with `--deny-log off`. */
  chains: LogChain[];
  /** The final reject of allowlist (label `deny-all` for the deny-all set); null under protect. */
  allowlist: LogChain | null;
  dnsGuard: LogChain | null;
  ntp: LogChain | null;
  /** Per protected key (same order as the plan's), null when it has no destination in this family. */
  protected: (LogChain | null)[];
}

/** The log chains for one family of a plan (pure). */
export function logChains(plan: LogPlan, family: Family): LogContext {
  if (!plan.denyLog) {
    return {
      chains: [],
      allowlist: null,
      dnsGuard: null,
      ntp: null,
      protected: plan.protected.map(() => null),
    };
  }
  const id = plan.container?.id;
  const mk = (label: string, chain: string) => chainFor(label, chain, id, plan.audit);
  const allowlist = plan.policy === "allowlist"
    ? mk(plan.denyAll ? "deny-all" : "allowlist", "egt-log-allow")
    : null;
  const dnsGuard = mk("dns-guard", "egt-log-dns");
  const ntp = mk("ntp", "egt-log-ntp");
  const prot = plan.policy === "protect"
    ? plan.protected.map((a, i) =>
      a.destinations.some((d) => d.family === family) || (a.names?.length ?? 0) > 0
        ? mk(a.key, `egt-log-k${i}`)
        : null
    )
    : plan.protected.map(() => null);
  const chains = [allowlist, dnsGuard, ntp, ...prot].filter((c): c is LogChain => c !== null);
  return { chains, allowlist, dnsGuard, ntp, protected: prot };
}

/** Packets sent to the log chains of one saved text, by prefix (`egt:<id12>:<tag>:<D|A> `). */
export function logCounters(saved: string): Map<string, number> {
  const chainPrefix = new Map<string, string>();
  const jumps: { chain: string; packets: number }[] = [];
  for (const raw of saved.split("\n")) {
    const m = /^\[(\d+):\d+\]\s+-A\s+(\S+)\s+(.*)$/.exec(raw.trim());
    if (!m) continue;
    const [, packets, chain, rest] = m;
    const log = / -j LOG .*--log-prefix "(egt:[0-9a-f]{12}:[0-9a-f]{8}:[DA] )"/.exec(` ${rest}`);
    if (log && chain.startsWith("egt-log-")) chainPrefix.set(chain, log[1]);
    const target = /(?:^| )-j (egt-log-[A-Za-z0-9-]+)(?: |$)/.exec(rest);
    if (target) jumps.push({ chain: target[1], packets: Number(packets) });
  }
  const out = new Map<string, number>();
  for (const j of jumps) {
    const prefix = chainPrefix.get(j.chain);
    if (prefix && Number.isSafeInteger(j.packets)) out.set(prefix, (out.get(prefix) ?? 0) + j.packets);
  }
  return out;
}

/** Map tags back to labels: the fixed ones and the given ACL keys (a tag two names share maps to neither). */
export function tagIndex(keys: Iterable<string>): Map<string, string> {
  const out = new Map<string, string>();
  const clash = new Set<string>();
  for (const label of [...FIXED_LABELS, ...keys]) {
    const t = labelTag(label);
    if (out.has(t) && out.get(t) !== label) clash.add(t);
    else out.set(t, label);
  }
  for (const t of clash) out.delete(t);
  return out;
}
