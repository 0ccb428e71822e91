/** What the status server reports: the daemon's state mapped to `/status` JSON and `/metrics` text. */
import type { Reconciler } from "./reconcile.ts";
import type { LiveRules } from "./live_rules.ts";
import type { Metrics } from "./metrics.ts";
import type { StatusReport, StatusSource } from "./status_server.ts";
import { VERSION } from "../version.ts";

/** What {@link statusSource} reads. */
export interface StatusDeps {
  /** What does not change while the daemon runs: applier mode, default policy, ACL source. */
  fixed: Pick<StatusReport, "mode" | "policy" | "source" | "ipv6">;
  reconciler: Reconciler;
  rules: LiveRules;
  metrics: Metrics;
  state: { dockerConnected: boolean };
}

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
      ) => row),
    }),
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
      return d.metrics.render();
    },
  };
}
