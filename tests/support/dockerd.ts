/**
 * A private dockerd for tests that restart or configure the daemon, or that must not see (or be seen by)
 * other tests' containers on the shared dockerd: its own socket, data-root and exec-root under a temp dir,
 * no iptables management (`--iptables=false --ip-forward=false`), its own managed containerd, and
 * `--shutdown-timeout=2` so a restart does not wait 15 s for containers that ignore SIGTERM.
 *
 * Its default bridge is a Linux bridge of its own (`egtd<random>`, with a free `10.233.<n>.1/24`), made
 * before dockerd starts, kept across restart() and deleted by stop(). Never `--bridge=none`: with it,
 * dockerd 20.10 deletes the host's `docker0` at start (daemon_unix.go removeDefaultBridgeInterface),
 * and every `docker run` on the main dockerd's default network fails from then on. A bridge named by
 * `--bridge` must exist already (dockerd only creates `docker0` itself), and `--bip` cannot go with it,
 * hence the address set here.
 *
 * Containers on it use network `none` or a bridge network made with {@link PrivateDockerd.createNetwork}.
 * Because this dockerd writes no firewall rules, and the host has br_netfilter loaded with the main
 * dockerd's `FORWARD` policy DROP, bridged traffic between two containers would be dropped by the host:
 * createNetwork names the bridge and inserts one host rule, `-i <bridge> -o <bridge> -j ACCEPT`, which
 * only lets the network's own containers talk to each other. stop() deletes it.
 */
import { DockerClient } from "../../src/docker/client.ts";
import {
  BUSYBOX_IMAGE,
  removeObjects,
  RUN_ID,
  runContainer,
  type RunOptions,
  TEST_LABEL,
  testName,
  withDocker,
} from "./docker.ts";
import { createFreeNetwork, freeOctet, usedOctets } from "./networks.ts";
import { processTree } from "./processes.ts";

/** Options of {@link startPrivateDockerd}. */
export interface PrivateDockerdOptions {
  /** Extra OCI runtimes: name -> path of the runtime binary (`--add-runtime name=path`). */
  runtimes?: Record<string, string>;
  extraArgs?: string[];
  /** Images copied from the main dockerd once it is up (default: the busybox test image). */
  images?: string[];
}

/** A bridge network on the private dockerd. */
export interface PrivateNetwork {
  id: string;
  name: string;
  /** `10.231.<n>.0/24` */
  subnet: string;
  /** Host interface name of the bridge. */
  bridge: string;
}

/** A running private dockerd. */
export interface PrivateDockerd {
  /** `unix:///tmp/egt-dockerd-XXXX/docker.sock`, as `-H` takes it. */
  host: string;
  /** The temp dir holding everything (socket, data, exec root, log). */
  dir: string;
  logFile: string;
  /** A client for this dockerd; close it when done. */
  client(): DockerClient;
  /** Stop dockerd (its containers stop with it) and start it again on the same dirs. */
  restart(): Promise<void>;
  /** Remove every container and network, stop dockerd and containerd, unmount leftovers, delete the dir. */
  stop(): Promise<void>;
  /** Copy an image from the main dockerd: `docker save NAME | docker -H <host> load`. */
  loadImage(name: string): Promise<void>;
  /** A labelled bridge network with a free 10.231.<n>.0/24 subnet and the host rule described above. */
  createNetwork(name?: string): Promise<PrivateNetwork>;
  /**
   * {@link runContainer} on this dockerd, with a stop timeout of 1 s: PID 1 (sleep, httpd) ignores SIGTERM,
   * and a dockerd restart would wait 10 s per container.
   */
  run(opts: Omit<RunOptions, "host">): Promise<{ id: string; name: string }>;
}

const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 20_000;

async function sh(script: string, args: string[] = []): Promise<{ code: number; out: string }> {
  const res = await new Deno.Command("bash", {
    args: ["-c", script, "bash", ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: res.code, out: (dec.decode(res.stdout) + dec.decode(res.stderr)).trim() };
}

async function mustSh(what: string, script: string, args: string[] = []): Promise<string> {
  const r = await sh(script, args);
  if (r.code !== 0) throw new Error(`${what} failed (exit ${r.code}): ${r.out}`);
  return r.out;
}

async function ping(socket: string): Promise<boolean> {
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: socket } });
  try {
    const res = await fetch("http://docker/_ping", { client, signal: AbortSignal.timeout(2000) });
    const text = await res.text();
    return res.ok && text === "OK";
  } catch {
    return false;
  } finally {
    client.close();
  }
}

function alive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

