// The reconcile loop with in-memory fakes of its three dependencies (Docker, rules, applier).
import assert from "node:assert/strict";
import { Reconciler } from "../../src/daemon/reconcile.ts";
import type { Applier, ApplyTarget } from "../../src/apply/applier.ts";
import type { RenderedRules } from "../../src/render/renderer.ts";
import { loadTemplates, Renderer } from "../../src/render/renderer.ts";
import type { ContainerInfo } from "../../src/docker/types.ts";
import { snapshotFrom } from "../../src/rules/acl_source.ts";
import type { RuleData, RuleProvider } from "../../src/rules/rule_cache.ts";
import { silentLogger } from "../../src/log.ts";
import { DockerError } from "../../src/errors.ts";
import { DEFAULTS } from "../../src/config/config.ts";

const renderer = new Renderer(await loadTemplates(), "test");
const enc = (s: string) => new TextEncoder().encode(s);

function info(id: string, env: string[], running = true): ContainerInfo {
  return {
    id,
    name: `c-${id}`,
    pid: 100,
    running,
    env,
    labels: {},
    networkMode: "bridge",
    image: "x",
    startedAt: "",
    restartCount: 0,
    capAdd: [],
    capDrop: ["NET_RAW"],
    privileged: false,
  };
}

class FakeApplier implements Applier {
  readonly mode = "nsenter" as const;
  readonly ipv6 = true;
  applied: string[] = [];
  running = 0;
  maxRunning = 0;
  failFor = new Set<string>();
  /** Containers for which only the real rules fail (deny-all, with no ACL, goes in). */
  failRealFor = new Set<string>();
  delayMs = 5;
  tables = new Map<string, RenderedRules>();
  async apply(t: ApplyTarget, rules: RenderedRules): Promise<void> {
    this.running++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    await new Promise((r) => setTimeout(r, this.delayMs));
    this.running--;
    if (this.failFor.has(t.id)) throw new Error(`iptables-restore: line 3 failed for ${t.id}`);
    if (this.failRealFor.has(t.id) && !rules.ipv4.includes("# acls: (none)")) {
      throw new Error(`iptables-restore: line 9 failed for ${t.id}`);
    }
    this.applied.push(t.id);
    this.tables.set(t.id, rules);
  }
  read(t: ApplyTarget): Promise<RenderedRules> {
    return Promise.resolve(this.tables.get(t.id) ?? { ipv4: "", ipv6: "" });
  }
}

class FakeRules implements RuleProvider {
  fail = false;
  data: RuleData = {
    snapshot: snapshotFrom([{ key: "db", value: enc("10.50.129.0/24:tcp/5432") }]),
    services: new Map(),
    hasCatalog: true,
    at: 0,
  };
  get(): Promise<RuleData> {
    return this.fail
      ? Promise.reject(new Error("consul at http://127.0.0.1:8500 is unreachable"))
      : Promise.resolve(this.data);
  }
}

function setup(containers: ContainerInfo[], opts: { onError?: "deny" | "skip"; concurrency?: number } = {}) {
  const byId = new Map(containers.map((c) => [c.id, c]));
  /** Inspect calls (numbered from 1) that fail with a 500 instead of answering. */
  const inspectFailures = { calls: 0, failing: new Set<number>() };
  const docker = {
    inspectContainer: (id: string) => {
      if (inspectFailures.failing.has(++inspectFailures.calls)) {
        return Promise.reject(new DockerError("inspect: 500 server error", { status: 500 }));
      }
      const c = byId.get(id);
      return c
        ? Promise.resolve(c)
        : Promise.reject(new DockerError(`no such container: ${id}`, { status: 404 }));
    },
    listContainers: () =>
      Promise.resolve([...byId.values()].filter((c) => c.running).map((c) => ({ id: c.id }))),
  };
  const applier = new FakeApplier();
  const rules = new FakeRules();
  const stop = new AbortController();
  const r = new Reconciler({
    applier,
    rules,
    renderer: () => renderer,
    config: { policy: "protect", dnsResolvers: [...DEFAULTS.dnsResolvers], onError: opts.onError ?? "skip" },
    docker,
    log: silentLogger,
    concurrency: opts.concurrency ?? 4,
    signal: stop.signal,
    retryMinMs: 20,
    retryMaxMs: 40,
  });
  return { r, applier, rules, byId, inspectFailures };
}

const ON = ["EGRESSTRATOR_ENABLE=1", "EGRESSTRATOR_ACL=web"];

