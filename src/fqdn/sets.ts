/**
 * Writes DNS answers' addresses into a namespace's ipsets: one `nsenter ... ipset restore` per batch.
 * Entries asked for while a batch runs go together into the next one, so a burst of answers costs a
 * process or two, not one each.
 */
import type { CommandRunner } from "../apply/applier.ts";
import { SAFE_PATH } from "../apply/nsenter.ts";
import { ipsetText, type SetEntry } from "./steering.ts";

interface Queue {
  entries: SetEntry[];
  waiters: { resolve: () => void; reject: (e: Error) => void }[];
  running: boolean;
}

/** Puts set entries into namespaces. */
export interface SetSink {
  add(pid: number, entries: SetEntry[]): Promise<void>;
}

/** The nsenter-based {@link SetSink}. */
export class SetWriter implements SetSink {
  private readonly queues = new Map<number, Queue>();
  constructor(
    private readonly runner: CommandRunner,
    private readonly opts: { nsenter?: string; timeoutMs?: number } = {},
  ) {}

  add(pid: number, entries: SetEntry[]): Promise<void> {
    if (entries.length === 0) return Promise.resolve();
    let q = this.queues.get(pid);
    if (!q) this.queues.set(pid, q = { entries: [], waiters: [], running: false });
    q.entries.push(...entries);
    const done = new Promise<void>((resolve, reject) => q!.waiters.push({ resolve, reject }));
    if (!q.running) this.drain(pid, q);
    return done;
  }

  private async drain(pid: number, q: Queue) {
    q.running = true;
    while (q.entries.length > 0) {
      const entries = q.entries.splice(0);
      const waiters = q.waiters.splice(0);
      let error: Error | undefined;
      try {
        const res = await this.runner.run(
          this.opts.nsenter ?? "nsenter",
          [`--net=/proc/${pid}/ns/net`, "--", "ipset", "-exist", "restore"],
          {
            stdin: ipsetText([], entries),
            signal: AbortSignal.timeout(this.opts.timeoutMs ?? 5000),
            env: { PATH: SAFE_PATH },
          },
        );
        if (res.code !== 0) {
          error = new Error(`ipset restore in pid ${pid}'s namespace: ${res.stderr.trim() || res.code}`);
        }
      } catch (err) {
        error = new Error(`ipset restore in pid ${pid}'s namespace: ${(err as Error).message}`);
      }
      for (const w of waiters) error ? w.reject(error) : w.resolve();
    }
    q.running = false;
    this.queues.delete(pid);
  }
}
