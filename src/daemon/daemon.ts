/**
 * The daemon: a full pass at start, then Docker's events mark containers dirty for the reconcile loop.
 * A broken event stream reconnects with backoff and catches up (events since the last one seen, plus a
 * full pass). SIGHUP reloads the template and re-checks everything. Shutdown lets in-flight applies end.
 */
import type { Config } from "../config/config.ts";
import type { Logger } from "../log.ts";
import { DockerClient } from "../docker/client.ts";
import { type GateApplied, Reconciler } from "./reconcile.ts";
import { buildRules } from "../apply/enforce.ts";
import { containerIntent } from "../rules/intent.ts";
import { openRuleContext } from "../context.ts";
import { LiveRules } from "./live_rules.ts";
import { Metrics } from "./metrics.ts";
import { neededServices } from "./affected.ts";
import { serveStatus, type StatusSource } from "./status_server.ts";
import type { RuleContext } from "../context.ts";
import { loadTemplates, Renderer } from "../render/renderer.ts";
import { describeError } from "../errors.ts";
import { makeApplier } from "../apply/make.ts";
import { VERSION } from "../version.ts";

/** Hooks the daemon offers its caller (signals in production, direct calls in tests). */
export interface DaemonControl {
  /** Resolves when the daemon has stopped. */
  done: Promise<void>;
  /** Same as SIGHUP. */
  reload(): Promise<void>;
  reconciler: Reconciler;
  metrics: Metrics;
  rules: LiveRules;
}

/** Sleep that ends early, without throwing, when the signal aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Start the daemon. `signal` is the shutdown request; `hardStop` also aborts in-flight work. */
export async function startDaemon(
  config: Config,
  log: Logger,
  signal: AbortSignal,
  hardStop: AbortSignal = new AbortController().signal,
): Promise<DaemonControl> {
  const docker = new DockerClient({
    host: config.dockerHost,
    apiVersion: config.dockerApiVersion,
    signal: hardStop,
  });
  const ctx = await openRuleContext(config, hardStop);
  let renderer: Renderer = ctx.renderer;
  const metrics = new Metrics();
  const applier = makeApplier(config, docker, log);
  const rules: LiveRules = new LiveRules({
    source: ctx.source,
    consul: ctx.consul,
    log,
    metrics,
    signal,
    stale: config.consulStale,
    onChange: (change) => {
      const n = reconciler.markAffected(change);
      log.info("acl change", {
        keys: [...change.changed, ...change.addedOrRemoved].join(","),
        containers: n,
      });
      pruneWatches();
    },
  });
  const reconciler: Reconciler = new Reconciler({
    applier,
    rules,
    renderer: () => renderer,
    config,
    docker,
    log,
    concurrency: config.concurrency,
    signal: hardStop,
    metrics,
  });
  const pruneWatches = () => {
    const snapshot = rules.current();
    if (snapshot) rules.prune(neededServices(snapshot, reconciler.enforced()));
  };
  log.info("egresstrator starting", {
    version: VERSION,
    mode: applier.mode,
    acls: ctx.source.description,
    docker: config.dockerHost,
    policy: config.policy,
  });
  const state = { dockerConnected: false };
  const source = statusSource({ config, ctx, reconciler, rules, metrics, applier, state });
  source.gateRender = (body) => gateRender({ rules, renderer: () => renderer, config }, body, signal);
  source.gateApplied = (body) => gateApplied(reconciler, body);
  const status = config.listen ? await serveStatus(config.listen, source, log, signal) : undefined;
  rules.start();
  const resync = config.resyncIntervalMs > 0
    ? setInterval(() => void reconciler.resync().then(pruneWatches), config.resyncIntervalMs)
    : undefined;

  const reload = async () => {
    try {
      renderer = new Renderer(await loadTemplates(config.templateFile), VERSION);
      log.info("templates reloaded; re-checking every container");
    } catch (err) {
      log.error("template reload failed; keeping the previous one", { error: describeError(err) });
    }
    for (const id of reconciler.states.keys()) reconciler.mark(id);
    await reconciler.markAll(signal).catch((err) =>
      log.warn("list containers failed", { error: describeError(err) })
    );
  };

  const done = (async () => {
    try {
      await followEvents({ docker, reconciler, log, signal, state });
    } finally {
      log.info("shutting down: finishing in-flight applies");
      clearInterval(resync);
      await reconciler.close();
      await status?.finished;
      docker.close();
      ctx.close();
      log.info("stopped");
    }
  })();
  return { done, reload, reconciler, metrics, rules };
}

interface StatusDeps {
  config: Config;
  ctx: RuleContext;
  reconciler: Reconciler;
  rules: LiveRules;
  metrics: Metrics;
  applier: { mode: string };
  state: { dockerConnected: boolean };
}

