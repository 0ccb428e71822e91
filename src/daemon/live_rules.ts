/**
 * Live rules: one blocking-query watch on the KV prefix (or a file watch on --acl-dir) and one per
 * service the snapshot names, shared by every container. Reads are served from what the watches last
 * saw; a change reports which keys it touched so only affected containers are recomputed.
 */
import type { AclSnapshot, AclSource } from "../rules/acl_source.ts";
import { diffSnapshots, keysNaming, type RuleChange } from "../rules/change.ts";
import type { ConsulClient } from "../consul/client.ts";
import { watch } from "../consul/watch.ts";
import { serviceKey, type ServiceLookup, toInstances } from "../rules/services.ts";
import { serviceRulesOf, usesKey } from "../rules/plan.ts";
import type { Policy } from "../config/config.ts";
import type { ServiceRule } from "../rules/grammar.ts";
import { keyProblems, type RuleData, type RuleProvider } from "../rules/rule_cache.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "./metrics.ts";
import { describeError } from "../errors.ts";

/** Options of {@link LiveRules}. */
export interface LiveOptions {
  source: AclSource;
  consul?: ConsulClient;
  log: Logger;
  metrics: Metrics;
  signal: AbortSignal;
  /** Called (debounced) with what changed. */
  onChange: (change: RuleChange) => void;
  stale?: boolean;
  wait?: string;
  debounceMs?: number;
}

interface ServiceWatch {
  rule: ServiceRule;
  lookup?: ServiceLookup;
  ready: Promise<void>;
  stop: AbortController;
}

/** The watch-fed rule provider. */
export class LiveRules implements RuleProvider {
  private snapshot?: AclSnapshot;
  private readonly services = new Map<string, ServiceWatch>();
  private pending: RuleChange = { changed: new Set(), addedOrRemoved: new Set() };
  private timer?: ReturnType<typeof setTimeout>;
  private lastProblems = "";
  private firstKv?: Promise<void>;

  constructor(private readonly opts: LiveOptions) {}

  /** Start the KV (or directory) watch. */
  start(): void {
    let resolveFirst!: () => void;
    this.firstKv = new Promise((r) => (resolveFirst = r));
    const src = this.opts.source;
    void src.watch({
      onSnapshot: (snapshot) => (this.setSnapshot(snapshot), resolveFirst()),
      onError: (err, attempt) => {
        if (src.hasCatalog) this.watchError(src.description, err, attempt);
        else this.opts.log.error("reading ACL directory failed", { error: describeError(err) });
        resolveFirst();
      },
      signal: this.opts.signal,
      wait: this.opts.wait,
      stale: this.opts.stale,
      log: this.opts.log,
    });
    this.updateGauge();
  }

  private watchError(name: string, err: unknown, attempt: number) {
    this.opts.metrics.inc("egresstrator_consul_errors_total", "Failed Consul queries");
    const level = attempt === 1 ? "warn" : "debug";
    this.opts.log[level]("consul watch failed; retrying", {
      watch: name,
      attempt,
      error: describeError(err),
    });
  }

  private setSnapshot(next: AclSnapshot): void {
    const change = diffSnapshots(this.snapshot, next);
    const first = this.snapshot === undefined;
    this.snapshot = next;
    this.reportProblems();
    if (!first && (change.changed.size || change.addedOrRemoved.size)) this.queue(change);
  }

  private reportProblems(): void {
    if (!this.snapshot) return;
    const lines = keyProblems({
      snapshot: this.snapshot,
      services: this.lookups(),
      hasCatalog: this.opts.source.hasCatalog,
    });
    const text = lines.join("\n");
    if (text === this.lastProblems) return;
    this.lastProblems = text;
    for (const problem of lines) {
      this.opts.log.warn("acl problem", { source: this.opts.source.description, problem });
    }
  }

  private queue(change: RuleChange): void {
    change.changed.forEach((k) => this.pending.changed.add(k));
    change.addedOrRemoved.forEach((k) => this.pending.addedOrRemoved.add(k));
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      const c = this.pending;
      this.pending = { changed: new Set(), addedOrRemoved: new Set() };
      this.opts.onChange(c);
    }, this.opts.debounceMs ?? 50);
  }

  private lookups(): Map<string, ServiceLookup> {
    const out = new Map<string, ServiceLookup>();
    for (const [k, w] of this.services) if (w.lookup) out.set(k, w.lookup);
    return out;
  }

  /** Start a watch for a service unless one runs; resolves once it has a first answer (or error). */
  private ensureService(rule: ServiceRule): Promise<void> {
    const key = serviceKey(rule);
    const existing = this.services.get(key);
    if (existing) return existing.ready;
    const consul = this.opts.consul!;
    const stop = new AbortController();
    let resolveReady!: () => void;
    const w: ServiceWatch = { rule, stop, ready: new Promise((r) => (resolveReady = r)) };
    this.services.set(key, w);
    void watch({
      name: `service ${key}`,
      query: (index, signal, wait) =>
        consul.catalogService(rule.service, {
          tag: rule.tag,
          datacenter: rule.datacenter,
          index,
          wait,
          signal,
          stale: this.opts.stale,
        }),
      onChange: (data) => {
        const before = JSON.stringify(w.lookup);
        w.lookup = { ok: true, instances: toInstances(data) };
        resolveReady();
        if (before === JSON.stringify(w.lookup)) return;
        // Problems are worked out when the data changes, not on every read (reads are per container).
        this.reportProblems();
        if (before !== undefined && this.snapshot) {
          this.queue({ changed: keysNaming(this.snapshot, key), addedOrRemoved: new Set() });
        }
      },
      onError: (err, attempt) => {
        this.watchError(`service ${key}`, err, attempt);
        // Keep the last good answer; with none, record the failure so plans know they are incomplete.
        if (!w.lookup || !w.lookup.ok) {
          w.lookup = { ok: false, error: describeError(err) };
          this.reportProblems();
        }
        resolveReady();
      },
      signal: AbortSignal.any([this.opts.signal, stop.signal]),
      wait: this.opts.wait,
      log: this.opts.log,
    });
    this.updateGauge();
    return w.ready;
  }

  /** Drop service watches no enforced container needs any more. */
  prune(needed: Set<string>): void {
    for (const [key, w] of this.services) {
      if (needed.has(key)) continue;
      w.stop.abort();
      this.services.delete(key);
    }
    this.updateGauge();
  }

  /** The last snapshot seen, without starting any watch (for pruning). */
  current(): AclSnapshot | undefined {
    return this.snapshot;
  }

  /** Open watches: one for the prefix plus one per service. */
  watchCount(): number {
    return (this.firstKv ? 1 : 0) + this.services.size;
  }

  private updateGauge(): void {
    this.opts.metrics.set("egresstrator_consul_watches", "Open Consul/file watches", this.watchCount());
  }

  /** Current data; waits for the first answers. Throws when no ACL data could be had at all. */
  async get(signal?: AbortSignal, want?: { acls: string[]; policy: Policy }): Promise<RuleData> {
    await this.firstKv;
    if (!this.snapshot) {
      // The watch is failing: a direct read.
      this.snapshot = await this.opts.source.read(signal);
      this.reportProblems();
    }
    const snapshot = this.snapshot;
    // Only the services this plan renders: watches for the rest would be pruned and re-created in turn.
    const keep = want ? (key: string) => usesKey(want.policy, want.acls, key) : undefined;
    if (this.opts.consul) await Promise.all(serviceRulesOf(snapshot, keep).map((r) => this.ensureService(r)));
    return { snapshot, services: this.lookups(), hasCatalog: this.opts.source.hasCatalog, at: Date.now() };
  }
}
