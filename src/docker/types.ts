/**
 * The shapes the Docker client hands out, and pure mappings from Docker's JSON to them.
 * Kept apart from client.ts so they can be tested and read without any I/O.
 */

/** One row of `GET /containers/json`. */
export interface ContainerSummary {
  id: string;
  /** Names without their leading slash. */
  names: string[];
  image: string;
  /** `created`, `running`, `exited`, … */
  state: string;
  labels: Record<string, string>;
}

/** What egresstrator needs from `GET /containers/{id}/json`. */
export interface ContainerInfo {
  id: string;
  /** Without the leading slash. */
  name: string;
  /** Host pid of the container's init process; 0 when not running. */
  pid: number;
  running: boolean;
  env: string[];
  labels: Record<string, string>;
  /** `bridge`, `host`, `none`, `container:<id>`, a network name, … */
  networkMode: string;
  /** The image as the container was created from it (`Config.Image`). */
  image: string;
  startedAt: string;
  restartCount: number;
  /** `HostConfig.CapAdd` / `CapDrop` as given (any case, with or without `CAP_`), and `Privileged`. */
  capAdd: string[];
  capDrop: string[];
  privileged: boolean;
  /** `HostConfig.Dns`: resolvers given with `--dns` (where Docker's embedded DNS forwards to). */
  dns?: string[];
  /** `ResolvConfPath`: the host file Docker (or Podman) mounts as the container's /etc/resolv.conf. */
  resolvConfPath?: string;
}

/** A short-lived helper container that joins another container's network namespace. */
export interface CreateHelperSpec {
  name: string;
  image: string;
  cmd: string[];
  env?: string[];
  labels?: Record<string, string>;
  /** Container id whose network namespace the helper joins (`NetworkMode: container:<id>`). */
  networkContainer: string;
  capAdd: string[];
}

type Json = Record<string, unknown>;

function obj(v: unknown): Json {
  return v !== null && typeof v === "object" && !Array.isArray(v) ? v as Json : {};
}

function str(v: unknown): string {
  return typeof v === "string" ? v : "";
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
}

function labels(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(obj(v))) if (typeof val === "string") out[k] = val;
  return out;
}

/** Map one `GET /containers/json` row. */
export function toContainerSummary(raw: Json): ContainerSummary {
  return {
    id: str(raw.Id),
    names: strings(raw.Names).map((n) => n.replace(/^\//, "")),
    image: str(raw.Image),
    state: str(raw.State),
    labels: labels(raw.Labels),
  };
}

/** Map a `GET /containers/{id}/json` answer. */
export function toContainerInfo(raw: Json): ContainerInfo {
  const state = obj(raw.State);
  const config = obj(raw.Config);
  const host = obj(raw.HostConfig);
  return {
    id: str(raw.Id),
    name: str(raw.Name).replace(/^\//, ""),
    pid: typeof state.Pid === "number" ? state.Pid : 0,
    running: state.Running === true,
    env: strings(config.Env),
    labels: labels(config.Labels),
    networkMode: str(host.NetworkMode),
    image: str(config.Image) || str(raw.Image),
    startedAt: str(state.StartedAt),
    restartCount: typeof raw.RestartCount === "number" ? raw.RestartCount : 0,
    capAdd: strings(host.CapAdd),
    capDrop: strings(host.CapDrop),
    privileged: host.Privileged === true,
    dns: strings(host.Dns),
    ...(str(raw.ResolvConfPath) ? { resolvConfPath: str(raw.ResolvConfPath) } : {}),
  };
}

/** The `POST /containers/create` body for a helper container. */
export function helperBody(spec: CreateHelperSpec): Json {
  return {
    Image: spec.image,
    Cmd: spec.cmd,
    Env: spec.env ?? [],
    Labels: spec.labels ?? {},
    AttachStdin: false,
    OpenStdin: false,
    StdinOnce: false,
    AttachStdout: true,
    AttachStderr: true,
    Tty: false,
    HostConfig: {
      NetworkMode: `container:${spec.networkContainer}`,
      CapAdd: spec.capAdd,
      AutoRemove: false,
    },
  };
}

/** `fromImage` and `tag` for a pull: `repo:tag`, `host:5000/repo` (latest) or `repo@sha256:…` (no tag). */
export function imageRef(name: string): { fromImage: string; tag?: string } {
  if (name.includes("@")) return { fromImage: name };
  const slash = name.lastIndexOf("/");
  const colon = name.lastIndexOf(":");
  if (colon > slash) return { fromImage: name.slice(0, colon), tag: name.slice(colon + 1) };
  return { fromImage: name, tag: "latest" };
}

/** A 12-character id for messages; names and short refs pass unchanged. */
export function shortId(ref: string): string {
  return /^[0-9a-f]{64}$/.test(ref) ? ref.slice(0, 12) : ref;
}

function parts(v: string): [number, number] {
  const m = /^(\d+)\.(\d+)$/.exec(v);
  return m ? [Number(m[1]), Number(m[2])] : [Number.NaN, Number.NaN];
}

/** Whether API version `a` <= `b` (`"1.41"` style; compared numerically, so 1.9 < 1.41). */
export function versionAtMost(a: string, b: string): boolean {
  const [am, an] = parts(a);
  const [bm, bn] = parts(b);
  return am < bm || (am === bm && an <= bn);
}

/** The newest Engine API version this client speaks. */
export const MAX_API_VERSION = "1.43";

/**
 * The API version to use with a daemon that speaks up to `daemon` (and from `min`): `wanted` when
 * given and supported, else the daemon's capped at `max`. A problem when `wanted` cannot be used.
 */
export function chooseApiVersion(
  opts: { daemon: string; min?: string; wanted?: string; max?: string },
): string | { problem: string } {
  const { daemon, min, wanted } = opts;
  const max = opts.max ?? MAX_API_VERSION;
  if (!wanted) return versionAtMost(daemon, max) ? daemon : max;
  if (!/^\d+\.\d+$/.test(wanted)) return { problem: `API version "${wanted}" is not of the form 1.41` };
  if (!versionAtMost(wanted, daemon)) {
    return { problem: `the daemon only supports API up to ${daemon}; ${wanted} was requested` };
  }
  if (min && !versionAtMost(min, wanted)) {
    return { problem: `the daemon needs API ${min} or newer; ${wanted} was requested` };
  }
  return wanted;
}
