import assert from "node:assert/strict";
import type { QueryResult } from "../../src/consul/client.ts";
import { nextIndex, watch } from "../../src/consul/watch.ts";
import { abortableSleep, backoffDelay } from "../../src/util/async.ts";

/** One scripted answer of the fake query: a result, or an error to throw. */
type Step = { index: number; data?: string } | { error: string };

interface Run {
  sent: number[];
  changes: [string, number][];
  errors: [string, number][];
  sleeps: number[];
  waits: string[];
}

/**
 * Drive watch() with a scripted query. When the script runs out the watch is stopped through its signal,
 * the way the daemon stops it on shutdown.
 */
async function runScript(
  steps: Step[],
  extra: { random?: () => number; failChangeAt?: number[]; wait?: string } = {},
): Promise<Run> {
  const run: Run = { sent: [], changes: [], errors: [], sleeps: [], waits: [] };
  const ac = new AbortController();
  let i = 0;
  let changeCalls = 0;
  await watch<string>({
    name: "test",
    signal: ac.signal,
    wait: extra.wait,
    random: extra.random ?? (() => 0.5),
    query: (index, signal, wait): Promise<QueryResult<string>> => {
      assert.ok(!signal.aborted);
      run.sent.push(index);
      run.waits.push(wait);
      const step = steps[i++];
      if (step === undefined) {
        ac.abort(new Error("script done"));
        return Promise.reject(signal.reason);
      }
      if ("error" in step) return Promise.reject(new Error(step.error));
      return Promise.resolve({ data: step.data ?? `d${step.index}`, index: step.index });
    },
    onChange: (data, index) => {
      changeCalls++;
      if (extra.failChangeAt?.includes(changeCalls)) throw new Error(`onChange ${changeCalls} failed`);
      run.changes.push([data, index]);
    },
    onError: (err, attempt) => run.errors.push([(err as Error).message, attempt]),
    sleep: (ms) => {
      run.sleeps.push(ms);
      return Promise.resolve();
    },
  });
  return run;
}

Deno.test("watch: index handling table", async (t) => {
  const cases: { name: string; steps: Step[]; sent: number[]; changes: number[] }[] = [
    {
      name: "first answer is delivered, then blocks on its index",
      steps: [{ index: 5 }],
      sent: [0, 5],
      changes: [5],
    },
    {
      name: "same index (wait timed out) is not a change",
      steps: [{ index: 5 }, { index: 5 }, { index: 5 }, { index: 6 }],
      sent: [0, 5, 5, 5, 6],
      changes: [5, 6],
    },
    {
      name: "index going backwards delivers and restarts from 0",
      steps: [{ index: 10 }, { index: 10 }, { index: 4 }, { index: 7 }, { index: 7 }],
      sent: [0, 10, 10, 0, 7, 7],
      changes: [10, 4, 7],
    },
    {
      name: "index 0 or negative is treated as 1 and never blocks on 0",
      steps: [{ index: 0 }, { index: 0 }, { index: -3 }, { index: 9 }],
      sent: [0, 1, 1, 1, 9],
      changes: [0, 9],
    },
    {
      name: "growing index delivers each change",
      steps: [{ index: 1 }, { index: 2 }, { index: 30 }],
      sent: [0, 1, 2, 30],
      changes: [1, 2, 30],
    },
  ];
  for (const tc of cases) {
    await t.step(tc.name, async () => {
      const run = await runScript(tc.steps);
      assert.deepEqual(run.sent, tc.sent);
      assert.deepEqual(run.changes.map(([, idx]) => idx), tc.changes);
      assert.deepEqual(run.errors, []);
      assert.deepEqual(run.sleeps, []);
    });
  }
});

Deno.test("watch: passes the wait (default 55s)", async () => {
  assert.deepEqual((await runScript([{ index: 1 }])).waits, ["55s", "55s"]);
  assert.deepEqual((await runScript([{ index: 1 }], { wait: "5m" })).waits, ["5m", "5m"]);
});

Deno.test("watch: errors back off with growing jittered delays, reset after a success", async () => {
  const steps: Step[] = [
    { index: 3 },
    { error: "e1" },
    { error: "e2" },
    { error: "e3" },
    { error: "e4" },
    { index: 3 },
    { index: 3 },
    { error: "e5" },
  ];
  const run = await runScript(steps, { random: () => 0.5 });
  assert.deepEqual(run.errors, [["e1", 1], ["e2", 2], ["e3", 3], ["e4", 4], ["e5", 1]]);
  // min 250 + 0.5 * (ceiling - 250) with ceilings 250, 500, 1000, 2000, then 250 again.
  assert.deepEqual(run.sleeps, [250, 375, 625, 1125, 250]);
  // After an error the watch restarts from 0 and delivers again (a reconnect is a full pass).
  assert.deepEqual(run.sent, [0, 3, 0, 0, 0, 0, 3, 3, 0]);
  assert.deepEqual(run.changes, [["d3", 3], ["d3", 3]]);
});

Deno.test("watch: jitter comes from random", async () => {
  const values = [0, 1, 0.25];
  let k = 0;
  const run = await runScript([{ error: "a" }, { error: "b" }, { error: "c" }], {
    random: () => values[k++],
  });
  assert.deepEqual(run.sleeps, [250, 500, 438]); // 250 + 0.25 * 750, rounded
});

