/**
 * The daemon: a full pass at start, then Docker's events mark containers dirty for the reconcile loop.
 * A broken event stream reconnects with backoff and catches up (events since the last one seen, plus a
 * full pass). SIGHUP reloads the template and re-checks everything. Shutdown lets in-flight applies end.
 */
import type { Config } from "../config/config.ts";
import type { Logger } from "../log.ts";
import { DockerClient } from "../docker/client.ts";
import { Reconciler } from "./reconcile.ts";
import { openRuleContext } from "../context.ts";
import { LiveRules } from "./live_rules.ts";
import { Metrics } from "./metrics.ts";
import { neededServices } from "./affected.ts";
import { serveStatus } from "./status_server.ts";
import { loadTemplates, Renderer } from "../render/renderer.ts";
import { describeError } from "../errors.ts";
import { makeApplier } from "../apply/make.ts";
import { VERSION } from "../version.ts";
import { followEvents } from "./events.ts";
import { statusSource } from "./status_source.ts";
import { gateApplied, gateEnforce, gateRender } from "./gate_api.ts";
import { earlyShim, shimCreated, shimEnforce, shimPrepare } from "./gate_shim.ts";
import { type DenyWatch, startDenyWatch } from "./deny_watch.ts";
import { startDns } from "./dns.ts";

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

/**
 * Start the daemon. `signal` is the shutdown request: in-flight applies are let finish (each has its own
 * deadline), then everything is closed.
 */
export async function startDaemon(config: Config, log: Logger, signal: AbortSignal): Promise<DaemonControl> {
  const docker = new DockerClient({ host: config.dockerHost, apiVersion: config.dockerApiVersion });
  const ctx = await openRuleContext(config);
  let renderer: Renderer = ctx.renderer;
  const metrics = new Metrics();
  const applier = makeApplier(config, docker, log);
  // Rules by DNS name: the forwarder needs to enter namespaces itself, so nsenter mode only.
  const dns = applier.mode === "nsenter"
    ? startDns(config, log, {
      ipv6: applier.ipv6,
      resteer: (ids) => ids.forEach((id) => reconciler.mark(id)),
    })
    : undefined;
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
  // Started once the loop exists (it reads the loop's states); the loop's reads feed it from then on.
  const deny: { watch?: DenyWatch } = {};
  const reconciler: Reconciler = new Reconciler({
    applier,
    rules,
    renderer: () => renderer,
    denyRenderer: ctx.denyRenderer,
    config,
    docker,
    log,
    concurrency: config.concurrency,
    signal: new AbortController().signal,
    metrics,
    onTablesRead: (s, read) =>
      deny.watch?.log.counters({ id: s.id, name: s.name, epoch: s.lastApplied }, read),
    dns: dns?.forwarder,
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
  const fixed = {
    mode: applier.mode,
    policy: config.policy,
    source: ctx.source.description,
    ipv6: applier.ipv6,
  };
  if (!applier.ipv6) {
    log.warn("this kernel has no IPv6 (/proc/sys/net/ipv6 is absent): applying IPv4 rules only");
  }
  const source = statusSource({
    fixed,
    reconciler,
    rules,
    metrics,
    state,
    deny: () => deny.watch?.log,
    dns: () => dns,
  });
  source.gateRender = (body) => gateRender({ rules, renderer: () => renderer, config }, body, signal);
  source.gateApplied = (body) => gateApplied(reconciler, body);
  const gateDeps = {
    rules,
    renderer: () => renderer,
    config,
    reconciler,
    denyRenderer: ctx.denyRenderer,
    applier: applier.mode === "nsenter" ? applier : undefined,
    dns: dns?.forwarder,
  };
  source.gateEnforce = (body) => gateEnforce(gateDeps, body, signal);
  const early = earlyShim();
  signal.addEventListener("abort", () => early.clear(), { once: true });
  source.shim = (what, body) =>
    what === "prepare"
      ? Promise.resolve(shimPrepare(body, gateDeps.applier !== undefined))
      : what === "created"
      ? Promise.resolve(shimCreated(gateDeps, early, body, signal))
      : shimEnforce(gateDeps, early, body, signal);
  const status = config.listen ? await serveStatus(config.listen, source, log, signal) : undefined;
  // After the status server: a daemon that cannot start must not leave the host sysctl changed.
  deny.watch = await startDenyWatch({ config, log, metrics, reconciler, rules, applier });
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
      await deny.watch?.close();
      dns?.stop();
      await status?.finished;
      docker.close();
      ctx.close();
      log.info("stopped");
    }
  })();
  return { done, reload, reconciler, metrics, rules };
}
