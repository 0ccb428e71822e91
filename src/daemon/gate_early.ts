/**
 * Rules put in while `runc create` is still running. The shim's prestart hook tells the daemon a
 * container's pid as soon as runc has made its namespace; the daemon starts the apply then, and the
 * shim's question after the create (`/v1/shim/enforce`) takes its result instead of applying again.
 * Only a success for the same container, pid and bundle is ever taken: anything else (a failure, another
 * pid, no hook at all, an entry gone stale) makes the enforce apply itself, as without the hook. A hook's
 * news that comes after the enforce found nothing (the daemon was slow, the hook had given up, its request
 * was still queued) is dropped: the container may be running by then, and its rules are the enforce's.
 */

/** How long a started apply waits to be taken before it is forgotten (the create failed, or nobody asked). */
export const EARLY_TTL_MS = 60_000;
/** At most this many at once; more are refused (the enforce then applies itself). */
export const EARLY_MAX = 256;

interface Entry<T> {
  pid: number;
  bundle: string;
  startedAt: number;
  done: Promise<{ value: T; ms: number } | undefined>;
  timer: ReturnType<typeof setTimeout>;
}

export class EarlyApplies<T> {
  #pending = new Map<string, Entry<T>>();
  /** `id pid` of creates whose enforce found nothing: a start for them now comes too late. */
  #late = new Map<string, ReturnType<typeof setTimeout>>();
  #ttlMs: number;

  constructor(ttlMs = EARLY_TTL_MS) {
    this.#ttlMs = ttlMs;
  }

  get size(): number {
    return this.#pending.size;
  }

  /**
   * Start `run` for container `id`; false (and nothing started) when too many are pending, or when the
   * enforce of this create (id and pid) has already been and found nothing. `run` resolving to undefined,
   * or throwing, is a failure. A second start for the same id replaces the first, once that is done.
   */
  start(id: string, pid: number, bundle: string, run: () => Promise<T | undefined>): boolean {
    if (this.#late.has(`${id} ${pid}`)) return false;
    const old = this.#pending.get(id);
    if (!old && this.#pending.size >= EARLY_MAX) return false;
    if (old) clearTimeout(old.timer);
    const startedAt = performance.now();
    const done = (old ? old.done : Promise.resolve()).then(() => run()).then(
      (value) => value === undefined ? undefined : { value, ms: performance.now() - startedAt },
      () => undefined,
    );
    const timer = setTimeout(() => {
      if (this.#pending.get(id)?.timer === timer) this.#pending.delete(id);
    }, this.#ttlMs);
    Deno.unrefTimer(timer as unknown as number);
    this.#pending.set(id, { pid, bundle, startedAt, done, timer });
    return true;
  }

  /**
   * The result of the apply started for exactly this container, pid and bundle, once it is done;
   * undefined when there is none, or it failed. Taken once: the entry is gone afterwards.
   */
  async take(id: string, pid: number, bundle: string): Promise<{ value: T; ms: number } | undefined> {
    const e = this.#pending.get(id);
    if (!e) {
      this.#markLate(`${id} ${pid}`);
      return undefined;
    }
    this.#pending.delete(id);
    clearTimeout(e.timer);
    const result = await e.done; // even when it is not taken: it must not adopt after the caller does
    return e.pid === pid && e.bundle === bundle ? result : undefined;
  }

  #markLate(key: string): void {
    if (this.#late.size >= 4 * EARLY_MAX) { // the oldest goes: it is the nearest to its end anyway
      const [oldest, timer] = this.#late.entries().next().value!;
      clearTimeout(timer);
      this.#late.delete(oldest);
    }
    clearTimeout(this.#late.get(key));
    const timer = setTimeout(() => this.#late.delete(key), this.#ttlMs);
    Deno.unrefTimer(timer as unknown as number);
    this.#late.set(key, timer);
  }

  /** Forget everything (daemon shutdown). */
  clear(): void {
    for (const e of this.#pending.values()) clearTimeout(e.timer);
    for (const t of this.#late.values()) clearTimeout(t);
    this.#pending.clear();
    this.#late.clear();
  }
}
