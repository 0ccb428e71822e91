/**
 * The reconcile loop. Events and changes only mark containers dirty; workers (at most `concurrency`)
 * take dirty containers one at a time each, so one container is never worked on twice at once and
 * always ends up with the rules of its latest state. Failures are retried with backoff.
 */
import type { ContainerInfo } from "../docker/types.ts";
import type { Logger } from "../log.ts";
import { blankState, type ContainerState, type GateApplied, settledState } from "./state.ts";
import {
  enforce,
  type EnforceDeps,
  EnforceFailure,
  type EnforceOutcome,
  savedHash,
} from "../apply/enforce.ts";
import { driftPass } from "./drift.ts";
import type { RenderedRules } from "../render/renderer.ts";
import { describeError, DockerError } from "../errors.ts";

import { affectedBy, type Enforced } from "./affected.ts";
import type { RuleChange } from "../rules/change.ts";
import { type Metrics, recordDecision } from "./metrics.ts";
import { backoffDelay } from "../util/async.ts";
import { heldCaps } from "../apply/caps.ts";
import { EMPTY_RULES } from "../apply/applier.ts";
import { capRisk } from "../rules/isolation.ts";

/** The Docker calls the loop makes. */
export interface ReconcileDocker {
  inspectContainer(id: string, signal?: AbortSignal): Promise<ContainerInfo>;
  listContainers(
    opts?: { filters?: Record<string, string[]>; signal?: AbortSignal },
  ): Promise<{ id: string }[]>;
}

/** Options of {@link Reconciler}. */
export interface ReconcileOptions extends EnforceDeps {
  docker: ReconcileDocker;
  log: Logger;
  concurrency: number;
  /** Aborted only for a hard stop: in-flight applies finish on a normal shutdown. */
  signal: AbortSignal;
  retryMinMs?: number;
  retryMaxMs?: number;
  metrics?: Metrics;
  /** Sees every table read back (drift checks, baselines), counters included: the deny log's input. */
  onTablesRead?(s: ContainerState, rules: RenderedRules): void;
}

/** The loop. */
export class Reconciler {
  readonly states = new Map<string, ContainerState>();
  private readonly dirty = new Set<string>();
  private readonly inFlight = new Set<string>();
  private readonly timers = new Map<string, ReturnType<typeof setTimeout>>();
  /** When a container was first marked since its last decision (Docker's event time for starts). */
  private readonly markedAt = new Map<string, number>();
  private idleWaiters: (() => void)[] = [];
  private closed = false;
  /**
   * Containers marked by a start event this daemon saw: their namespace is new, and nothing but the gate
   * (whose write is adopted into `states`) has written to it.
   */
  private readonly fresh = new Set<string>();
  /** A drift pass is running: the next one is skipped rather than run beside it. */
  private resyncing = false;

  constructor(private readonly opts: ReconcileOptions) {}

  /** Mark one container for a (re)check; `at` (ms since epoch) starts its time-to-enforce clock. */
  mark(id: string, at = Date.now(), fresh = false): void {
    if (this.closed) return;
    if (fresh) this.fresh.add(id);
    if (!this.markedAt.has(id) || this.markedAt.get(id)! > at) this.markedAt.set(id, at);
    this.dirty.add(id);
    this.kick();
  }

  /**
   * Take over a container the runtime gate already enforced: its start event then finds the same hash
   * and applies nothing. A gate deny-all is adopted as "denied", so the real rules follow.
   */
  adopt(g: GateApplied, rendered?: RenderedRules): void {
    if (this.closed) return;
    const prev = this.states.get(g.id);
    if (prev && !prev.denied && prev.lastError === undefined && prev.hash === g.hash && prev.pid === g.pid) {
      return;
    }
    this.states.set(g.id, {
      id: g.id,
      name: prev?.name ?? g.id.slice(0, 12),
      acls: g.acls,
      policy: g.policy,
      audit: g.audit ?? false,
      hash: g.hash,
      savedHash: g.savedHash,
      ruleCount: g.ruleCount,
      mode: "gate",
      lastApplied: new Date().toISOString(),
      denied: g.denied,
      unfiltered: false,
      pid: g.pid,
      applied: rendered,
      attempts: 0,
    });
    this.opts.metrics?.inc(
      "egresstrator_gate_applies_total",
      "Rule sets the runtime gate applied before start",
      {
        denied: String(g.denied),
      },
    );
    if (g.denied) this.mark(g.id);
  }

  /** Mark the containers a rule change can touch; returns how many. */
  markAffected(change: RuleChange): number {
    const ids = affectedBy(change, this.enforced());
    // A first apply in flight has no state yet but may have read the old data: check it again after.
    for (const id of this.inFlight) if (!this.states.has(id)) ids.push(id);
    ids.forEach((id) => this.mark(id));
    return ids.length;
  }

  /** What the change and watch logic needs of each enforced container. */
  enforced(): Enforced[] {
    return [...this.states.values()].map((s) => ({
      id: s.id,
      acls: s.acls,
      policy: s.policy,
      unsettled: s.denied || s.unfiltered || s.lastError !== undefined,
    }));
  }