function readPid(path: string): number | undefined {
  try {
    const n = Number(Deno.readTextFileSync(path).trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

async function logTail(path: string, lines = 30): Promise<string> {
  try {
    return (await Deno.readTextFile(path)).trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/** Mount points at or under `dir`, deepest first (from /proc/self/mountinfo). */
export function mountsUnder(dir: string): string[] {
  const text = Deno.readTextFileSync("/proc/self/mountinfo");
  const points = text.split("\n").filter(Boolean).map((l) =>
    l.split(" ")[4].replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)))
  );
  return points.filter((p) => p === dir || p.startsWith(dir + "/")).sort((a, b) => b.length - a.length);
}

/** containerd and shim processes whose command line names `dir` (this dockerd's), plus their descendants. */
function processesOf(dir: string): number[] {
  return processTree(/(^|\/)containerd/, dir);
}

/**
 * Create `name` as an up Linux bridge with `10.233.<free n>.1/24`: the private dockerd's default bridge.
 * When `ip link add` itself fails the name is someone else's: nothing is deleted then.
 */
async function createDefaultBridge(name: string): Promise<void> {
  const address = `10.233.${freeOctet(await usedOctets(233))}.1/24`;
  await mustSh(`create bridge ${name}`, 'ip link add "$1" type bridge', [name]);
  const r = await sh('ip addr add "$2" dev "$1" && ip link set "$1" up', [name, address]);
  if (r.code !== 0) {
    await deleteLink(name);
    throw new Error(`set up bridge ${name} with ${address} failed (exit ${r.code}): ${r.out}`);
  }
}

/** Delete a network interface if it exists. */
export async function deleteLink(name: string): Promise<void> {
  await sh('ip link show "$1" >/dev/null 2>&1 && ip link del "$1"', [name]);
}

/** The comment on a private dockerd's host FORWARD rule; the run id follows it. */
export const BRIDGE_COMMENT = "egresstrator-test private dockerd bridge";

const FORWARD_RULE = (bridge: string) => [
  "FORWARD",
  "-i",
  bridge,
  "-o",
  bridge,
  "-m",
  "comment",
  "--comment",
  `${BRIDGE_COMMENT} ${RUN_ID}`,
  "-j",
  "ACCEPT",
];

/**
 * Insert (`-I`), delete (`-D`) or check (`-C`) the host rule that lets a test bridge's own ports talk to
 * each other: `-i <bridge> -o <bridge> -j ACCEPT` in FORWARD. Whether it was there (`-D`/`-C`).
 */
export async function bridgeForwardRule(op: "-I" | "-D" | "-C", bridge: string): Promise<boolean> {
  const rule = FORWARD_RULE(bridge);
  const args = op === "-I" ? ["-w", "-I", rule[0], "1", ...rule.slice(1)] : ["-w", op, ...rule];
  const res = await new Deno.Command("iptables", { args, stdout: "null", stderr: "piped" }).output();
  if (!res.success && op === "-I") {
    throw new Error(`iptables ${args.join(" ")}: ${new TextDecoder().decode(res.stderr).trim()}`);
  }
  return res.success;
}

/** Start a private dockerd and wait until its socket answers `/_ping`. */
export async function startPrivateDockerd(opts: PrivateDockerdOptions = {}): Promise<PrivateDockerd> {
  const dir = await Deno.makeTempDir({ prefix: "egt-dockerd-" });
  const socket = `${dir}/docker.sock`;
  const logFile = `${dir}/dockerd.log`;
  const host = `unix://${socket}`;
  // At most 15 characters (IFNAMSIZ); "egt"/"egt6" + 8 are the networks' bridges (createNetwork, live.ts).
  const defaultBridge = `egtd${crypto.randomUUID().slice(0, 8)}`;
  const args = [
    "--host",
    host,
    "--data-root",
    `${dir}/data`,
    "--exec-root",
    `${dir}/exec`,
    "--pidfile",
    `${dir}/docker.pid`,
    "--iptables=false",
    "--ip-forward=false",
    `--bridge=${defaultBridge}`,
    // Test containers (sleep, httpd as PID 1) ignore SIGTERM: do not wait the default 15 s for each.
    "--shutdown-timeout=2",
    ...Object.entries(opts.runtimes ?? {}).flatMap(([name, path]) => ["--add-runtime", `${name}=${path}`]),
    ...(opts.extraArgs ?? []),
  ];
  let child: Deno.ChildProcess | undefined;
  const bridges = new Set<string>();
  let ownsDefaultBridge = false;

  const launch = async () => {
    // sh only redirects into the log; exec makes our signals reach dockerd itself.
    child = new Deno.Command("sh", {
      args: ["-c", 'exec dockerd "$@" >>"$DOCKERD_LOG" 2>&1', "dockerd", ...args],
      env: { DOCKERD_LOG: logFile },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    let exited: Deno.CommandStatus | undefined;
    const proc = child;
    proc.status.then((s) => (exited = s));
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (exited) {
        throw new Error(`dockerd exited with ${exited.code} during startup:\n${await logTail(logFile)}`);
      }
      if (await ping(socket)) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`dockerd not ready after ${START_TIMEOUT_MS} ms:\n${await logTail(logFile)}`);
  };

  const halt = async () => {
    const proc = child;
    child = undefined;
    if (!proc) return;
    const containerd = readPid(`${dir}/exec/containerd/containerd.pid`);
    try {
      proc.kill("SIGTERM");
    } catch { /* already gone */ }
    const timer = setTimeout(() => {
      try {
        proc.kill("SIGKILL");
      } catch { /* already gone */ }
    }, STOP_TIMEOUT_MS);
    await proc.status;
    clearTimeout(timer);
    // dockerd stops its managed containerd on a clean exit; after a SIGKILL it would be left running.
    if (containerd && alive(containerd)) {
      const cmdline = await Deno.readTextFile(`/proc/${containerd}/cmdline`).catch(() => "");
      if (cmdline.includes(dir)) {
        Deno.kill(containerd, "SIGTERM");
        for (let i = 0; i < 100 && alive(containerd); i++) await new Promise((r) => setTimeout(r, 100));
        if (alive(containerd)) Deno.kill(containerd, "SIGKILL");
      }
    }
  };

  const client = () => new DockerClient({ host, timeoutMs: 30_000 });

  const removeAll = async () => {
    const c = client();
    try {
      await removeObjects(c, { containers: "all", networks: TEST_LABEL });
    } finally {
      c.close();
    }
  };

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      const problems: string[] = [];
      if (child && await ping(socket)) {
        await removeAll().catch((err) => problems.push(`remove objects: ${(err as Error).message}`));
      }
      await halt();
      // A container dockerd could not remove (a runtime stuck in create) leaves its shim and `runc init`
      // behind once dockerd and containerd are gone; they hold mounts under dir. Only our dir's processes.
      const left = processesOf(dir);
      if (left.length) {
        console.warn(
          `private dockerd ${dir}: killing ${left.length} leftover process(es): ${left.join(",")}`,
        );
        for (const pid of left) {
          try {
            Deno.kill(pid, "SIGKILL");
          } catch { /* gone */ }
        }
        for (let i = 0; i < 50 && left.some(alive); i++) await new Promise((r) => setTimeout(r, 100));
      }
      for (const b of bridges) {
        while (await bridgeForwardRule("-D", b)) { /* remove every copy */ }
        await deleteLink(b);
      }
      if (ownsDefaultBridge) await deleteLink(defaultBridge);
      for (const m of mountsUnder(dir)) {
        const r = await sh('umount "$1" 2>&1 || umount -l "$1"', [m]);
        if (r.code !== 0) problems.push(`umount ${m}: ${r.out}`);
      }
      await Deno.remove(dir, { recursive: true }).catch((err) =>
        problems.push(`remove ${dir}: ${(err as Error).message}`)
      );
      if (problems.length) throw new Error(`private dockerd cleanup: ${problems.join("; ")}`);
    })();
    return stopping;
  };

  const loadImage = async (name: string) => {
    await mustSh(
      `copy image ${name} to the private dockerd`,
      'set -o pipefail; docker save "$1" | docker -H "$2" load -q',
      [name, host],
    );
  };

  const createNetwork = async (name = testName("pnet")): Promise<PrivateNetwork> => {
    const bridge = `egt${crypto.randomUUID().slice(0, 8)}`;
    const net = await withDocker(host, (c) => createFreeNetwork(c, { name, second: 231, bridge }));
    bridges.add(bridge);
    await bridgeForwardRule("-I", bridge);
    return { id: net.id, name, subnet: net.subnet4, bridge };
  };

  const run = (o: Omit<RunOptions, "host">) => runContainer({ stopTimeout: 1, ...o, host });

  try {
    await createDefaultBridge(defaultBridge);
    ownsDefaultBridge = true;
    await launch();
    for (const image of opts.images ?? [BUSYBOX_IMAGE]) await loadImage(image);
  } catch (err) {
    await stop().catch(() => {});
    throw err;
  }
  return {
    host,
    dir,
    logFile,
    client,
    restart: async () => {
      await halt();
      await launch();
    },
    stop,
    loadImage,
    createNetwork,
    run,
  };
}
