/**
 * Driving egresstrator as users do, for integration tests: one-shot commands (`runCli`, from run_cli.ts),
 * the daemon in the background with its JSON log lines collected, and checks from the host on what ended
 * up in a container's network namespace.
 */
import { cliEnv, REPO_ROOT } from "./run_cli.ts";
import { execIn, testName, withDocker } from "./docker.ts";
import { createFreeNetwork } from "./networks.ts";

export { type CliResult, REPO_ROOT, runCli, type RunCliOptions } from "./run_cli.ts";

/** One daemon log line: the parsed JSON object, or `{ msg: <raw text>, raw: true }` for anything else. */
export interface LogEntry {
  time?: string;
  level?: string;
  msg: string;
  raw?: boolean;
  [field: string]: unknown;
}

/** A daemon running in the background. */
export interface DaemonProc {
  pid: number;
  /** Resolves with the first entry the predicate accepts (also among lines already seen). */
  waitForLog(predicate: (e: LogEntry) => boolean, timeoutMs?: number, what?: string): Promise<LogEntry>;
  /** Every log line so far. */
  logs(): LogEntry[];
  /** What it wrote on stdout so far. */
  stdout(): string;
  /** Send a signal (no wait). */
  signal(sig: Deno.Signal): void;
  /** Send `sig`, wait for the exit (SIGKILL after `timeoutMs`), and return the status. Safe to call twice. */
  stop(sig?: Deno.Signal, timeoutMs?: number): Promise<{ code: number; signal: Deno.Signal | null }>;
  /** SIGKILL and reap. */
  kill(): Promise<void>;
  /** Resolves when the process has exited. */
  exited: Promise<Deno.CommandStatus>;
}

/** Options of {@link startDaemon}. */
export interface StartDaemonOptions {
  /** Global options after `--log-format json` (e.g. `-c`, `-k`, `-H`, `--mode`). */
  args: string[];
  env?: Record<string, string>;
  /** A command the daemon runs under, which must end by exec'ing its arguments (e.g. `unshare -m ...`). */
  wrap?: string[];
  /** Deno permission flags instead of `-A` (e.g. those `deno task start` and the compiled binary have). */
  permissions?: string[];
}

function parseLine(line: string): LogEntry {
  try {
    const v = JSON.parse(line);
    if (v && typeof v === "object" && typeof v.msg === "string") return v as LogEntry;
  } catch { /* not JSON */ }
  return { msg: line, raw: true };
}

function describeLogs(entries: LogEntry[], n = 40): string {
  return entries.slice(-n).map((e) => (e.raw ? e.msg : JSON.stringify(e))).join("\n");
}

/**
 * Spawn `deno run -A --quiet main.ts --log-format json ...args` (the daemon: no command). The child
 * does not inherit CONSUL_*, EGRESSTRATOR_* or DOCKER_* from the test's environment. Unless `args`
 * say otherwise, `--listen none`: the default status socket is shared by every daemon on the host.
 */
