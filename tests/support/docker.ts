/**
 * Helpers for integration tests against the real dockerd: labelled containers that clean up after
 * themselves (with the networks of networks.ts), exec (over the Engine API: egresstrator itself never
 * execs), the docker CLI, and a clear failure when the test images are missing.
 * Every object made here carries the label `egresstrator-test=<runId>`.
 */
import { DockerClient, type DockerClientOptions } from "../../src/docker/client.ts";
import { demuxLogs } from "../../src/docker/events.ts";
import type { CliResult } from "./run_cli.ts";

/** Label key on every container and network the tests create. */
export const TEST_LABEL = "egresstrator-test";

/** This test process's id: the value of {@link TEST_LABEL} on what it creates. */
export const RUN_ID = `${Date.now().toString(36)}-${crypto.randomUUID().slice(0, 8)}`;

/** `NAME="value"` from scripts/test_env.sh, which builds the test images: the one place their names are written. */
function testEnvSetting(name: string): string {
  const path = new URL("../../scripts/test_env.sh", import.meta.url);
  const m = new RegExp(`^${name}="([^"]+)"$`, "m").exec(Deno.readTextFileSync(path));
  if (!m) throw new Error(`${path.pathname} sets no ${name}="..."`);
  return m[1];
}

/** Static busybox with every applet in /bin, built by scripts/test_env.sh. */
export const BUSYBOX_IMAGE: string = testEnvSetting("BUSYBOX_IMAGE");

/** Debian with iptables, for `--mode helper -i`, built by scripts/test_env.sh. */
export const HELPER_IMAGE: string = testEnvSetting("HELPER_IMAGE");

/** Debian with systemd as PID 1 and its own dockerd, for systemd_test.ts, built by scripts/test_env.sh. */
export const SYSTEMD_IMAGE: string = testEnvSetting("SYSTEMD_IMAGE");

/** A client for the default socket (or DOCKER_HOST-like `host`). Close it when done. */
export function docker(opts: DockerClientOptions = {}): DockerClient {
  return new DockerClient(opts);
}