function statusSource(d: StatusDeps): StatusSource {
  return {
    report: () => ({
      version: VERSION,
      mode: d.applier.mode,
      policy: d.config.policy,
      source: d.ctx.source.description,
      watches: d.rules.watchCount(),
      docker: { connected: d.state.dockerConnected },
      consul: { errors: d.metrics.get("egresstrator_consul_errors_total") },
      containers: [...d.reconciler.states.values()].map((s) => ({
        id: s.id,
        name: s.name,
        acls: s.acls,
        policy: s.policy,
        ruleCount: s.ruleCount,
        mode: s.mode,
        hash: s.hash,
        lastApplied: s.lastApplied,
        lastError: s.lastError,
        denied: s.denied,
      })),
    }),
    metrics: () => {
      d.metrics.set(
        "egresstrator_enforced_containers",
        "Containers with rules in place",
        d.reconciler.states.size,
      );
      d.metrics.set(
        "egresstrator_docker_connected",
        "1 while the Docker event stream is up",
        d.state.dockerConnected ? 1 : 0,
      );
      return d.metrics.render();
    },
  };
}

interface FollowDeps {
  docker: DockerClient;
  reconciler: Reconciler;
  log: Logger;
  signal: AbortSignal;
  state: { dockerConnected: boolean };
}

/** Subscribe, full pass, stream; on any break: back off, resubscribe from the last event, full pass again. */
async function followEvents({ docker, reconciler, log, signal, state }: FollowDeps): Promise<void> {
  let since: string = (Date.now() / 1000).toFixed(3);
  let backoff = 500;
  let connectedOnce = false;
  while (!signal.aborted) {
    try {
      await docker.negotiate(signal);
      // Events since the last one seen cover the gap between listing and subscribing.
      const stream = docker.events({
        since,
        filters: { type: ["container"], event: ["start", "die", "destroy"] },
        signal,
        onBadLine: (_line, reason) => log.warn("bad event from docker", { reason }),
      });
      const n = await reconciler.markAll(signal);
      log.info(connectedOnce ? "reconnected to docker" : "connected to docker", { running: n });
      connectedOnce = true;
      state.dockerConnected = true;
      backoff = 500;
      for await (const ev of stream) {
        since = (ev.timeNano / 1e9).toFixed(9);
        if (ev.action === "start") reconciler.mark(ev.id, Math.floor(ev.timeNano / 1e6));
        else reconciler.forget(ev.id);
      }
      state.dockerConnected = false;
      if (!signal.aborted) log.warn("docker event stream ended; reconnecting");
    } catch (err) {
      state.dockerConnected = false;
      if (signal.aborted) break;
      log.warn("docker unavailable; retrying", { error: describeError(err), retryMs: backoff });
      await pause(backoff * (0.5 + Math.random() / 2), signal);
      backoff = Math.min(backoff * 2, 15_000);
    }
  }
}

function isStrings(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === "string");
}

/** `/v1/gate/render`: a container's rules from the warm caches, for the runtime gate. */
async function gateRender(deps: Parameters<typeof buildRules>[0], body: unknown, signal: AbortSignal) {
  const b = body as { id?: unknown; env?: unknown };
  if (typeof b.id !== "string" || !/^[0-9a-f]{12,64}$/.test(b.id) || !isStrings(b.env)) {
    return Response.json({ error: "body must be {id: <container id>, env: [KEY=value...]}" }, {
      status: 400,
    });
  }
  const intent = containerIntent(b.env, deps.config.policy);
  if (!intent.enabled) return Response.json({ error: "container does not opt in" }, { status: 400 });
  try {
    const want = { id: b.id, name: b.id.slice(0, 12), acls: intent.acls, policy: intent.policy };
    const built = await buildRules(deps, want, AbortSignal.any([signal, AbortSignal.timeout(5000)]));
    const { rendered, ...rest } = built;
    return Response.json({ ...rest, ipv4: rendered.ipv4, ipv6: rendered.ipv6 });
  } catch (err) {
    return Response.json({ error: describeError(err) }, { status: 503 });
  }
}

/** `/v1/gate/applied`: the gate applied rules before start; adopt them so the start event applies nothing. */
function gateApplied(reconciler: Reconciler, body: unknown): Response {
  const b = body as Partial<GateApplied>;
  const ok = typeof b.id === "string" && typeof b.hash === "string" && isStrings(b.acls) &&
    (b.policy === "protect" || b.policy === "allowlist") && typeof b.ruleCount === "number" &&
    typeof b.denied === "boolean";
  if (!ok) return Response.json({ error: "bad gate report" }, { status: 400 });
  reconciler.adopt(b as GateApplied);
  return new Response(null, { status: 204 });
}