Deno.test("markAll applies to opted-in containers only, within the concurrency bound, once each", async () => {
  const list = Array.from({ length: 20 }, (_, i) => info(`id${i}`, i % 4 === 0 ? [] : ON));
  const { r, applier } = setup(list, { concurrency: 3 });
  await r.markAll(new AbortController().signal);
  await r.idle();
  assert.equal(applier.applied.length, 15);
  assert.ok(applier.maxRunning <= 3, `max parallel ${applier.maxRunning}`);
  assert.equal(r.states.size, 15);
  // Marking again changes nothing: the rendered hash is the same.
  await r.markAll(new AbortController().signal);
  await r.idle();
  assert.equal(applier.applied.length, 15);
  await r.close();
});

Deno.test("a container marked many times while in flight is applied at most twice, never concurrently", async () => {
  const { r, applier } = setup([info("a", ON)]);
  applier.delayMs = 30;
  for (let i = 0; i < 10; i++) r.mark("a");
  await r.idle();
  assert.ok(applier.maxRunning === 1);
  assert.equal(applier.applied.length, 1, "the re-check finds the same hash");
  await r.close();
});

Deno.test("failures are retried with backoff and recorded; forget cancels the retry", async () => {
  const { r, applier } = setup([info("a", ON)]);
  applier.failFor.add("a");
  r.mark("a");
  await r.idle();
  assert.match(r.states.get("a")?.lastError ?? "", /line 3 failed/);
  await new Promise((res) => setTimeout(res, 120));
  assert.ok((r.states.get("a")?.attempts ?? 0) >= 2, "retried");
  applier.failFor.clear();
  await new Promise((res) => setTimeout(res, 120));
  await r.idle();
  assert.equal(r.states.get("a")?.lastError, undefined);
  assert.equal(applier.applied.length, 1);
  r.forget("a");
  assert.equal(r.states.size, 0);
  await r.close();
});

Deno.test("rules unavailable: skip leaves nothing, deny applies deny-all, then the real rules follow", async () => {
  const skip = setup([info("a", ON)]);
  skip.rules.fail = true;
  skip.r.mark("a");
  await skip.r.idle();
  assert.equal(skip.applier.applied.length, 0);
  assert.match(skip.r.states.get("a")?.lastError ?? "", /unreachable/);
  await skip.r.close();

  const deny = setup([info("a", ON)], { onError: "deny" });
  deny.rules.fail = true;
  deny.r.mark("a");
  await deny.r.idle();
  assert.equal(deny.r.states.get("a")?.denied, true);
  assert.match(deny.applier.tables.get("a")!.ipv4, /-A OUTPUT -p tcp -j REJECT/);
  deny.rules.fail = false;
  await new Promise((res) => setTimeout(res, 100));
  await deny.r.idle();
  assert.equal(deny.r.states.get("a")?.denied, false);
  assert.match(deny.applier.tables.get("a")!.ipv4, /10\.50\.129\.0\/24/);
  await deny.r.close();
});

Deno.test("containers that are gone or stopped are forgotten, not retried", async () => {
  const { r, applier } = setup([info("b", ON, false)]);
  r.mark("gone");
  r.mark("b");
  await r.idle();
  assert.equal(applier.applied.length, 0);
  assert.equal(r.states.size, 0);
  await r.close();
});

Deno.test("resync re-applies a container whose tables changed behind its back", async () => {
  const { r, applier } = setup([info("a", ON)]);
  r.mark("a");
  await r.idle();
  assert.equal(await r.resync(), 0);
  applier.tables.set("a", { ipv4: "*filter\nCOMMIT\n", ipv6: "" });
  assert.equal(await r.resync(), 1);
  await r.idle();
  assert.equal(applier.applied.length, 2);
  assert.equal(await r.resync(), 0);
  await r.close();
});

Deno.test("adopt: a gate-applied container with the same hash is not applied again", async () => {
  const { r, applier } = setup([info("a", ON)]);
  r.mark("a");
  await r.idle();
  const s = r.states.get("a")!;
  r.forget("a");
  r.adopt({
    id: "a",
    hash: s.hash!,
    savedHash: s.savedHash,
    acls: ["web"],
    policy: "protect",
    ruleCount: 1,
    denied: false,
  });
  r.mark("a");
  await r.idle();
  assert.equal(applier.applied.length, 1);
  await r.close();
});