/** Run `fn` with a client for `host` (the main dockerd when undefined; 30 s per request), then close it. */
export async function withDocker<T>(
  host: string | undefined,
  fn: (c: DockerClient) => Promise<T>,
): Promise<T> {
  const c = docker({ host, timeoutMs: 30_000 });
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/**
 * The docker CLI, as users run it: `docker [-H host] ...args`, killed after `timeoutMs` (60 s by default).
 * A non-zero exit is returned, not thrown.
 */
export async function dockerCli(
  args: string[],
  opts: { host?: string; timeoutMs?: number } = {},
): Promise<CliResult> {
  const out = await new Deno.Command("docker", {
    args: [...(opts.host ? ["-H", opts.host] : []), ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(opts.timeoutMs ?? 60_000),
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A fresh name for a test object: `egresstrator-test-<runId>-<what>-<random>`. */
export function testName(what = "c"): string {
  return `${TEST_LABEL}-${RUN_ID}-${what}-${crypto.randomUUID().slice(0, 6)}`;
}

/** Throw a clear error unless the image is present locally (there is no registry to pull from). */
export async function requireImage(name = BUSYBOX_IMAGE): Promise<void> {
  const present = await withDocker(undefined, (c) => c.imageExists(name));
  if (!present) throw new Error(`test image ${name} is missing: run scripts/test_env.sh`);
}

/** Options for {@link runContainer}. */
export interface RunOptions {
  cmd: string[];
  image?: string;
  env?: string[];
  name?: string;
  /** A network name, `none`, `host` or `container:<id>`; `none` when unset (tests never rely on the default bridge). */
  network?: string;
  labels?: Record<string, string>;
  capAdd?: string[];
  /** Extra HostConfig fields (Docker's spelling). */
  hostConfig?: Record<string, unknown>;
  runId?: string;
  /** The dockerd to create it on (`unix:///…/docker.sock`); the main one when unset. */
  host?: string;
  /** Seconds `docker stop` (and a dockerd stopping) waits before SIGKILL; Docker's default (10) when unset. */
  stopTimeout?: number;
}

/** Create a labelled container through the Engine API without starting it; its id and name. */
export async function createTestContainer(opts: RunOptions): Promise<{ id: string; name: string }> {
  const name = opts.name ?? testName();
  const { Id } = await withDocker(opts.host, (c) =>
    c.rawJson<{ Id: string }>({
      what: `create test container ${name}`,
      method: "POST",
      path: "/containers/create",
      query: { name },
      body: {
        Image: opts.image ?? BUSYBOX_IMAGE,
        Cmd: opts.cmd,
        Env: opts.env ?? [],
        Labels: { ...opts.labels, [TEST_LABEL]: opts.runId ?? RUN_ID },
        ...(opts.stopTimeout === undefined ? {} : { StopTimeout: opts.stopTimeout }),
        HostConfig: { NetworkMode: opts.network ?? "none", CapAdd: opts.capAdd ?? [], ...opts.hostConfig },
      },
    }));
  return { id: Id, name };
}

/** Create and start a labelled container through the Engine API; its id and name. */
export async function runContainer(opts: RunOptions): Promise<{ id: string; name: string }> {
  const created = await createTestContainer(opts);
  await withDocker(opts.host, (c) => c.startContainer(created.id));
  return created;
}

/**
 * Force-remove the containers, then the networks, labelled for `runId` (this run by default).
 * Pass `"*"` for every run's objects: only when no other test run can be going on.
 */
export async function removeAllTestObjects(runId: string = RUN_ID): Promise<void> {
  const label = runId === "*" ? TEST_LABEL : `${TEST_LABEL}=${runId}`;
  await withDocker(undefined, (c) => removeObjects(c, { containers: label, networks: label }));
}

/**
 * On one dockerd: force-remove containers (those with `containers` as a label filter, or all), then the
 * networks with the `networks` label filter. Shared by the main dockerd's and the private dockerds' cleanup.
 */
export async function removeObjects(c: DockerClient, sel: { containers: string | "all"; networks: string }) {
  const filters = sel.containers === "all" ? undefined : { label: [sel.containers] };
  const containers = await c.listContainers({ all: true, filters });
  await Promise.all(containers.map((ct) => c.removeContainer(ct.id, { force: true }).catch(() => {})));
  const networks = await c.rawJson<{ Id: string }[]>({
    what: "list test networks",
    path: "/networks",
    query: { filters: JSON.stringify({ label: [sel.networks] }) },
  });
  for (const n of networks ?? []) {
    const res = await c.raw({
      what: `remove network ${n.Id}`,
      method: "DELETE",
      path: `/networks/${n.Id}`,
      allow: [404],
    });
    await res.body?.cancel();
  }
}

/** A container's IPv4 and global IPv6 (`""` when it has none) address on a network (of `host`'s dockerd). */
export async function containerAddresses(
  id: string,
  network: string,
  host?: string,
): Promise<{ v4: string; v6: string }> {
  const info = await withDocker(host, (c) =>
    c.rawJson<
      { NetworkSettings: { Networks: Record<string, { IPAddress: string; GlobalIPv6Address: string }> } }
    >({ what: `inspect ${id.slice(0, 12)}`, path: `/containers/${id}/json` }));
  const n = info.NetworkSettings.Networks[network];
  if (!n?.IPAddress) throw new Error(`container ${id.slice(0, 12)} has no address on ${network}`);
  return { v4: n.IPAddress, v6: n.GlobalIPv6Address };
}

/** A container's IPv4 address on a network (of `host`'s dockerd). */
export async function containerIp(id: string, network: string, host?: string): Promise<string> {
  return (await containerAddresses(id, network, host)).v4;
}

/**
 * Run a command in a running container through the exec API (on `host`'s dockerd, the main one by default;
 * `timeoutMs` per request, 30 s by default); its exit code and output.
 */
export async function execIn(
  id: string,
  cmd: string[],
  opts: { host?: string; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const c = docker({ host: opts.host, timeoutMs: opts.timeoutMs ?? 30_000 });
  try {
    const { Id: execId } = await c.rawJson<{ Id: string }>({
      what: `exec in container ${id.slice(0, 12)}`,
      method: "POST",
      path: `/containers/${id}/exec`,
      body: { Cmd: cmd, AttachStdout: true, AttachStderr: true },
    });
    // Attached: the answer is the process's stdout and stderr, multiplexed as in `docker logs`.
    const res = await c.raw({
      what: `start exec ${execId.slice(0, 12)}`,
      method: "POST",
      path: `/exec/${execId}/start`,
      body: { Detach: false, Tty: false },
    });
    const out = demuxLogs(new Uint8Array(await res.arrayBuffer()));
    // The attached start returns when the process's output ends; its exit code may lag a moment.
    for (let i = 0; i < 100; i++) {
      const state = await c.rawJson<{ Running?: boolean; ExitCode?: number | null }>({
        what: `inspect exec ${execId.slice(0, 12)}`,
        path: `/exec/${execId}/json`,
      });
      if (!state.Running && typeof state.ExitCode === "number") return { code: state.ExitCode, ...out };
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`exec ${cmd.join(" ")} in ${id.slice(0, 12)}: no exit code after its output ended`);
  } finally {
    c.close();
  }
}
