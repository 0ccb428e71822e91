/**
 * The reconcile loop. Events and changes only mark containers dirty; workers (at most `concurrency`)
 * take dirty containers one at a time each, so one container is never worked on twice at once and
 * always ends up with the rules of its latest state. Failures are retried with backoff.
 */
import type { ContainerInfo } from "./docker/types.ts";
import type { Logger } from "./log.ts";
import type { Policy } from "./config.ts";
import { enforce, type EnforceDeps, EnforceFailure } from "./enforce.ts";
import { describeError, DockerError } from "./errors.ts";

/** What the loop remembers per enforced container (also what `/status` shows). */
export interface ContainerState {
  id: string;
  name: string;
  acls: string[];
  policy: Policy;
  hash?: string;
  ruleCount: number;
  mode: string;
  lastApplied?: string;
  lastError?: string;
  /** True while the container holds the deny-all set because its real rules could not be built. */
  denied: boolean;
  attempts: number;
}

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
  /** Called after every decision (metrics, tests). */
  onDecision?: (id: string, status: string, ms: number) => void;
}

/** The loop. */
export class Reconciler {
  readonly states = new Map<string, ContainerState>();
  private readonly dirty = new Set<string>();
  private readonly inFlight = new Set<string>();
  private readonly timers = new Map<string, ReturnType<typeof setTimeout>>();
  private idleWaiters: (() => void)[] = [];
  private closed = false;

  constructor(private readonly opts: ReconcileOptions) {}

  /** Mark one container for a (re)check. */
  mark(id: string): void {
    if (this.closed) return;
    this.dirty.add(id);
    this.kick();
  }

  /** Mark every running container (startup, reconnect, SIGHUP). */
  async markAll(signal: AbortSignal): Promise<number> {
    const list = await this.opts.docker.listContainers({ filters: { status: ["running"] }, signal });
    for (const c of list) this.mark(c.id);
    return list.length;
  }

  /** Drop a container that stopped or was removed. */
  forget(id: string): void {
    this.states.delete(id);
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
    const delay = Math.min(max, min * 2 ** Math.min(attempts, 10)) * (0.5 + Math.random() / 2);
    this.timers.set(id, setTimeout(() => (this.timers.delete(id), this.mark(id)), delay));
  }

  private async work(id: string): Promise<void> {
    const { log, signal } = this.opts;
    const started = performance.now();
    const prev = this.states.get(id);
    let info: ContainerInfo;
    try {
      info = await this.opts.docker.inspectContainer(id, signal);
    } catch (err) {
      if (err instanceof DockerError && err.status === 404) return this.forget(id);
      log.warn("inspect failed", { container: id.slice(0, 12), error: describeError(err) });
      return this.retryLater(id, prev?.attempts ?? 0);
    }
    try {
      const out = await enforce(this.opts, { info, previousHash: prev?.hash, signal });
      const ms = Math.round(performance.now() - started);
      for (const note of out.notes) log.warn("acl problem", { container: info.name, problem: note });
      if (out.status === "skipped") {
        this.forget(id);
        log.debug("skipped", { container: info.name, reason: out.reason });
      } else {
        this.states.set(id, {
          id,
          name: info.name,
          acls: out.acls,
          policy: out.policy,
          hash: out.hash,
          ruleCount: out.ruleCount,
          mode: this.opts.applier.mode,
          lastApplied: out.status === "unchanged" ? prev?.lastApplied : new Date().toISOString(),
          lastError: out.error,
          denied: out.status === "denied",
          attempts: out.status === "denied" ? (prev?.attempts ?? 0) + 1 : 0,
        });
        const fields = {
          container: info.name,
          id: id.slice(0, 12),
          acls: out.acls.join(","),
          policy: out.policy,
          rules: out.ruleCount,
          mode: this.opts.applier.mode,
          ms,
        };
        if (out.status === "denied") {
          log.error("deny-all applied: rules could not be built", { ...fields, error: out.error });
          this.retryLater(id, prev?.attempts ?? 0);
        } else log[out.status === "applied" ? "info" : "debug"](out.status, fields);
      }
      this.opts.onDecision?.(id, out.status, ms);
    } catch (err) {
      if (signal.aborted) return;
      await this.failed(id, info, err, prev);
    }
  }

  private async failed(id: string, info: ContainerInfo, err: unknown, prev?: ContainerState): Promise<void> {
    const { log } = this.opts;
    const notes = err instanceof EnforceFailure ? err.notes : [];
    for (const note of notes) log.warn("acl problem", { container: info.name, problem: note });
    // A container that stopped mid-apply is not an error worth retrying.
    const now = await this.opts.docker.inspectContainer(id, this.opts.signal).catch(() => undefined);
    if (!now?.running) {
      log.warn("container stopped during apply", { container: info.name, id: id.slice(0, 12) });
      return this.forget(id);
    }
    const attempts = (prev?.attempts ?? 0) + 1;
    const error = describeError(err);
    this.states.set(id, {
      ...(prev ??
        {
          id,
          name: info.name,
          acls: [],
          policy: "protect",
          ruleCount: 0,
          mode: this.opts.applier.mode,
          denied: false,
        }),
      lastError: error,
      attempts,
    });
    log.error("apply failed", { container: info.name, id: id.slice(0, 12), attempt: attempts, error });
    this.opts.onDecision?.(id, "failed", 0);
    this.retryLater(id, attempts);
  }
}
