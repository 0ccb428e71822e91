/**
 * A private Podman for tests: its own `podman system service` on a socket in a temp dir, its own storage,
 * run root, tmp dir, events log, hooks dir and network config, chosen by CONTAINERS_CONF and
 * CONTAINERS_STORAGE_CONF, so nothing of the host's Podman (if any) is seen or touched, and the podman CLI
 * run with {@link PodmanService.env} acts on exactly this store (containers keep running while the service
 * is down: conmon, not the service, is their parent).
 *
 * Networking: one CNI network of its own, `bridge` + `host-local` only, with no masquerade, no firewall and
 * no portmap plugin, so CNI writes no iptables rule on the host. The bridge is made here, before the first
 * container, with a free `10.234.<n>.0/24` and no address, and like the private dockerd's networks it gets
 * one host rule, `-i <bridge> -o <bridge> -j ACCEPT` in FORWARD (br_netfilter and the main dockerd's FORWARD
 * policy DROP would drop bridged traffic otherwise). It is the default network, so a container (or a
 * helper) created without one never lands on Podman's own `podman` network, whose firewall plugin would
 * add chains to the host's filter table. stop() removes the rule, the bridge, and the cgroups Podman made.
 *
 * Podman's default rlimits are above this sandbox's: `default_ulimits` caps them for every container,
 * helpers and pod infra containers included.
 */
import { BUSYBOX_IMAGE, RUN_ID, TEST_LABEL, testName } from "./docker.ts";
import { bridgeForwardRule, deleteLink, mountsUnder } from "./dockerd.ts";
import { freeOctet, usedOctets } from "./networks.ts";
import type { CliResult } from "./run_cli.ts";
import { podmanCgroups, processesOf } from "./podman_leftovers.ts";

/** A running private Podman service. */
export interface PodmanService {
  /** `unix://<dir>/podman.sock`, as `-H` / DOCKER_HOST take it. */
  host: string;
  dir: string;
  /** CONTAINERS_CONF and friends: the podman CLI with this env uses the same store. */
  env: Record<string, string>;
  /** The CNI network every container is on unless told otherwise. */
  network: { name: string; subnet: string; bridge: string };
  /** Where OCI hooks are read from (`hooks_dir`). */
  hooksDir: string;
  logFile: string;
  /** `podman ...args` on this store; a non-zero exit is returned, not thrown. */
  cli(args: string[], timeoutMs?: number): Promise<CliResult>;
  /** `podman run -d` with the test label; its id and name. */
  run(
    opts: { cmd: string[]; env?: string[]; name?: string; args?: string[] },
  ): Promise<{ id: string; name: string }>;
  /** Stop the service (SIGTERM); containers keep running. */
  stopService(): Promise<void>;
  /** Start the service again on the same socket and store. */
  startService(): Promise<void>;
  /** Force-remove every container and pod of this store (between tests). */
  removeAll(): Promise<void>;
  /** Everything: containers, service, host rule, bridge, cgroups, mounts, the temp dir. */
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 30_000;
const dec = new TextDecoder();

async function ping(socket: string): Promise<boolean> {
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: socket } });
  try {
    const res = await fetch("http://podman/_ping", { client, signal: AbortSignal.timeout(2000) });
    return res.ok && (await res.text()) === "OK";
  } catch {
    return false;
  } finally {
    client.close();
  }
}

