/**
 * The daemon's book of applies started from the shim's prestart hook (src/daemon/gate_early.ts): only a
 * success for the very same container, pid and bundle is ever taken instead of applying again.
 */
import assert from "node:assert/strict";
import { EARLY_MAX, EarlyApplies } from "../../src/daemon/gate_early.ts";

const ID = "a".repeat(64);

function later<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void, reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => [resolve, reject] = [res, rej]);
  return { promise, resolve, reject };
}

Deno.test("early applies: a success for the same id, pid and bundle is taken once, after it is done", async () => {
  const book = new EarlyApplies<string>();
  const run = later<string>();
  assert.equal(book.start(ID, 42, "/b", () => run.promise), true);
  const taken = book.take(ID, 42, "/b");
  let settled = false;
  taken.then(() => settled = true);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(settled, false, "take waits for the apply under way");
  run.resolve("report");
  assert.equal((await taken)?.value, "report");
  assert.equal(await book.take(ID, 42, "/b"), undefined, "taken once");
  assert.equal(book.size, 0);
});

Deno.test("early applies: another pid or bundle, a failure, or none started: nothing to take", async () => {
  const book = new EarlyApplies<string>();
  assert.equal(await book.take(ID, 42, "/b"), undefined);
  book.start(ID, 42, "/b", () => Promise.resolve("report"));
  assert.equal(await book.take(ID, 43, "/b"), undefined, "another pid");
  book.start(ID, 42, "/b", () => Promise.resolve("report"));
  assert.equal(await book.take(ID, 42, "/other"), undefined, "another bundle");
  book.start(ID, 42, "/b", () => Promise.reject(new Error("iptables-restore failed")));
  assert.equal(await book.take(ID, 42, "/b"), undefined, "a failure");
  book.start(ID, 42, "/b", () => Promise.resolve(undefined));
  assert.equal(await book.take(ID, 42, "/b"), undefined, "no report");
});

Deno.test("early applies: one not taken is waited for, so it cannot adopt after the caller's own apply", async () => {
  const book = new EarlyApplies<string>();
  const run = later<string>();
  book.start(ID, 42, "/b", () => run.promise);
  let settled = false;
  const taken = book.take(ID, 99, "/b").then((v) => (settled = true, v));
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(settled, false);
  run.resolve("report for pid 42");
  assert.equal(await taken, undefined);
});

Deno.test("early applies: forgotten after their time; at most EARLY_MAX at once", async () => {
  const book = new EarlyApplies<string>(20);
  book.start(ID, 42, "/b", () => Promise.resolve("report"));
  assert.equal(book.size, 1);
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(book.size, 0);
  assert.equal(await book.take(ID, 42, "/b"), undefined);
  const full = new EarlyApplies<string>();
  for (let i = 0; i < EARLY_MAX; i++) {
    assert.equal(full.start(i.toString(16).padStart(64, "0"), 1, "/b", () => Promise.resolve("r")), true);
  }
  assert.equal(full.start(ID, 1, "/b", () => Promise.resolve("r")), false);
  // The same id again replaces its entry rather than counting twice.
  assert.equal(full.start("0".repeat(64), 2, "/b", () => Promise.resolve("r2")), true);
  assert.equal((await full.take("0".repeat(64), 2, "/b"))?.value, "r2");
  full.clear();
  assert.equal(full.size, 0);
});

Deno.test("early applies: news from a hook that comes after its create's enforce found nothing is dropped", async () => {
  const book = new EarlyApplies<string>();
  let ran = 0;
  assert.equal(await book.take(ID, 42, "/b"), undefined, "the enforce came first and applied itself");
  assert.equal(book.start(ID, 42, "/b", () => Promise.resolve(`late ${++ran}`)), false);
  assert.equal(ran, 0, "nothing was applied to a container that may be running by now");
  // The next create of the same container (docker restart: same id, another pid) is not affected.
  assert.equal(book.start(ID, 43, "/b", () => Promise.resolve("restart")), true);
  assert.equal((await book.take(ID, 43, "/b"))?.value, "restart");
  book.clear();
});

Deno.test("early applies: a second start for one id runs after the first is done", async () => {
  const book = new EarlyApplies<string>();
  const first = later<string>();
  const order: string[] = [];
  book.start(ID, 42, "/b", () => first.promise.then((v) => (order.push("first"), v)));
  book.start(ID, 43, "/b", () => (order.push("second"), Promise.resolve("second")));
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(order, [], "the second waits for the first");
  first.resolve("first");
  assert.equal((await book.take(ID, 43, "/b"))?.value, "second");
  assert.deepEqual(order, ["first", "second"]);
});
