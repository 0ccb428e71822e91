/**
 * Support for the live-update tests and the propagation/enforcement benchmarks: a private dockerd, a Consul
 * agent and one daemon with a status socket, set up and torn down together; reading /status and /metrics;
 * a counting HTTP proxy in front of Consul (how many blocking queries are open at once); a dual-stack
 * network on the private dockerd; and small timing helpers.
 *
 * The daemon enforces every opted-in container of the dockerd it follows, so it always follows a PRIVATE
 * dockerd here: on the shared one it would rewrite other tests' containers (and their daemons ours).
 */
import { pool } from "../../src/util/async.ts";
import { fetchStatus, type StatusReport } from "../../src/daemon/status_server.ts";
import { type ConsulAgent, startConsul } from "./consul.ts";
import { type PrivateDockerd, startPrivateDockerd } from "./dockerd.ts";
import { RUN_ID, testName, withDocker } from "./docker.ts";
import { createFreeNetwork, type FreeNetwork } from "./networks.ts";
import { type DaemonProc, type LogEntry, startDaemon } from "./egresstrator.ts";

/** Env that opts a container in with an ACL list and a policy. */
export function optIn(acls: string[], policy: "protect" | "allowlist" = "protect"): string[] {
  return ["EGRESSTRATOR_ENABLE=1", `EGRESSTRATOR_ACL=${acls.join(",")}`, `EGRESSTRATOR_POLICY=${policy}`];
}

/** Everything one live test needs. */
export interface LiveEnv {
  d: PrivateDockerd;
  consul: ConsulAgent;
  /** KV prefix with the trailing slash. */
  prefix: string;
  /** `-c <consul> -k <prefix> -H <private dockerd>`: global options for one-shot commands. */
  globals: string[];
  /** `unix://<tmp>/egt.sock`: the daemon's --listen. */
  listen: string;
  /** Start the daemon on the private dockerd with this prefix and --listen (killed at cleanup). */
  daemon(
    args?: string[],
    opts?: { consul?: string; wrap?: string[]; permissions?: string[] },
  ): Promise<DaemonProc>;
  /** Put a key under the prefix. */
  put(key: string, value: string): Promise<void>;
  /** Create and start `n` containers, at most `parallel` requests at once. */
  runMany(
    specs: { env: string[]; network?: string; cmd?: string[] }[],
    parallel?: number,
  ): Promise<Started[]>;
}

/** A started container. */
export interface Started {
  id: string;
  name: string;
}

/** The one bounded pool, production's (re-exported for the tests that used this module's). */
export { pool };

/** Options of {@link withLive}. */
export interface LiveOptions {
  images?: string[];
  /** Extra OCI runtimes for the private dockerd: name -> path (the gate's wrapper). */
  runtimes?: Record<string, string>;
}

/**
 * Private dockerd + Consul + cleanup around `body`. A cleanup failure (the private dockerd's objects, host
 * rule or mounts left behind) fails the test too, after the body's own error if it has one.
 */
export async function withLive<T>(opts: LiveOptions, body: (env: LiveEnv) => Promise<T>): Promise<T> {
  let d: PrivateDockerd | undefined;
  let consul: ConsulAgent | undefined;
  const daemons: DaemonProc[] = [];
  const tmp = await Deno.makeTempDir({ prefix: "egt-live-" });
  const cleanup = async () => {
    // SIGTERM first: a daemon puts back what it changed on the host (nf_log_all_netns) only when it stops.
    await Promise.all(daemons.map((p) => p.stop("SIGTERM", 10_000)));
    const stopped = await d?.stop().then(() => undefined, (err: Error) => err);
    await consul?.stop();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    if (stopped) throw stopped;
  };
  let result: T;
  try {
    const [dr, cr] = await Promise.allSettled([privateDockerd(opts), startConsul()]);
    if (dr.status === "fulfilled") d = dr.value;
    if (cr.status === "fulfilled") consul = cr.value;
    if (dr.status === "rejected") throw dr.reason;
    if (cr.status === "rejected") throw cr.reason;
    const dd = d!;
    const cc = consul!;
    const prefix = `egress/${RUN_ID}/${crypto.randomUUID().slice(0, 8)}/`;
    const listen = `unix://${tmp}/egt.sock`;
    result = await body({
      d: dd,
      consul: cc,
      prefix,
      globals: ["-c", cc.address, "-k", prefix, "-H", dd.host],
      listen,
      put: (key, value) => cc.putKv(prefix + key, value),
      daemon: async (args = [], o = {}) => {
        const p = await startDaemon({
          args: ["-c", o.consul ?? cc.address, "-k", prefix, "-H", dd.host, "--listen", listen, ...args],
          wrap: o.wrap,
          permissions: o.permissions,
        });
        daemons.push(p);
        return p;
      },
      runMany: (specs, parallel = 8) =>
        pool(
          specs,
          parallel,
          (s) => dd.run({ cmd: s.cmd ?? ["sleep", "3600"], env: s.env, network: s.network }),
        ),
    });
  } catch (err) {
    await cleanup().catch((e) => console.warn(`cleanup after a failure: ${(e as Error).message}`));
    throw err;
  }
  await cleanup();
  return result;
}

