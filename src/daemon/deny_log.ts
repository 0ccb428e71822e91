/**
 * The deny log: from the kernel's lines and the log chains' packet counters to one `denied` (or `audit`)
 * line per refused NEW connection, bounded per container, metrics counted whether a line was written or
 * not, and a short memory of what each container was refused (what `suggest` turns into ACL lines).
 *
 * Two sources, because the kernel rule is rate-limited: a line names the destination, a counter counts
 * every packet the rule refused. The count of a (container, label) is the larger of the lines seen and
 * the counters' sum; what no line was written for is reported as "N more suppressed".
 */
import type { Logger } from "../log.ts";
import type { Metrics } from "./metrics.ts";
import type { RenderedRules } from "../render/renderer.ts";
import { logCounters, parsePrefix } from "../render/deny_log.ts";
import { type DenyEvent, parseDenyMessage } from "./kmsg.ts";

/** What the deny log needs to know of an enforced container. */
export interface DenyTarget {
  id: string;
  name: string;
  /** When its rules were last written (ISO time): counters start again at 0 then. */
  epoch?: string;
}

/** Options of {@link DenyLog}. */
export interface DenyLogOptions {
  log: Logger;
  metrics: Metrics;
  /** The enforced container whose id starts with these 12 hex digits. */
  lookup(id12: string): DenyTarget | undefined;
  /** Label (ACL key or fixed rule) by tag. */
  labels(): Map<string, string>;
  /** Read a container's tables back with counters; absent: counters come from drift checks only. */
  read?(t: DenyTarget): Promise<RenderedRules>;
  now?: () => number;
  /** Lines per second per container (default 10, burst as many). */
  linesPerSecond?: number;
  /** How long `suggest` remembers a destination (default 1 h). */
  windowMs?: number;
}

/** One destination a container was refused (or would have been, in audit mode). */
export interface SeenEntry {
  acl: string;
  audit: boolean;
  proto: string;
  dst: string;
  dport?: number;
  count: number;
  first: string;
  last: string;
}

interface Count {
  label: string;
  audit: boolean;
  lines: number;
  fromCounters: number;
  /** What the metric holds: max(lines, fromCounters). */
  counted: number;
}

interface Tracker {
  target: DenyTarget;
  tokens: number;
  refilled: number;
  counts: Map<string, Count>;
  emitted: number;
  reported: number;
  lastSummary: number;
  dirty: boolean;
  polling: boolean;
  lastPoll: number;
  epoch?: string;
  /** Last counter value per prefix in this epoch. */
  base: Map<string, number>;
  seen: Map<string, SeenEntry & { at: number }>;
}

const POLL_MS = 2000;
const SUMMARY_MS = 5000;
const MAX_SEEN = 512;
const MAX_POLLS = 2;

const METRIC = {
  denied: ["egresstrator_denied_total", "NEW connections refused, by container and ACL key or fixed rule"],
  audit: ["egresstrator_audited_total", "NEW connections audit mode let through that the rules would refuse"],
} as const;

/** The deny log of one daemon. */
export class DenyLog {
  private readonly trackers = new Map<string, Tracker>();
  private readonly now: () => number;
  private readonly rate: number;
  private readonly windowMs: number;
  private polls = 0;

  constructor(private readonly opts: DenyLogOptions) {
    this.now = opts.now ?? Date.now;
    this.rate = opts.linesPerSecond ?? 10;
    this.windowMs = opts.windowMs ?? 3_600_000;
  }

  /** One kernel log message (anything: lines that are not ours are ignored). Never throws. */
  message(text: string): void {
    if (!text.startsWith("egt:")) return;
    const ev = parseDenyMessage(text);
    const target = ev && this.opts.lookup(ev.id12);
    if (!ev || !target) {
      this.opts.metrics.inc(
        "egresstrator_deny_log_unmatched_total",
        "Kernel log lines with our prefix that name no enforced container (or are malformed)",
      );
      return;
    }
    const t = this.tracker(target);
    const label = this.opts.labels().get(ev.tag) ?? "unknown";
    const c = this.count(t, label, ev.audit);
    c.lines++;
    this.bump(t, c);
    this.remember(t, label, ev);
    t.dirty = true;
    if (!this.take(t)) return;
    t.emitted++;
    this.opts.log.info(ev.audit ? "audit" : "denied", {
      container: target.name,
      id: target.id.slice(0, 12),
      acl: label,
      proto: ev.proto,
      dst: ev.dst,
      ...(ev.dport === undefined ? {} : { dport: ev.dport }),
    });
  }

  /** A container's tables as read back (`iptables-save -c`): counts what the log chains were sent. */
  counters(target: DenyTarget, rules: RenderedRules): void {
    const t = this.tracker(target);
    // Epochs are the times the rules were written (ISO, so they sort): a read from before the latest
    // write is stale, one from after it starts the counters again.
    if ((target.epoch ?? "") < (t.epoch ?? "")) return;
    if (target.epoch !== t.epoch) (t.base = new Map(), t.epoch = target.epoch);
    const seen = new Map<string, number>();
    for (const text of [rules.ipv4, rules.ipv6]) {
      for (const [prefix, n] of logCounters(text)) seen.set(prefix, (seen.get(prefix) ?? 0) + n);
    }
    let grew = false;
    const labels = this.opts.labels();
    for (const [prefix, value] of seen) {
      const p = parsePrefix(prefix);
      if (!p || p.id12 !== target.id.slice(0, 12)) continue;
      const last = t.base.get(prefix) ?? 0;
      // Counters start again at 0 when the rules are written: a smaller value is a new start.
      const delta = value >= last ? value - last : value;
      t.base.set(prefix, value);
      if (delta === 0) continue;
      const c = this.count(t, labels.get(p.tag) ?? "unknown", p.audit);
      c.fromCounters += delta;
      this.bump(t, c);
      grew = true;
    }
    // Still moving: look again soon, so the count settles shortly after a burst ends.
    if (grew) t.dirty = true;
  }

