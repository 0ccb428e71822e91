/**
 * Blocking-query loop over any Consul read that returns {data, index}, following Consul's blocking-query
 * guidance: skip answers whose index did not move, restart from 0 when the index goes backwards, never block
 * on an index below 1, and back off with jitter on errors.
 */
import type { QueryResult } from "./client.ts";
import type { Logger } from "../log.ts";
import { abortableSleep, backoffDelay } from "../util/async.ts";

/** What to watch and where changes go. */
export interface WatchOptions<T> {
  /** For logs, e.g. "kv egress/acl/". */
  name: string;
  /** One blocking read from the given index; must honour signal. wait is the blocking wait to ask for. */
  query: (index: number, signal: AbortSignal, wait: string) => Promise<QueryResult<T>>;
  /** Called with the first answer and every changed one; a throw counts as an error and is retried. */
  onChange: (data: T, index: number) => void | Promise<void>;
  /** Called for each failed query or onChange; attempt counts consecutive failures from 1. */
  onError?: (err: unknown, attempt: number) => void;
  /** Stops the watch; watch() resolves soon after it aborts. */
  signal: AbortSignal;
  /** Blocking wait passed to query, default "55s". */
  wait?: string;
  /** Backoff bounds, default 250 ms and 30 s. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /**
   * Least time between two queries (default 250 ms), as consul-template keeps: a key rewritten in a
   * tight loop answers every blocking query at once, and must not become a tight loop here.
   */
  minIntervalMs?: number;
  /** Injectable for tests; Math.random by default. */
  random?: () => number;
  /** Injectable for tests; must resolve (not reject) early when signal aborts. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** Debug lines about skipped answers and resets. */
  log?: Logger;
}

/** Where the next query starts and whether the answer is news, per Consul's blocking-query rules. */
export interface IndexStep {
  /** Deliver this answer to onChange. */
  changed: boolean;
  /** Index for the next query. */
  next: number;
  /** The index went backwards (snapshot restore, leader change): the loop restarts from 0. */
  reset: boolean;
}

/**
 * Pure index bookkeeping. `sent` is the index the query was made with, `delivered` whether anything has
 * been delivered since the (re)start; `got` is the answer's X-Consul-Index. An index below 1 is a Consul bug
 * that would make every later query return at once, so it counts as 1.
 */
export function nextIndex(sent: number, got: number, delivered: boolean): IndexStep {
  const idx = got >= 1 ? got : 1;
  if (delivered && idx === sent) return { changed: false, next: sent, reset: false };
  if (delivered && idx < sent) return { changed: true, next: 0, reset: true };
  return { changed: true, next: idx, reset: false };
}

/**
 * Run blocking queries until signal aborts, delivering the first answer and each change to onChange.
 * Never rejects: query and onChange failures go to onError and are retried after a jittered backoff that
 * resets after the next success. After a failure the loop restarts from index 0 and delivers the next answer
 * even if unchanged, so a reconnect always produces a full pass.
 */
export async function watch<T>(opts: WatchOptions<T>): Promise<void> {
  const { signal, name, log } = opts;
  const wait = opts.wait ?? "55s";
  const minMs = opts.minBackoffMs ?? 250;
  const maxMs = opts.maxBackoffMs ?? 30_000;
  const random = opts.random ?? Math.random;
  const sleep = opts.sleep ?? abortableSleep;
  const minInterval = opts.minIntervalMs ?? 250;
  let index = 0;
  let delivered = false;
  let attempt = 0;
  let lastAnswer = -Infinity;
  while (!signal.aborted) {
    try {
      // Errors already wait for their backoff; answers wait for the rest of the minimum interval.
      const since = performance.now() - lastAnswer;
      if (since < minInterval) await abortableSleep(minInterval - since, signal);
      if (signal.aborted) break;
      const res = await opts.query(index, signal, wait);
      lastAnswer = performance.now();
      if (signal.aborted) break;
      const step = nextIndex(index, res.index, delivered);
      if (step.reset) {
        log?.debug("consul index went backwards, restarting watch", {
          watch: name,
          from: index,
          to: res.index,
        });
      }
      if (step.changed) {
        await opts.onChange(res.data, res.index);
        delivered = true;
      } else {
        log?.debug("consul watch returned without change", { watch: name, index });
      }
      index = step.next;
      attempt = 0;
    } catch (err) {
      if (signal.aborted) break;
      attempt++;
      // After a failed delivery start over from 0 so the next answer is delivered again.
      index = 0;
      delivered = false;
      try {
        opts.onError?.(err, attempt);
      } catch {
        // A broken error reporter must not end the watch.
      }
      try {
        await sleep(backoffDelay(attempt, minMs, maxMs, random), signal);
      } catch {
        // An injected sleep that rejects on abort ends the loop through the signal check.
      }
    }
  }
}