/**
 * A private dockerd, tried twice: its images are copied from the shared dockerd, which other engineers'
 * tests restart now and then (the copy then fails with "Cannot connect to the Docker daemon").
 */
async function privateDockerd(opts: LiveOptions): Promise<PrivateDockerd> {
  const start = () => startPrivateDockerd({ images: opts.images, runtimes: opts.runtimes });
  try {
    return await start();
  } catch (err) {
    console.warn(`private dockerd did not start, retrying once in 5 s: ${(err as Error).message}`);
    await new Promise((r) => setTimeout(r, 5000));
    return await start();
  }
}

/** GET /status as JSON. */
export async function getStatus(listen: string): Promise<StatusReport> {
  const res = await fetchStatus(listen, "/status", 10_000);
  if (!res.ok) throw new Error(`/status answered ${res.status}`);
  return await res.json() as StatusReport;
}

/** GET /metrics as text. */
export async function getMetrics(listen: string): Promise<string> {
  const res = await fetchStatus(listen, "/metrics", 10_000);
  if (!res.ok) throw new Error(`/metrics answered ${res.status}`);
  return await res.text();
}

/**
 * Sum of the samples of `name` (exact metric name, e.g. `egresstrator_applies_total` or
 * `egresstrator_time_to_enforce_seconds_sum`) whose labels include every one of `labels`; 0 when absent.
 */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line.trim());
    if (!m || m[1] !== name) continue;
    const have = m[2] ?? "";
    if (Object.entries(labels).every(([k, v]) => have.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

/** Applied log lines for a container name. */
export function appliedCount(p: DaemonProc, name: string): number {
  return p.logs().filter((e: LogEntry) => e.msg === "applied" && e.container === name).length;
}

/**
 * Poll `check` every `intervalMs` until it returns true; resolves with the ms from `t0` (performance.now())
 * to the first true answer. Rejects after `timeoutMs` with the last failure text.
 */
export async function timeUntil(
  t0: number,
  check: () => Promise<true | string>,
  timeoutMs: number,
  what: string,
  intervalMs = 50,
): Promise<number> {
  let last = "";
  while (true) {
    try {
      const r = await check();
      if (r === true) return performance.now() - t0;
      last = r;
    } catch (err) {
      last = (err as Error).message;
    }
    if (performance.now() - t0 > timeoutMs) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}: ${last}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** What the counting proxy saw. */
export interface ProxyCounts {
  /** Requests with an `index=` parameter open right now. */
  open: number;
  /** Highest `open` seen since the last reset. */
  max: number;
  /** The paths open when `max` was last reached. */
  atMax: string[];
  /** Every request forwarded. */
  total: number;
  /** Blocking queries by path (no query string), counted when they open. */
  byPath: Record<string, number>;
}

/** A counting HTTP proxy to Consul on 127.0.0.1:port. */
export interface CountingProxy {
  port: number;
  /** `127.0.0.1:<port>`, as -c takes it. */
  address: string;
  counts(): ProxyCounts;
  /** Paths (with query) of the blocking queries open now. */
  openNow(): string[];
  /** Start counting `max` afresh (from what is open now). */
  resetMax(): void;
  close(): Promise<void>;
}

/**
 * Forward every request to `upstream` (`http://127.0.0.1:PORT`) and count those carrying `index=`, i.e.
 * Consul blocking queries, while they are open. The client's abort cancels the upstream request.
 */
export function startCountingProxy(upstream: string): CountingProxy {
  const openSet = new Map<number, string>();
  let seq = 0;
  let max = 0;
  let atMax: string[] = [];
  let total = 0;
  const byPath: Record<string, number> = {};
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen: () => {} },
    async (req) => {
      total++;
      const url = new URL(req.url);
      const blocking = url.searchParams.has("index");
      const id = ++seq;
      if (blocking) {
        byPath[url.pathname] = (byPath[url.pathname] ?? 0) + 1;
        openSet.set(id, url.pathname + url.search);
        if (openSet.size >= max) (max = openSet.size, atMax = [...openSet.values()]);
      }
      // The client going away (a watch stopped) cancels the upstream query; the listener is removed before
      // answering, since Deno also aborts req.signal once a response is sent.
      const up = new AbortController();
      const cancel = () => up.abort();
      req.signal.addEventListener("abort", cancel);
      try {
        const body = req.method === "GET" || req.method === "HEAD" ? undefined : await req.arrayBuffer();
        // fetch decodes compressed bodies itself: ask for none and pass on no length or encoding.
        const headers = new Headers(req.headers);
        for (const h of ["host", "accept-encoding", "content-length"]) headers.delete(h);
        const res = await fetch(upstream + url.pathname + url.search, {
          method: req.method,
          headers,
          body,
          signal: AbortSignal.any([up.signal, ac.signal]),
        });
        // Blocking answers are small: read them whole so "open" ends when the answer is complete.
        const data = await res.arrayBuffer();
        const out = new Headers(res.headers);
        for (const h of ["content-encoding", "content-length", "transfer-encoding"]) out.delete(h);
        return new Response(data, { status: res.status, headers: out });
      } catch (err) {
        return new Response(`proxy: ${(err as Error).message}`, { status: 502 });
      } finally {
        req.signal.removeEventListener("abort", cancel);
        openSet.delete(id);
      }
    },
  );
  const port = (server.addr as Deno.NetAddr).port;
  return {
    port,
    address: `127.0.0.1:${port}`,
    counts: () => ({ open: openSet.size, max, atMax, total, byPath: { ...byPath } }),
    openNow: () => [...openSet.values()],
    resetMax: () => (max = openSet.size, atMax = [...openSet.values()]),
    close: async () => {
      ac.abort();
      await server.finished;
    },
  };
}

/**
 * A labelled IPv6-enabled bridge network on `d` with `10.231.<n>.0/24` and `fd00:e6e5:<n>::/64`
 * ({@link createFreeNetwork}). No host firewall rule is added: the host's ip6tables FORWARD policy lets
 * bridged IPv6 through, while bridged IPv4 on this network stays dropped by the main dockerd's FORWARD
 * policy, so only IPv6 traffic can be tested on it.
 */
export async function createDualStackNetwork(d: PrivateDockerd): Promise<FreeNetwork> {
  const bridge = `egt6${crypto.randomUUID().slice(0, 8)}`;
  return await withDocker(
    d.host,
    (c) => createFreeNetwork(c, { name: testName("net6"), second: 231, ipv6: true, bridge }),
  );
}

/** Median, p90, min, max and mean of samples (ms), rounded to 0.1. */
export interface Stats {
  n: number;
  median: number;
  p90: number;
  min: number;
  max: number;
  mean: number;
}

/** Summary statistics; p90 is the nearest-rank value. */
export function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  const r = (x: number) => Math.round(x * 10) / 10;
  if (s.length === 0) return { n: 0, median: NaN, p90: NaN, min: NaN, max: NaN, mean: NaN };
  const at = (q: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
  return {
    n: s.length,
    median: r(s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2),
    p90: r(at(0.9)),
    min: r(s[0]),
    max: r(s[s.length - 1]),
    mean: r(s.reduce((a, b) => a + b, 0) / s.length),
  };
}

/** Machine facts for benchmark reports. */
export async function machine(): Promise<Record<string, string | number>> {
  const sh = async (cmd: string, args: string[]) => {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output().catch(() =>
      undefined
    );
    return out?.success ? new TextDecoder().decode(out.stdout).trim() : "?";
  };
  return {
    cpus: navigator.hardwareConcurrency,
    kernel: await sh("uname", ["-r"]),
    docker: await sh("docker", ["version", "--format", "{{.Server.Version}}"]),
    deno: Deno.version.deno,
    date: new Date().toISOString(),
  };
}
