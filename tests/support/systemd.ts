/**
 * A machine with a real systemd, for systemd_test.ts: a container of the egresstrator-test/systemd image
 * (scripts/test_env.sh) on the shared dockerd, with systemd as PID 1, its own dockerd (a systemd unit of
 * the image) and a Consul agent run as a unit too; install.sh, the release directory and what the stand-in
 * binary needs (deno, this repository, Deno's cache) are bind-mounted read-only.
 *
 * `--network none`: everything talks over loopback or the inner dockerd's own bridge, inside this
 * container's namespace. `--cgroupns=private` with a tmpfs on /sys/fs/cgroup: systemd mounts its cgroup
 * hierarchies itself, inside this container's cgroups. (Bind-mounting the host's /sys/fs/cgroup instead,
 * as `--cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw` would, lets systemd create directories in the
 * host's cgroup tmpfs and remount it read-only, which broke Podman's cgroups on this host.) No
 * `--privileged`: CAP_SYS_RESOURCE is not to be had here, so everything else is added and seccomp is off.
 */
import { dockerCli, RUN_ID, SYSTEMD_IMAGE, TEST_LABEL, testName } from "./docker.ts";
import { findConsulBinary } from "./consul.ts";
import { denoDir } from "./gate.ts";
import { REPO_ROOT } from "./run_cli.ts";
import type { CliResult } from "./run_cli.ts";

/** Where the stand-in finds deno, the repository and Deno's cache inside the machine. */
export const INSIDE = { deno: "/opt/deno/deno", repo: "/opt/egresstrator", denoDir: "/opt/deno-dir" };

/** A running systemd machine. */
export interface SystemdMachine {
  name: string;
  /** `sh -c script` inside (as root); a non-zero exit is returned, not thrown. */
  sh(script: string, opts?: { timeoutMs?: number; stdin?: string }): Promise<CliResult>;
  /** {@link sh}, throwing with the output unless it exits 0; its stdout. */
  must(script: string, timeoutMs?: number): Promise<string>;
  /** `journalctl -u <unit> -o cat`: the unit's lines, as systemd's journal has them. */
  journal(unit: string): Promise<string[]>;
  /** `systemctl show -p <props> <unit>` as a record. */
  show(unit: string, props: string[]): Promise<Record<string, string>>;
  /** Copy an image from the shared dockerd into the machine's dockerd. */
  loadImage(image: string): Promise<void>;
  /** Shut systemd down (SIGRTMIN+3, as `docker stop` sends it) and remove the container. */
  stop(): Promise<void>;
}

const CONSUL_UNIT = `[Unit]
Description=Consul agent (dev mode, loopback only) for the egresstrator tests
Before=egresstrator.service

[Service]
ExecStart=/usr/local/bin/consul agent -dev -client 127.0.0.1 -bind 127.0.0.1 -log-level warn
Restart=on-failure

[Install]
WantedBy=multi-user.target
`;

/** Boot a machine with `release` (a host directory) mounted at /release; Consul and dockerd are up. */
export async function startSystemdMachine(release: string): Promise<SystemdMachine> {
  const name = testName("sysd");
  const run = await dockerCli([
    "run",
    "-d",
    "--name",
    name,
    "--label",
    `${TEST_LABEL}=${RUN_ID}`,
    "--network",
    "none",
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--cgroupns=private",
    "--tmpfs",
    "/sys/fs/cgroup",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "--tmpfs",
    "/var/lib/docker:rw,exec",
    "--stop-signal",
    "SIGRTMIN+3",
    "--stop-timeout",
    "20",
    "-v",
    `${REPO_ROOT}:${INSIDE.repo}:ro`,
    "-v",
    `${Deno.execPath()}:${INSIDE.deno}:ro`,
    "-v",
    `${await denoDir()}:${INSIDE.denoDir}:ro`,
    "-v",
    `${findConsulBinary()}:/usr/local/bin/consul:ro`,
    "-v",
    `${release}:/release:ro`,
    SYSTEMD_IMAGE,
  ]);
  if (run.code !== 0) throw new Error(`docker run ${SYSTEMD_IMAGE}: ${run.stderr.trim()}`);

  const sh = async (script: string, opts: { timeoutMs?: number; stdin?: string } = {}) => {
    const child = new Deno.Command("docker", {
      args: ["exec", ...(opts.stdin === undefined ? [] : ["-i"]), name, "sh", "-c", script],
      stdin: opts.stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(opts.timeoutMs ?? 60_000),
    }).spawn();
    if (opts.stdin !== undefined) {
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode(opts.stdin));
      await w.close();
    }
    const out = await child.output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  };
  const must = async (script: string, timeoutMs?: number) => {
    const r = await sh(script, { timeoutMs });
    if (r.code !== 0) throw new Error(`in ${name}: ${script}: exit ${r.code}: ${r.stdout}${r.stderr}`.trim());
    return r.stdout;
  };
  const stop = async () => {
    await dockerCli(["stop", name], { timeoutMs: 40_000 });
    await dockerCli(["rm", "-f", "-v", name]);
  };

  try {
    // "degraded" is fine (some unit a container cannot run); "running" is the hope. Until systemd's bus
    // is up, systemctl answers nothing at all.
    let state = "";
    for (const deadline = Date.now() + 60_000; Date.now() < deadline;) {
      state = (await sh("systemctl is-system-running --wait", { timeoutMs: 60_000 })).stdout.trim();
      if (state === "running" || state === "degraded") break;
      await new Promise((r) => setTimeout(r, 200));
    }
    if (state !== "running" && state !== "degraded") {
      const failed = (await sh("systemctl --failed --no-legend")).stdout;
      throw new Error(`systemd in ${name} is "${state}": ${failed}`);
    }
    await must("until docker info >/dev/null 2>&1; do sleep 0.2; done", 60_000);
    await sh("cat > /etc/systemd/system/consul.service", { stdin: CONSUL_UNIT });
    await must("systemctl daemon-reload && systemctl enable --now consul.service");
    await must("until consul kv put egresstrator-test/ready 1 >/dev/null 2>&1; do sleep 0.2; done", 60_000);
  } catch (err) {
    const logs = await dockerCli(["logs", "--tail", "30", name]);
    await stop();
    throw new Error(`${(err as Error).message}\n${logs.stdout}${logs.stderr}`);
  }

  return {
    name,
    sh,
    must,
    journal: async (unit) =>
      (await must(`journalctl -u ${unit} -o cat --no-pager`)).split("\n").filter(Boolean),
    show: async (unit, props) => {
      const out = await must(`systemctl show ${props.map((p) => `-p ${p}`).join(" ")} ${unit}`);
      return Object.fromEntries(
        out.split("\n").filter(Boolean).map((l) => [l.split("=")[0], l.slice(l.indexOf("=") + 1)]),
      );
    },
    loadImage: async (image) => {
      const save = new Deno.Command("bash", {
        args: [
          "-c",
          'set -o pipefail; docker save "$1" | docker exec -i "$2" docker load -q',
          "bash",
          image,
          name,
        ],
        stdout: "piped",
        stderr: "piped",
      });
      const out = await save.output();
      if (!out.success) {
        throw new Error(`load ${image} into ${name}: ${new TextDecoder().decode(out.stderr)}`);
      }
    },
    stop,
  };
}