  /** Read every enforced container's tables back; re-apply where they no longer match. Returns repairs. */
  async resync(): Promise<number> {
    // Two passes at once would read and write one helper container name at the same time.
    if (this.resyncing || this.closed) return 0;
    this.resyncing = true;
    try {
      return await this.resyncPass();
    } finally {
      this.resyncing = false;
    }
  }

  private resyncPass(): Promise<number> {
    return driftPass({
      candidates: [...this.states.values()].filter((s) => s.savedHash && !this.inFlight.has(s.id)),
      current: (s) => !this.inFlight.has(s.id) && this.states.get(s.id) === s,
      repair: (s) => {
        this.opts.metrics?.inc(
          "egresstrator_drift_repairs_total",
          "Containers whose rules were changed by someone else",
        );
        this.opts.log.warn("rules drifted; re-applying", { container: s.name, id: s.id.slice(0, 12) });
        // What is in the namespace is someone else's now: no rollback text, a save first.
        this.states.set(s.id, { ...s, hash: undefined, savedHash: undefined, applied: undefined });
        this.mark(s.id);
      },
      concurrency: this.opts.concurrency,
      docker: this.opts.docker,
      applier: this.opts.applier,
      log: this.opts.log,
      signal: this.opts.signal,
      onRead: this.opts.onTablesRead,
    });
  }

  /**
   * Mark every running container (startup, reconnect, SIGHUP, resync), and forget the states of those
   * no longer running: missed die events must not leave ghosts in `/status` and the metrics.
   */
  async markAll(signal: AbortSignal): Promise<number> {
    const list = await this.opts.docker.listContainers({ filters: { status: ["running"] }, signal });
    const running = new Set(list.map((c) => c.id));
    for (const id of this.states.keys()) if (!running.has(id) && !this.inFlight.has(id)) this.forget(id);
    for (const c of list) this.mark(c.id);
    return list.length;
  }

  /** Drop a container that stopped or was removed. */
  forget(id: string): void {
    this.opts.dns?.release(id);
    this.states.delete(id);
    this.fresh.delete(id);
    this.markedAt.delete(id);
    this.dirty.delete(id);
    const t = this.timers.get(id);
    if (t !== undefined) clearTimeout(t);
    this.timers.delete(id);
  }

