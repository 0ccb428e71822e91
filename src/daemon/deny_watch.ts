/**
 * Wiring of the deny log into the daemon: the host sysctl set (and put back), one kernel log reader, the
 * once-a-second tick, and the lookups the deny log needs (short id -> enforced container, tag -> label).
 */
import { dirname } from "node:path";
import type { Config } from "../config/config.ts";
import type { Logger } from "../log.ts";
import type { Applier } from "../apply/applier.ts";
import type { Metrics } from "./metrics.ts";
import type { Reconciler } from "./reconcile.ts";
import type { LiveRules } from "./live_rules.ts";
import { tagIndex } from "../render/deny_log.ts";
import { DenyLog, type DenyTarget } from "./deny_log.ts";
import { followKmsg } from "./kmsg.ts";
import { enableNfLogAllNetns } from "./nf_log_sysctl.ts";
import { describeError } from "../errors.ts";
import type { AclSnapshot } from "../rules/acl_source.ts";
import type { ContainerState } from "./state.ts";

/** A running deny log. */
export interface DenyWatch {
  log: DenyLog;
  /** Stop reading, put the sysctl back. */
  close(): Promise<void>;
}

/** What {@link startDenyWatch} needs. */
export interface DenyWatchDeps {
  config: Pick<Config, "denyLog" | "listen">;
  log: Logger;
  metrics: Metrics;
  reconciler: Reconciler;
  rules: LiveRules;
  applier: Applier;
  /** Overrides for tests: the kernel log and the sysctl file. */
  kmsgPath?: string;
  sysctlPath?: string;
}

/** Where the sysctl's value found at start is kept: beside the unix status socket. */
function stateFile(listen: string | undefined): string | undefined {
  return listen?.startsWith("unix://")
    ? `${dirname(listen.slice("unix://".length))}/nf_log_all_netns.saved`
    : undefined;
}

function toTarget(s: ContainerState): DenyTarget {
  return { id: s.id, name: s.name, epoch: s.lastApplied };
}

/** Short id -> state, rebuilt at most every 250 ms when asked for an id it does not hold. */
function stateIndex(reconciler: Reconciler) {
  let index = new Map<string, ContainerState>();
  let built = 0;
  const rebuild = () => {
    index = new Map([...reconciler.states.values()].map((s) => [s.id.slice(0, 12), s]));
    built = Date.now();
  };
  return (id12: string): ContainerState | undefined => {
    if (!index.has(id12) && Date.now() - built > 250) rebuild();
    const s = index.get(id12) ?? undefined;
    // A state replaced since the index was built: the current one, still under the same id.
    return s ? reconciler.states.get(s.id) : undefined;
  };
}

/** Start the deny log (undefined with `--deny-log off`). Never throws: what cannot work is warned about. */
export async function startDenyWatch(d: DenyWatchDeps): Promise<DenyWatch | undefined> {
  if (!d.config.denyLog) return undefined;
  const sysctl = await enableNfLogAllNetns({
    log: d.log,
    path: d.sysctlPath,
    stateFile: stateFile(d.config.listen),
  });
  const find = stateIndex(d.reconciler);
  let labels: { snapshot?: AclSnapshot; index: Map<string, string> } = { index: tagIndex([]) };
  const denyLog = new DenyLog({
    log: d.log,
    metrics: d.metrics,
    lookup: (id12) => {
      const s = find(id12);
      return s ? toTarget(s) : undefined;
    },
    labels: () => {
      const snapshot = d.rules.current();
      if (snapshot && snapshot !== labels.snapshot) {
        labels = { snapshot, index: tagIndex(snapshot.entries.map((e) => e.key)) };
      }
      return labels.index;
    },
    // A helper container per read would be too dear: in helper mode the drift checks' reads count.
    read: d.applier.mode === "nsenter"
      ? (t) => {
        const s = d.reconciler.states.get(t.id);
        if (!s?.pid) return Promise.reject(new Error("no process"));
        return d.applier.read({ id: s.id, name: s.name, pid: s.pid }, AbortSignal.timeout(10_000));
      }
      : undefined,
  });
  const stop = new AbortController();
  const reader = followKmsg({
    path: d.kmsgPath,
    signal: stop.signal,
    log: d.log,
    onMessage: (m) => {
      try {
        denyLog.message(m);
      } catch (err) {
        // A line must never stop the reader (it is built not to throw; this is the belt to those braces).
        d.log.debug("kernel log line not handled", { error: describeError(err) });
      }
    },
    onLost: () =>
      d.metrics.inc("egresstrator_kmsg_lost_total", "Times kernel log records were overwritten before read"),
  });
  let ticks = 0;
  const timer = setInterval(() => {
    try {
      denyLog.tick();
      if (++ticks % 2 === 0) void sysctl.ensure();
    } catch (err) {
      d.log.warn("deny log tick failed", { error: describeError(err) });
    }
  }, 1000);
  return {
    log: denyLog,
    close: async () => {
      clearInterval(timer);
      stop.abort();
      await reader;
      await sysctl.restore();
    },
  };
}