export function startDaemon(opts: StartDaemonOptions): Promise<DaemonProc> {
  const env = cliEnv(opts.env);
  const listen = opts.args.includes("--listen") ? [] : ["--listen", "none"];
  const argv = [
    "run",
    ...(opts.permissions ?? ["-A"]),
    "--quiet",
    `${REPO_ROOT}/main.ts`,
    "--log-format",
    "json",
    ...listen,
    ...opts.args,
  ];
  const [cmd, ...pre] = opts.wrap?.length ? [...opts.wrap, Deno.execPath()] : [Deno.execPath()];
  const child = new Deno.Command(cmd, {
    args: [...pre, ...argv],
    cwd: REPO_ROOT,
    env,
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();

  const entries: LogEntry[] = [];
  const waiters = new Set<{ pred: (e: LogEntry) => boolean; resolve: (e: LogEntry) => void }>();
  let out = "";
  const dec = new TextDecoder();

  const readErr = (async () => {
    let buf = "";
    for await (const chunk of child.stderr) {
      buf += dec.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trimEnd();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const e = parseLine(line);
        entries.push(e);
        for (const w of [...waiters]) {
          if (w.pred(e)) {
            waiters.delete(w);
            w.resolve(e);
          }
        }
      }
    }
    if (buf.trim()) entries.push(parseLine(buf.trim()));
  })();
  const readOut = (async () => {
    const d = new TextDecoder();
    for await (const chunk of child.stdout) out += d.decode(chunk, { stream: true });
  })();
  const exited = child.status;
  let done: Deno.CommandStatus | undefined;
  // Both pipes are drained before anyone sees the exit, so logs() is complete then.
  const finished = Promise.all([exited, readErr, readOut]).then(([s]) => (done = s));

  const waitForLog = (pred: (e: LogEntry) => boolean, timeoutMs = 20_000, what = "a log line") => {
    const seen = entries.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise<LogEntry>((resolve, reject) => {
      const w = {
        pred,
        resolve: (e: LogEntry) => {
          clearTimeout(timer);
          resolve(e);
        },
      };
      const fail = (why: string) => {
        waiters.delete(w);
        clearTimeout(timer);
        reject(new Error(`daemon: ${why} waiting for ${what}; last log lines:\n${describeLogs(entries)}`));
      };
      const timer = setTimeout(() => fail(`timed out after ${timeoutMs} ms`), timeoutMs);
      waiters.add(w);
      finished.then(() => {
        if (waiters.has(w)) fail(`exited (code ${done?.code})`);
      });
    });
  };

  const send = (sig: Deno.Signal) => {
    try {
      child.kill(sig);
    } catch { /* already gone */ }
  };

  let stopped: Promise<{ code: number; signal: Deno.Signal | null }> | undefined;
  const stop = (sig: Deno.Signal = "SIGTERM", timeoutMs = 20_000) => {
    stopped ??= (async () => {
      if (!done) send(sig);
      const timer = setTimeout(() => send("SIGKILL"), timeoutMs);
      const s = await finished;
      clearTimeout(timer);
      return { code: s.code, signal: s.signal };
    })();
    return stopped;
  };

  return Promise.resolve({
    pid: child.pid,
    waitForLog,
    logs: () => [...entries],
    stdout: () => out,
    signal: send,
    stop,
    kill: async () => {
      await stop("SIGKILL");
    },
    exited: finished,
  });
}

/** Log entries with this message for this container name. */
export function logsFor(d: DaemonProc, msg: string, container: string): LogEntry[] {
  return d.logs().filter((e) => e.msg === msg && e.container === container);
}

/** Poll `fn` until it returns something other than undefined/false/null; throw naming `what` on timeout. */
export async function waitFor<T>(
  fn: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  timeoutMs: number,
  what: string,
  intervalMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (true) {
    try {
      const v = await fn();
      if (v !== undefined && v !== null && v !== false) return v as T;
      last = undefined;
    } catch (err) {
      last = err;
    }
    if (Date.now() >= deadline) {
      const why = last ? `; last error: ${(last as Error).message ?? last}` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** The host PID of a running container's init process. */
export async function containerPid(id: string, host?: string): Promise<number> {
  const info = await withDocker(host, (c) => c.inspectContainer(id));
  if (!info.running || !info.pid) throw new Error(`container ${id.slice(0, 12)} is not running`);
  return info.pid;
}

/** `nsenter --net=/proc/<pid>/ns/net iptables-save -t filter` (or ip6tables-save) for a container. */
export async function iptablesIn(
  id: string,
  family: "ipv4" | "ipv6" = "ipv4",
  host?: string,
): Promise<string> {
  const pid = await containerPid(id, host);
  const save = family === "ipv4" ? "iptables-save" : "ip6tables-save";
  const res = await new Deno.Command("nsenter", {
    args: [`--net=/proc/${pid}/ns/net`, "--", save, "-t", "filter"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  if (!res.success) throw new Error(`${save} in ${id.slice(0, 12)}: ${dec.decode(res.stderr).trim()}`);
  return dec.decode(res.stdout);
}

/** The `-A` lines of an iptables-save or rendered text, whitespace-normalised. */
export function ruleLines(text: string): string[] {
  return text.split("\n").map((l) => l.trim().replace(/\s+/g, " ")).filter((l) => l.startsWith("-A "));
}

/** The saved REJECT rule for a destination, as iptables-save prints what the templates render. */
export function rejectLine(cidr: string, port: number | string, proto: "tcp" | "udp" = "tcp"): string {
  const p = String(port);
  const match = p.includes("-")
    ? `-p ${proto} -m multiport --dports ${p.replace("-", ":")}`
    : `-p ${proto} -m ${proto} --dport ${p}`;
  const target = proto === "tcp"
    ? "REJECT --reject-with tcp-reset"
    : "REJECT --reject-with icmp-port-unreachable";
  return `-A OUTPUT -d ${cidr} ${match} -m conntrack --ctdir ORIGINAL -j ${target}`;
}

/** The last rule of the deny-all (allowlist) set: everything else rejected. */
export const REJECT_ALL_LINE = "-A OUTPUT -j REJECT --reject-with icmp-port-unreachable";

/**
 * Whether `id` can open a TCP connection to ip:port and get an HTTP answer (busybox `nc -w 2` sending a
 * request to the test's httpd). A REJECT (tcp-reset) fails at once; nothing waits longer than 2 s.
 */
export async function canConnect(
  id: string,
  ip: string,
  port: number,
  host?: string,
): Promise<{ ok: boolean; detail: string }> {
  const script = `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 "$0" "$1"`;
  const r = await execIn(id, ["sh", "-c", script, ip, String(port)], { host });
  const ok = r.code === 0 && /^HTTP\/1\.[01] \d{3}/.test(r.stdout);
  return {
    ok,
    detail: `exit ${r.code}, stdout ${JSON.stringify(r.stdout.slice(0, 60))}, stderr ${
      JSON.stringify(r.stderr.trim().slice(0, 120))
    }`,
  };
}

/** A plain TCP relay from 127.0.0.1:`port` to `target` ("host:port"), for a service that starts later. */
export interface Relay {
  port: number;
  close(): Promise<void>;
}

/** Listen on 127.0.0.1:port and pipe every connection to `target`. */
export function startRelay(port: number, target: string): Relay {
  const [hostname, p] = [
    target.slice(0, target.lastIndexOf(":")),
    Number(target.slice(target.lastIndexOf(":") + 1)),
  ];
  const listener = Deno.listen({ hostname: "127.0.0.1", port });
  const conns = new Set<Deno.Conn>();
  const pipes = new Set<Promise<unknown>>();
  const closeQuietly = (c: Deno.Conn) => {
    try {
      c.close();
    } catch { /* closed */ }
  };
  const serve = (async () => {
    try {
      for await (const inbound of listener) {
        conns.add(inbound);
        const job = (async () => {
          let outbound: Deno.Conn | undefined;
          try {
            outbound = await Deno.connect({ hostname, port: p });
            conns.add(outbound);
            await Promise.race([
              inbound.readable.pipeTo(outbound.writable, { preventClose: false }).catch(() => {}),
              outbound.readable.pipeTo(inbound.writable, { preventClose: false }).catch(() => {}),
            ]);
          } catch {
            /* peer gone */
          } finally {
            closeQuietly(inbound);
            if (outbound) closeQuietly(outbound);
            conns.delete(inbound);
            if (outbound) conns.delete(outbound);
          }
        })();
        pipes.add(job);
        job.finally(() => pipes.delete(job));
      }
    } catch { /* listener closed */ }
  })();
  return {
    port,
    close: async () => {
      try {
        listener.close();
      } catch { /* closed */ }
      for (const c of conns) closeQuietly(c);
      await serve;
      await Promise.allSettled([...pipes]);
    },
  };
}

/** A labelled bridge network on the main dockerd with an unused `10.232.<n>.0/24` ({@link createFreeNetwork}). */
export async function createSubnetNetwork(name = testName("net")): Promise<{ name: string; subnet: string }> {
  const net = await withDocker(undefined, (c) => createFreeNetwork(c, { name, second: 232 }));
  return { name, subnet: net.subnet4 };
}

/** Helper containers (label `egresstrator.helper`) left behind for a target container, on `host`. */
export async function helpersLeft(targetId?: string, host?: string): Promise<string[]> {
  const label = targetId ? `egresstrator.helper=${targetId}` : "egresstrator.helper";
  const list = await withDocker(host, (c) => c.listContainers({ all: true, filters: { label: [label] } }));
  return list.map((c) => `${c.id.slice(0, 12)} ${c.names.join(",")}`);
}