  /** Resolves when nothing is dirty or in flight (retries still pending do not count). */
  idle(): Promise<void> {
    if (this.dirty.size === 0 && this.inFlight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stop taking work, cancel retries, and wait for what is in flight. */
  async close(): Promise<void> {
    this.closed = true;
    this.dirty.clear();
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    await this.idle();
  }

  private kick(): void {
    for (const id of this.dirty) {
      if (this.inFlight.size >= this.opts.concurrency) break;
      if (this.inFlight.has(id)) continue;
      this.dirty.delete(id);
      this.inFlight.add(id);
      this.work(id).finally(() => {
        this.inFlight.delete(id);
        this.kick();
        if (this.dirty.size === 0 && this.inFlight.size === 0) {
          const waiters = this.idleWaiters;
          this.idleWaiters = [];
          waiters.forEach((w) => w());
        }
      });
    }
  }

  private retryLater(id: string, attempts: number): void {
    if (this.closed || this.timers.has(id)) return;
    const min = this.opts.retryMinMs ?? 1000;
    const max = this.opts.retryMaxMs ?? 30_000;
    const delay = backoffDelay(attempts + 1, min, max);
    this.timers.set(id, setTimeout(() => (this.timers.delete(id), this.mark(id)), delay));
  }

  private async work(id: string): Promise<void> {
    const { log, signal } = this.opts;
    const started = performance.now();
    const prev = this.states.get(id);
    const markedAt = this.markedAt.get(id) ?? Date.now();
    this.markedAt.delete(id);
    let info: ContainerInfo;
    try {
      info = await this.opts.docker.inspectContainer(id, signal);
    } catch (err) {
      if (err instanceof DockerError && err.status === 404) return this.forget(id);
      log.warn("inspect failed", { container: id.slice(0, 12), error: describeError(err) });
      return this.retryLater(id, prev?.attempts ?? 0);
    }
    // What was applied counts only for the namespace it went into: a restarted container (missed
    // die/start events, a dockerd restart) has a new one, whatever hash the old one held.
    const same = prev && (prev.pid === undefined || prev.pid === info.pid) ? prev : undefined;
    try {
      const fresh = this.fresh.delete(id) && !same;
      const previousRules = same?.applied ?? (fresh ? EMPTY_RULES : undefined);
      const out = await enforce(this.opts, {
        info,
        previousHash: same?.hash,
        previousRules,
        unknownNamespace: !fresh && !same,
        signal,
      });
      for (const note of out.notes) log.warn("acl problem", { container: info.name, problem: note });
      if (out.status === "skipped") {
        this.forget(id);
        log.debug("skipped", { container: info.name, reason: out.reason });
      } else if (out.status === "refused") {
        this.refuse(info, out.reason, prev);
      } else {
        await this.settle(info, out, same);
        this.logDecision(info, out, same, Math.round(performance.now() - started));
      }
      this.record(out.status, markedAt);
      if (out.status !== "skipped" && out.status !== "refused") await this.baseline(info, out.readBack);
    } catch (err) {
      if (signal.aborted) return;
      await this.failed(id, info, err, same);
    }
  }

  /**
   * Read the tables back once after a write (or a gate's write), for drift checks to compare with. Done
   * after the decision is recorded, so it is not part of the time to enforce; still in this worker, so no
   * apply of the same container runs beside it.
   */
  private async baseline(info: ContainerInfo, readBack?: RenderedRules): Promise<void> {
    const s = this.states.get(info.id);
    if (!s || s.savedHash) return;
    try {
      const target = { id: info.id, name: info.name, pid: info.pid };
      const read = readBack ?? await this.opts.applier.read(target, this.opts.signal);
      const hash = await savedHash(read);
      this.opts.onTablesRead?.(s, read);
      if (this.states.get(info.id) === s) this.states.set(info.id, { ...s, savedHash: hash });
    } catch (err) {
      this.opts.log.debug("reading rules back failed", { container: info.name, error: describeError(err) });
    }
  }

  /** Opted in without a namespace of its own: shown as not enforceable, warned about once. */
  private refuse(info: ContainerInfo, reason: string, prev?: ContainerState): void {
    if (prev?.refused !== reason) {
      this.opts.log.warn("not enforceable", { container: info.name, id: info.id.slice(0, 12), reason });
    }
    this.states.set(info.id, { ...blankState(info.id, info.name, this.opts.applier.mode), refused: reason });
  }

  private logDecision(
    info: ContainerInfo,
    out: Exclude<EnforceOutcome, { status: "skipped" | "refused" }>,
    same: ContainerState | undefined,
    ms: number,
  ): void {
    const fields = {
      container: info.name,
      id: info.id.slice(0, 12),
      acls: out.acls.join(","),
      policy: out.policy,
      ...(out.audit ? { audit: true } : {}),
      rules: out.ruleCount,
      mode: this.opts.applier.mode,
      ms,
    };
    if (out.status === "denied") {
      this.opts.log.error("deny-all applied: the real rules are not in place", {
        ...fields,
        error: out.error,
      });
      this.retryLater(info.id, same?.attempts ?? 0);
    } else this.opts.log[out.status === "applied" ? "info" : "debug"](out.status, fields);
  }

  private async settle(
    info: ContainerInfo,
    out: Exclude<EnforceOutcome, { status: "skipped" | "refused" }>,
    same?: ContainerState,
  ) {
    const caps = await heldCaps(info);
    if (caps.length > 0 && caps.join() !== same?.caps?.join()) {
      this.opts.log.warn("holds capabilities that get around its rules", {
        container: info.name,
        id: info.id.slice(0, 12),
        caps: caps.join(","),
        why: caps.map((c) => `${c}: ${capRisk(c)}`).join("; "),
        fix: "run it with --cap-drop NET_RAW (and without NET_ADMIN/SYS_ADMIN), or use the runtime gate",
      });
    }
    this.states.set(info.id, settledState(info, out, same, this.opts.applier.mode, caps));
  }

  private record(status: string, markedAt: number): void {
    if (this.opts.metrics) recordDecision(this.opts.metrics, this.opts.applier.mode, status, markedAt);
  }

  private async failed(id: string, info: ContainerInfo, err: unknown, prev?: ContainerState): Promise<void> {
    const { log } = this.opts;
    const notes = err instanceof EnforceFailure ? err.notes : [];
    for (const note of notes) log.warn("acl problem", { container: info.name, problem: note });
    // A container that stopped mid-apply is not an error worth retrying; one we cannot ask about is.
    const now = await this.opts.docker.inspectContainer(id, this.opts.signal).catch((e) =>
      e instanceof DockerError && e.status === 404 ? undefined : e as Error
    );
    if (now === undefined || (!(now instanceof Error) && !now.running)) {
      log.warn("container stopped during apply", { container: info.name, id: id.slice(0, 12) });
      return this.forget(id);
    }
    const attempts = (prev?.attempts ?? 0) + 1;
    const error = describeError(err);
    const unfiltered = (err instanceof EnforceFailure && err.unfiltered) || (prev?.unfiltered ?? false);
    const base = prev ?? blankState(id, info.name, this.opts.applier.mode);
    this.states.set(id, { ...base, lastError: error, attempts, unfiltered, pid: info.pid });
    const fields = { container: info.name, id: id.slice(0, 12), attempt: attempts, error };
    if (unfiltered) log.error("container is UNFILTERED: neither its rules nor deny-all are in place", fields);
    else log.error("apply failed", fields);
    this.record("failed", Date.now());
    this.retryLater(id, attempts);
  }

  /** Opted-in containers with nothing of ours in their namespace. */
  unfilteredCount(): number {
    return [...this.states.values()].filter((s) => s.unfiltered).length;
  }
}