Deno.test("backoffDelay: table", () => {
  const rows: [attempt: number, random: number, want: number][] = [
    [1, 0, 250],
    [1, 1, 250],
    [2, 1, 500],
    [3, 1, 1000],
    [8, 1, 30_000],
    [8, 0, 250],
    [1000, 1, 30_000],
    [3, 2, 1000], // a random outside [0,1] is clamped
    [3, -1, 250],
  ];
  for (const [attempt, r, want] of rows) {
    assert.equal(backoffDelay(attempt, 250, 30_000, () => r), want, `attempt ${attempt} random ${r}`);
  }
});

Deno.test("nextIndex: table", () => {
  assert.deepEqual(nextIndex(0, 5, false), { changed: true, next: 5, reset: false });
  assert.deepEqual(nextIndex(5, 5, true), { changed: false, next: 5, reset: false });
  assert.deepEqual(nextIndex(5, 6, true), { changed: true, next: 6, reset: false });
  assert.deepEqual(nextIndex(5, 2, true), { changed: true, next: 0, reset: true });
  assert.deepEqual(nextIndex(0, 0, false), { changed: true, next: 1, reset: false });
  assert.deepEqual(nextIndex(1, 0, true), { changed: false, next: 1, reset: false });
  assert.deepEqual(nextIndex(5, 0, true), { changed: true, next: 0, reset: true });
  assert.deepEqual(nextIndex(0, 7, true), { changed: true, next: 7, reset: false });
});

Deno.test("watch: a failing onChange is reported and the data delivered again", async () => {
  const run = await runScript([{ index: 4 }, { index: 4 }, { index: 4 }], { failChangeAt: [1] });
  assert.deepEqual(run.errors, [["onChange 1 failed", 1]]);
  assert.deepEqual(run.sent, [0, 0, 4, 4]);
  assert.deepEqual(run.changes, [["d4", 4]]);
});

Deno.test("watch: a throwing onError does not end the watch", async () => {
  const ac = new AbortController();
  let calls = 0;
  await watch<number>({
    name: "t",
    signal: ac.signal,
    query: () => {
      if (++calls === 3) ac.abort();
      return Promise.reject(new Error("down"));
    },
    onChange: () => {},
    onError: () => {
      throw new Error("reporter broke");
    },
    sleep: () => Promise.resolve(),
  });
  assert.equal(calls, 3);
});

Deno.test("watch: abort stops a hanging query and a long backoff promptly", async (t) => {
  await t.step("during a blocking query", async () => {
    const ac = new AbortController();
    const changes: number[] = [];
    const errors: unknown[] = [];
    const done = watch<number>({
      name: "t",
      signal: ac.signal,
      query: (index, signal) =>
        index === 0 ? Promise.resolve({ data: 1, index: 9 }) : new Promise((_, reject) => {
          signal.addEventListener("abort", () => reject(signal.reason), { once: true });
        }),
      onChange: (d) => {
        changes.push(d);
        setTimeout(() => ac.abort(new Error("shutdown")), 10);
      },
      onError: (e) => errors.push(e),
    });
    await done;
    assert.deepEqual(changes, [1]);
    assert.deepEqual(errors, []);
  });
  await t.step("during a backoff sleep (real abortable sleep)", async () => {
    const ac = new AbortController();
    const started = performance.now();
    let queries = 0;
    const done = watch<number>({
      name: "t",
      signal: ac.signal,
      minBackoffMs: 60_000,
      maxBackoffMs: 60_000,
      query: () => {
        queries++;
        return Promise.reject(new Error("consul down"));
      },
      onChange: () => {},
      onError: () => setTimeout(() => ac.abort(), 20),
    });
    await done;
    assert.equal(queries, 1);
    assert.ok(performance.now() - started < 5_000);
  });
  await t.step("already aborted: no query at all", async () => {
    const ac = new AbortController();
    ac.abort();
    let queries = 0;
    await watch<number>({
      name: "t",
      signal: ac.signal,
      query: () => {
        queries++;
        return Promise.resolve({ data: 1, index: 1 });
      },
      onChange: () => {},
    });
    assert.equal(queries, 0);
  });
});

Deno.test("abortableSleep: waits, or resolves at abort without leaking the timer", async () => {
  const t0 = performance.now();
  await abortableSleep(30, new AbortController().signal);
  assert.ok(performance.now() - t0 >= 25);
  const ac = new AbortController();
  const p = abortableSleep(60_000, ac.signal);
  ac.abort();
  await p;
  await abortableSleep(60_000, ac.signal);
});

Deno.test("watch: a key rewritten in a tight loop does not become a tight loop (minimum interval)", async () => {
  const ac = new AbortController();
  let queries = 0;
  let index = 1;
  const done = watch<number>({
    name: "tight",
    // Every query answers at once with a new index: Consul's answer for a key rewritten all the time.
    query: () => (queries++, Promise.resolve({ data: index, index: ++index })),
    onChange: () => {},
    signal: ac.signal,
    minIntervalMs: 100,
  });
  await new Promise((r) => setTimeout(r, 550));
  ac.abort();
  await done;
  assert.ok(queries >= 4 && queries <= 7, `${queries} queries in 550 ms with a 100 ms minimum interval`);
});
