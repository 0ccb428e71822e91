/**
 * The daemon's DNS forwarder for rules by DNS name, wired to the real namespaces: listeners opened by a
 * worker thread inside each steered namespace, set updates through nsenter and ipset, upstream queries
 * from the daemon's own namespace. Only in nsenter mode (it needs the host's PID namespace).
 */
import type { Config } from "../config/config.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "./metrics.ts";
import { DnsForwarder } from "../fqdn/forwarder.ts";
import { NsListeners } from "../fqdn/listeners.ts";
import { SetWriter } from "../fqdn/sets.ts";
import { NetlinkSets } from "../fqdn/netlink_sets.ts";
import { queryTcp, queryUdp } from "../fqdn/upstream.ts";
import { hostResolvers } from "../fqdn/resolvers.ts";
import { denoRunner } from "../apply/applier.ts";
import { formatAddress, maskBytes, parseAddress } from "../rules/ip.ts";

/** Seconds an answered address is kept past its (floored) TTL. */
export const FQDN_GRACE_S = 5;

/** Whether `address` lies in one of `cidrs` (`--dns` entries: addresses or CIDRs). */
export function inCidrs(address: string, cidrs: readonly string[]): boolean {
  const a = parseAddress(address);
  if (!a) return false;
  return cidrs.some((c) => {
    const [net, pfx] = c.split("/");
    const n = parseAddress(net);
    if (!n || n.family !== a.family) return false;
    const prefix = pfx === undefined ? (a.family === "ipv4" ? 32 : 128) : Number(pfx);
    return formatAddress(a.family, maskBytes(a.bytes, prefix)) ===
      formatAddress(n.family, maskBytes(n.bytes, prefix));
  });
}

/** The forwarder and what stops it. */
export interface DaemonDns {
  forwarder: DnsForwarder;
  /** Copy its counters into the metrics (at each scrape). */
  export(metrics: Metrics): void;
  stop(): void;
}

const HOLD_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];

/**
 * Start the forwarder. `resteer` gets the containers to apply again when the listener thread died (their
 * steering points at listeners that are gone: nothing resolves there until they are applied again).
 */
export function startDns(
  config: Config,
  log: Logger,
  opts: { ipv6: boolean; resteer?: (ids: string[]) => void },
): DaemonDns {
  const resteer = opts.resteer ?? (() => {});
  const writer = new SetWriter(denoRunner, { timeoutMs: 5000 });
  // deno-lint-ignore prefer-const
  let forwarder: DnsForwarder;
  const listeners = new NsListeners((q) => forwarder.handle(q), (error) => {
    const ids = forwarder.dropAll();
    log.error("DNS listener thread failed; steering those containers again", {
      error,
      containers: ids.length,
    });
    resteer(ids);
  });
  const upstreamDefault = config.fqdnUpstream.length ? config.fqdnUpstream : hostResolvers();
  forwarder = new DnsForwarder({
    listeners,
    sets: writer,
    netlink: (fd) => new NetlinkSets(fd),
    upstream: {
      udp: (s, m, t) => queryUdp(s, m, t),
      tcp: (s, m, t) => queryTcp(s, m, t),
    },
    now: () => Date.now(),
    log,
  }, {
    minTtl: config.fqdnMinTtlMs / 1000,
    grace: FQDN_GRACE_S,
    holdMs: 1000,
    upstreamTimeoutMs: 2000,
    ownResolvers: upstreamDefault,
    fallbackResolvers: upstreamDefault,
    resolverAllowed: (a) => inCidrs(a, config.dnsResolvers),
    ipv6: opts.ipv6,
  });
  const last = { queries: 0, held: 0, servfails: 0, setUpdates: 0, upstreamErrors: 0 };
  return {
    forwarder,
    export(metrics) {
      const s = forwarder.stats;
      const counters: [keyof typeof last, string, string][] = [
        ["queries", "egresstrator_dns_queries_total", "DNS queries from steered containers"],
        [
          "held",
          "egresstrator_dns_answers_held_total",
          "DNS answers held until the sets held their addresses",
        ],
        ["servfails", "egresstrator_dns_servfail_total", "SERVFAILs sent to containers (fail closed)"],
        ["setUpdates", "egresstrator_dns_set_updates_total", "Set updates for DNS answers"],
        [
          "upstreamErrors",
          "egresstrator_dns_upstream_errors_total",
          "Queries the upstream resolver did not answer",
        ],
      ];
      for (const [k, name, help] of counters) {
        metrics.inc(name, help, {}, s[k] - last[k]);
        last[k] = s[k];
      }
      for (const ms of s.holds.splice(0)) {
        metrics.observe(
          "egresstrator_dns_hold_seconds",
          "How long DNS answers were held for their set updates",
          ms / 1000,
          HOLD_BUCKETS,
        );
      }
      metrics.set(
        "egresstrator_dns_steered_containers",
        "Containers whose DNS is steered",
        forwarder.status().length,
      );
    },
    stop() {
      forwarder.stop();
      listeners.stop();
    },
  };
}
