/**
 * Small async helpers shared by every room: one abortable sleep, one backoff with jitter, one bounded
 * pool. Pure of I/O; nothing here keeps state between calls.
 */

/** A sleep that resolves early (never rejects) when `signal` aborts. */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * Delay before retry number `attempt` (1-based): a random point between the minimum and an exponentially
 * growing ceiling (min * 2^(attempt-1), capped at max). Jitter spreads reconnects of many agents; the floor
 * keeps a failing peer from being hammered by near-zero delays.
 */
export function backoffDelay(
  attempt: number,
  minMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(Math.max(attempt - 1, 0), 30));
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.round(minMs + r * Math.max(ceiling - minMs, 0));
}

/** Run `fn` over items, at most `n` at a time; results in the items' order. */
export async function pool<T, R>(items: readonly T[], n: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(Math.max(n, 1), items.length) }, async () => {
    for (let i = next++; i < items.length; i = next++) out[i] = await fn(items[i]);
  }));
  return out;
}