async function sh(
  script: string,
  args: string[] = [],
  env?: Record<string, string>,
): Promise<{ code: number; out: string }> {
  const res = await new Deno.Command("bash", {
    args: ["-c", script, "bash", ...args],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: res.code, out: (dec.decode(res.stdout) + dec.decode(res.stderr)).trim() };
}

function containersConf(dir: string, network: string, hooksDir: string): string {
  return `# Written by tests/support/podman.ts: everything under ${dir}.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
# Debian's /usr/share/containers/containers.conf set (no NET_RAW), which CONTAINERS_CONF replaces.
default_capabilities = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETFCAP",
  "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"]
default_sysctls = ["net.ipv4.ping_group_range=0 0"]
# conmon stays out of cgroups: nothing of it is left in the host's hierarchies.
cgroups = "no-conmon"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "${dir}/events.log"
hooks_dir = ["${hooksDir}"]
tmp_dir = "${dir}/tmp"
runtime = "runc"
volume_path = "${dir}/volumes"

[network]
network_backend = "cni"
network_config_dir = "${dir}/cni"
default_network = "${network}"
`;
}

/** Start a private Podman service with one CNI network; wait until its socket answers `/_ping`. */
export async function startPodman(opts: { images?: string[] } = {}): Promise<PodmanService> {
  const dir = await Deno.makeTempDir({ prefix: "egt-podman-" });
  const socket = `${dir}/podman.sock`;
  const host = `unix://${socket}`;
  const logFile = `${dir}/service.log`;
  const hooksDir = `${dir}/hooks.d`;
  const bridge = `egtp${crypto.randomUUID().slice(0, 8)}`;
  const netName = testName("pnet");
  const subnet = `10.234.${freeOctet(await usedOctets(234))}.0/24`;
  const env = {
    CONTAINERS_CONF: `${dir}/containers.conf`,
    CONTAINERS_STORAGE_CONF: `${dir}/storage.conf`,
    CONTAINERS_REGISTRIES_CONF: `${dir}/registries.conf`,
  };
  const cgroupsBefore = new Set(podmanCgroups());
  let child: Deno.ChildProcess | undefined;
  let bridgeMade = false;

  for (const d of ["cni", "tmp", "volumes", "ipam", "root", "runroot", "hooks.d"]) {
    await Deno.mkdir(`${dir}/${d}`, { recursive: true });
  }
  await Deno.writeTextFile(env.CONTAINERS_CONF, containersConf(dir, netName, hooksDir));
  await Deno.writeTextFile(
    env.CONTAINERS_STORAGE_CONF,
    `[storage]\ndriver = "overlay"\ngraphroot = "${dir}/root"\nrunroot = "${dir}/runroot"\n`,
  );
  // Local images only: a short name never turns into a pull from a registry.
  await Deno.writeTextFile(env.CONTAINERS_REGISTRIES_CONF, "unqualified-search-registries = []\n");
  const conflist = {
    cniVersion: "0.4.0",
    name: netName,
    plugins: [{
      type: "bridge",
      bridge,
      isGateway: false,
      ipMasq: false,
      hairpinMode: true,
      ipam: { type: "host-local", ranges: [[{ subnet }]], dataDir: `${dir}/ipam` },
    }],
  };
  await Deno.writeTextFile(`${dir}/cni/${netName}.conflist`, JSON.stringify(conflist, null, 2));

  const cli = async (args: string[], timeoutMs = 60_000): Promise<CliResult> => {
    const out = await new Deno.Command("podman", {
      args,
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(timeoutMs),
    }).output();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  };
  const must = async (args: string[], timeoutMs?: number) => {
    const r = await cli(args, timeoutMs);
    if (r.code !== 0) throw new Error(`podman ${args.join(" ")}: exit ${r.code}: ${r.stderr.trim()}`);
    return r.stdout;
  };

  const startService = async () => {
    child = new Deno.Command("sh", {
      args: ["-c", 'exec podman system service --time=0 "$1" >>"$2" 2>&1', "podman", host, logFile],
      env,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    let exited: Deno.CommandStatus | undefined;
    child.status.then((s) => (exited = s));
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (exited) {
        throw new Error(`podman system service exited with ${exited.code}:\n${await tail(logFile)}`);
      }
      if (await ping(socket)) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`podman system service not ready after ${START_TIMEOUT_MS} ms:\n${await tail(logFile)}`);
  };
  const stopService = async () => {
    const proc = child;
    child = undefined;
    if (!proc) return;
    try {
      proc.kill("SIGTERM");
    } catch { /* gone */ }
    const timer = setTimeout(() => {
      try {
        proc.kill("SIGKILL");
      } catch { /* gone */ }
    }, 15_000);
    await proc.status;
    clearTimeout(timer);
  };
  const removeAll = async () => {
    await cli(["pod", "rm", "-af", "-t", "0"]);
    // `rm -a` refuses a container others depend on (container:<x>) while they exist: a few passes.
    let left = "";
    for (let pass = 0; pass < 4; pass++) {
      await cli(["rm", "-af", "-t", "0"]);
      left = (await cli(["ps", "-aq"])).stdout.trim();
      if (!left) return;
    }
    throw new Error(`containers left after podman rm -af: ${left.split("\n").join(", ")}`);
  };

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      const problems: string[] = [];
      await removeAll().catch((err) => problems.push(`remove containers: ${(err as Error).message}`));
      await stopService();
      // What `rm` could not stop, and the conmon of every exec session (they linger for minutes).
      const left = processesOf(dir);
      for (const pid of left) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone */ }
      }
      if (left.length) await new Promise((r) => setTimeout(r, 300));
      while (await bridgeForwardRule("-D", bridge)) { /* every copy */ }
      if (bridgeMade) await deleteLink(bridge);
      // Only what appeared while this service ran, and only empty directories (rmdir, never rm -r).
      for (const cg of podmanCgroups()) {
        if (!cgroupsBefore.has(cg)) await Deno.remove(cg).catch(() => {});
      }
      for (const m of mountsUnder(dir)) {
        const r = await sh('umount "$1" 2>&1 || umount -l "$1"', [m]);
        if (r.code !== 0) problems.push(`umount ${m}: ${r.out}`);
      }
      await Deno.remove(dir, { recursive: true }).catch((err) =>
        problems.push(`remove ${dir}: ${(err as Error).message}`)
      );
      if (problems.length) throw new Error(`podman cleanup: ${problems.join("; ")}`);
    })();
    return stopping;
  };

  try {
    const made = await sh('ip link add "$1" type bridge && ip link set "$1" up', [bridge]);
    if (made.code !== 0) throw new Error(`create bridge ${bridge}: ${made.out}`);
    bridgeMade = true;
    await bridgeForwardRule("-I", bridge);
    for (const image of opts.images ?? [BUSYBOX_IMAGE]) {
      const r = await sh('set -o pipefail; docker save "$1" | podman load -q', [image], env);
      if (r.code !== 0) throw new Error(`copy ${image} to podman: ${r.out}`);
    }
    await startService();
  } catch (err) {
    await stop().catch(() => {});
    throw err;
  }

  return {
    host,
    dir,
    env,
    network: { name: netName, subnet, bridge },
    hooksDir,
    logFile,
    cli,
    run: async (o) => {
      const name = o.name ?? testName("pm");
      const args = ["run", "-d", "--name", name, "--label", `${TEST_LABEL}=${RUN_ID}`];
      for (const e of o.env ?? []) args.push("-e", e);
      const id = (await must([...args, ...(o.args ?? []), BUSYBOX_IMAGE, ...o.cmd])).trim();
      return { id, name };
    },
    stopService,
    startService,
    removeAll,
    stop,
  };
}

async function tail(path: string, lines = 30): Promise<string> {
  try {
    return (await Deno.readTextFile(path)).trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}
