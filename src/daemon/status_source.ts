/** What the status server reports: the daemon's state mapped to `/status` JSON and `/metrics` text. */
import type { Reconciler } from "./reconcile.ts";
import type { LiveRules } from "./live_rules.ts";
import type { Metrics } from "./metrics.ts";
import type { StatusReport, StatusSource } from "./status_server.ts";
import { VERSION } from "../version.ts";
import type { DenyLog } from "./deny_log.ts";
import type { DaemonDns } from "./dns.ts";

/** What {@link statusSource} reads. */
export interface StatusDeps {
  /** What does not change while the daemon runs: applier mode, default policy, ACL source. */
  fixed: Pick<StatusReport, "mode" | "policy" | "source" | "ipv6">;
  reconciler: Reconciler;
  rules: LiveRules;
  metrics: Metrics;
  state: { dockerConnected: boolean };
  /** The deny log (undefined with --deny-log off, and until it has started). */
  deny: () => DenyLog | undefined;
  /** The DNS forwarder (rules by DNS name), in nsenter mode. */
  dns?: () => DaemonDns | undefined;
}

const FULL_ID = /^[0-9a-f]{64}$/;

/** The status server's view of a running daemon. */
export function statusSource(d: StatusDeps): StatusSource {
  return {
    report: () => ({
      version: VERSION,
      ...d.fixed,
      watches: d.rules.watchCount(),
      docker: { connected: d.state.dockerConnected },
      consul: { errors: d.metrics.get("egresstrator_consul_errors_total") },
      unfiltered: d.reconciler.unfilteredCount(),
      // Everything the loop remembers but its bookkeeping (drift baseline, retry count).
      containers: [...d.reconciler.states.values()].map((
        { savedHash: _saved, attempts: _attempts, ...row },
      ) => ({ ...row, audit: row.audit ?? false, deniedCount: d.deny()?.total(row.id) ?? 0 })),
      dns: d.dns?.()?.forwarder.status() ?? [],
    }),
    seen: (id) => {
      const s = FULL_ID.test(id) ? d.reconciler.states.get(id) : undefined;
      if (!s) return Response.json({ error: "no enforced container with that id" }, { status: 404 });
      return Response.json({
        id: s.id,
        name: s.name,
        policy: s.policy,
        audit: s.audit ?? false,
        denyLog: d.deny() !== undefined,
        entries: d.deny()?.seen(s.id) ?? [],
      });
    },
    metrics: () => {
      d.metrics.set(
        "egresstrator_enforced_containers",
        "Containers with rules in place",
        [...d.reconciler.states.values()].filter((s) => !s.unfiltered && !s.refused).length,
      );
      d.metrics.set(
        "egresstrator_unfiltered_containers",
        "Opted-in containers with neither their rules nor deny-all in place",
        d.reconciler.unfilteredCount(),
      );
      d.metrics.set(
        "egresstrator_docker_connected",
        "1 while the Docker event stream is up",
        d.state.dockerConnected ? 1 : 0,
      );
      d.dns?.()?.export(d.metrics);
      return d.metrics.render();
    },
  };
}