  /** Once a second: "N more suppressed" lines, counter reads for active containers, forgetting. */
  tick(): void {
    const now = this.now();
    for (const [id, t] of this.trackers) {
      const target = this.opts.lookup(id.slice(0, 12));
      if (!target || target.id !== id) {
        this.drop(id, t);
        continue;
      }
      t.target = target;
      this.summarise(t, now);
      this.poll(t, now);
      for (const [k, e] of t.seen) if (now - e.at > this.windowMs) t.seen.delete(k);
    }
  }

  /** Refused (or audited) connections counted for a container since the daemon started. */
  total(id: string): number {
    let n = 0;
    for (const c of this.trackers.get(id)?.counts.values() ?? []) n += c.counted;
    return n;
  }

  /** What a container was refused within the window, most recent first. */
  seen(id: string): SeenEntry[] {
    const t = this.trackers.get(id);
    if (!t) return [];
    const since = this.now() - this.windowMs;
    // The map is in least-recently-seen order: reversed, ties stay most recent first.
    return [...t.seen.values()].reverse().filter((e) => e.at >= since).sort((a, b) => b.at - a.at).map((
      { at: _at, ...e },
    ) => e);
  }

  private tracker(target: DenyTarget): Tracker {
    let t = this.trackers.get(target.id);
    if (!t) {
      t = {
        target,
        tokens: this.rate,
        refilled: this.now(),
        counts: new Map(),
        emitted: 0,
        reported: 0,
        lastSummary: 0,
        dirty: false,
        polling: false,
        lastPoll: 0,
        epoch: undefined,
        base: new Map(),
        seen: new Map(),
      };
      this.trackers.set(target.id, t);
    }
    // Keep the newest view of the container, but not an older one a slow read still holds.
    if ((target.epoch ?? "") >= (t.target.epoch ?? "")) t.target = target;
    return t;
  }

  private count(t: Tracker, label: string, audit: boolean): Count {
    const key = `${audit ? "A" : "D"}|${label}`;
    let c = t.counts.get(key);
    if (!c) t.counts.set(key, c = { label, audit, lines: 0, fromCounters: 0, counted: 0 });
    return c;
  }

  private bump(t: Tracker, c: Count): void {
    const value = Math.max(c.lines, c.fromCounters);
    if (value <= c.counted) return;
    const [name, help] = c.audit ? METRIC.audit : METRIC.denied;
    this.opts.metrics.inc(name, help, { container: t.target.name, acl: c.label }, value - c.counted);
    c.counted = value;
  }

  /** A token from the container's bucket (refilled at `rate` per second, holding at most `rate`). */
  private take(t: Tracker): boolean {
    const now = this.now();
    t.tokens = Math.min(this.rate, t.tokens + ((now - t.refilled) / 1000) * this.rate);
    t.refilled = now;
    if (t.tokens < 1) return false;
    t.tokens--;
    return true;
  }

  private remember(t: Tracker, acl: string, ev: DenyEvent): void {
    const key = `${ev.audit ? "A" : "D"}|${acl}|${ev.proto}|${ev.dst}|${ev.dport ?? ""}`;
    const now = this.now();
    const iso = new Date(now).toISOString();
    const e = t.seen.get(key);
    if (e) {
      e.count++;
      e.last = iso;
      e.at = now;
      t.seen.delete(key);
      t.seen.set(key, e);
      return;
    }
    // Map order is insertion order, refreshed above: the first entry is the least recently seen.
    if (t.seen.size >= MAX_SEEN) t.seen.delete(t.seen.keys().next().value!);
    const { proto, dst, dport, audit } = ev;
    t.seen.set(key, { acl, audit, proto, dst, dport, count: 1, first: iso, last: iso, at: now });
  }

  private summarise(t: Tracker, now: number): void {
    let total = 0;
    for (const c of t.counts.values()) total += c.counted;
    const pending = total - t.emitted - t.reported;
    if (pending <= 0 || now - t.lastSummary < SUMMARY_MS) return;
    t.reported += pending;
    t.lastSummary = now;
    this.opts.log.info("more suppressed", {
      container: t.target.name,
      id: t.target.id.slice(0, 12),
      count: pending,
      why: "over the rate limit: counted (egresstrator_denied_total), not logged",
    });
  }

  private poll(t: Tracker, now: number): void {
    const read = this.opts.read;
    if (!read || !t.dirty || t.polling || now - t.lastPoll < POLL_MS || this.polls >= MAX_POLLS) return;
    t.dirty = false;
    t.polling = true;
    t.lastPoll = now;
    this.polls++;
    const target = t.target;
    read(target).then((rules) => this.counters(target, rules), () => {/* gone, or busy: next time */})
      .finally(() => (t.polling = false, this.polls--));
  }

  private drop(id: string, t: Tracker): void {
    this.trackers.delete(id);
    for (const c of t.counts.values()) {
      const [name] = c.audit ? METRIC.audit : METRIC.denied;
      this.opts.metrics.remove(name, { container: t.target.name, acl: c.label });
    }
  }
}