Deno.test("apply fails: deny-all goes in (deny); when that fails too the container is UNFILTERED and retried", async () => {
  const deny = setup([info("a", ON)], { onError: "deny" });
  deny.applier.failRealFor.add("a");
  deny.r.mark("a");
  await deny.r.idle();
  const s = deny.r.states.get("a")!;
  assert.equal(s.denied, true, "deny-all in place");
  assert.equal(s.unfiltered, false);
  assert.match(s.lastError ?? "", /rules could not be applied: .*line 9 failed/);
  assert.match(deny.applier.tables.get("a")!.ipv4, /-A OUTPUT -p tcp -j REJECT/);
  deny.applier.failRealFor.clear();
  await new Promise((res) => setTimeout(res, 100));
  await deny.r.idle();
  assert.equal(deny.r.states.get("a")?.denied, false, "the real rules follow");
  await deny.r.close();

  const both = setup([info("a", ON)], { onError: "deny" });
  both.applier.failFor.add("a");
  both.r.mark("a");
  await both.r.idle();
  assert.equal(both.r.states.get("a")?.unfiltered, true);
  assert.equal(both.r.unfilteredCount(), 1);
  assert.match(both.r.states.get("a")?.lastError ?? "", /deny-all failed too/);
  both.applier.failFor.clear();
  await new Promise((res) => setTimeout(res, 120));
  await both.r.idle();
  assert.equal(both.r.states.get("a")?.unfiltered, false, "a retry puts the rules in");
  assert.equal(both.r.unfilteredCount(), 0);
  await both.r.close();

  const skip = setup([info("a", ON)], { onError: "skip" });
  skip.rules.fail = true;
  skip.r.mark("a");
  await skip.r.idle();
  assert.equal(
    skip.r.states.get("a")?.unfiltered,
    true,
    "--on-error skip with nothing in place is unfiltered",
  );
  await skip.r.close();
});

Deno.test("a failed apply whose follow-up inspect fails once is retried, not forgotten", async () => {
  const { r, applier, inspectFailures } = setup([info("a", ON)], { onError: "skip" });
  applier.failFor.add("a");
  // The first inspect answers; the one after the failed apply (is it still running?) gets a 500.
  inspectFailures.failing.add(2);
  r.mark("a");
  await r.idle();
  assert.equal(inspectFailures.calls, 2);
  assert.ok(r.states.has("a"), "state kept");
  applier.failFor.clear();
  await new Promise((res) => setTimeout(res, 120));
  await r.idle();
  assert.equal(applier.applied.length, 1, "the retry applied");
  assert.equal(r.states.get("a")?.lastError, undefined);
  await r.close();
});

Deno.test("the hash is per namespace: a restarted container (new pid, missed events) is applied again", async () => {
  const { r, applier, byId } = setup([info("a", ON)]);
  r.mark("a");
  await r.idle();
  assert.equal(applier.applied.length, 1);
  byId.set("a", { ...byId.get("a")!, pid: 4242 });
  r.mark("a");
  await r.idle();
  assert.equal(applier.applied.length, 2, "same text, new namespace: applied");
  assert.equal(r.states.get("a")?.pid, 4242);
  r.mark("a");
  await r.idle();
  assert.equal(applier.applied.length, 2, "same namespace again: not applied");
  await r.close();
});

Deno.test("a full pass forgets the states of containers no longer running", async () => {
  const { r, byId } = setup([info("a", ON), info("b", ON)]);
  await r.markAll(new AbortController().signal);
  await r.idle();
  assert.equal(r.states.size, 2);
  byId.set("b", { ...byId.get("b")!, running: false }); // its die event was missed
  await r.markAll(new AbortController().signal);
  await r.idle();
  assert.deepEqual([...r.states.keys()], ["a"]);
  await r.close();
});

Deno.test("resync passes never overlap", async () => {
  const { r, applier } = setup([info("a", ON), info("b", ON)]);
  await r.markAll(new AbortController().signal);
  await r.idle();
  applier.tables.set("a", { ipv4: "*filter\nCOMMIT\n", ipv6: "" });
  const [first, second] = await Promise.all([r.resync(), r.resync()]);
  assert.deepEqual([first, second], [1, 0], "the second pass is skipped while the first runs");
  await r.idle();
  await r.close();
});

Deno.test("a die and a start racing an apply: the new namespace gets its rules, not the old one's hash", async () => {
  const { r, applier, byId } = setup([info("a", ON)]);
  applier.delayMs = 40;
  r.mark("a");
  await new Promise((res) => setTimeout(res, 10)); // the first apply is in flight
  r.forget("a"); // die
  byId.set("a", { ...byId.get("a")!, pid: 777 }); // restarted: a new init, a new namespace
  r.mark("a", Date.now(), true); // start
  await r.idle();
  assert.equal(applier.applied.length, 2, "applied again into the new namespace");
  assert.equal(r.states.get("a")?.pid, 777);
  assert.ok(applier.maxRunning === 1, "never two applies on one container at once");
  await r.close();
});
