/**
 * Docker Engine API client over native fetch: version negotiation, containers, events, the helper
 * container lifecycle and images. No SDK; see transport.ts for the HTTP and error handling.
 */
import { DockerError } from "../errors.ts";
import {
  type BadLineHandler,
  type DemuxedOutput,
  demuxLogs,
  type DockerEvent,
  parseEventStream,
  parseJsonStream,
} from "./events.ts";
import { DEFAULT_DOCKER_HOST, DockerTransport, enc, type RequestSpec, untilAborted } from "./transport.ts";
import {
  chooseApiVersion,
  type ContainerInfo,
  type ContainerSummary,
  type CreateHelperSpec,
  helperBody,
  imageRef,
  shortId,
  toContainerInfo,
  toContainerSummary,
} from "./types.ts";

export { MAX_API_VERSION } from "./types.ts";
export type { RequestSpec } from "./transport.ts";
export type { ContainerInfo, ContainerSummary, CreateHelperSpec, DemuxedOutput, DockerEvent };

/** Options for {@link DockerClient}. */
export interface DockerClientOptions {
  /** `unix:///var/run/docker.sock` (default), `tcp://host:port` or `http://host:port`. */
  host?: string;
  /** Use exactly this API version; it is an error when the daemon does not support it. */
  apiVersion?: string;
  /** Timeout of each request in ms (default 10000). Event streams and waits time only their headers. */
  timeoutMs?: number;
  /** Timeout of a whole image pull in ms (default 300000): pulls legitimately take minutes. */
  pullTimeoutMs?: number;
  /** Cancels every request of this client (daemon shutdown). */
  signal?: AbortSignal;
}

/** Options for {@link DockerClient.events}. */
export interface EventsOptions {
  /** Unix seconds; a string keeps a fractional value exact (`"1700000000.123456789"`). */
  since?: number | string;
  filters?: Record<string, string[]>;
  /** Ends the stream; aborting rejects the iteration with the signal's reason. */
  signal: AbortSignal;
  /** Called for a malformed object in the stream, which is then skipped. */
  onBadLine?: BadLineHandler;
}

/** Talks to one Docker daemon. Negotiates the API version on first use; call {@link close} when done. */
export class DockerClient {
  readonly #transport: DockerTransport;
  readonly #opts: DockerClientOptions;
  #version?: Promise<{ apiVersion: string; serverVersion: string }>;

  constructor(opts: DockerClientOptions = {}) {
    this.#opts = opts;
    this.#transport = new DockerTransport({
      host: opts.host ?? DEFAULT_DOCKER_HOST,
      timeoutMs: opts.timeoutMs ?? 10_000,
      signal: opts.signal,
    });
  }

  /** The Docker host this client talks to. */
  get host(): string {
    return this.#transport.host;
  }

  /**
   * `GET /version`, then pick the API version for every later call: the daemon's, capped at
   * {@link MAX_API_VERSION}, or `apiVersion` from the options when the daemon supports it.
   * Runs once; later calls reuse the answer (a failure is retried on the next call).
   */
  negotiate(signal?: AbortSignal): Promise<{ apiVersion: string; serverVersion: string }> {
    // Shared by concurrent callers, so it runs under the client's signal only; each caller stops
    // waiting on its own signal.
    this.#version ??= this.#negotiate().catch((err) => {
      this.#version = undefined;
      throw err;
    });
    return untilAborted(this.#version, signal);
  }

  async #negotiate(): Promise<{ apiVersion: string; serverVersion: string }> {
    const v = await this.#transport.json<{ ApiVersion?: string; MinAPIVersion?: string; Version?: string }>(
      { what: "docker version", path: "/version" },
    );
    const daemon = v?.ApiVersion;
    if (!daemon) throw new DockerError(`docker at ${this.host} did not report its API version`);
    const serverVersion = v.Version ?? "unknown";
    const choice = chooseApiVersion({ daemon, min: v.MinAPIVersion, wanted: this.#opts.apiVersion });
    if (typeof choice !== "string") {
      throw new DockerError(`docker at ${this.host} (${serverVersion}): ${choice.problem}`);
    }
    return { apiVersion: choice, serverVersion };
  }

  /**
   * Low-level escape hatch for endpoints without a method here (tests use it for networks): send
   * `spec.path` (no version prefix) under the negotiated `/v<version>`; the response is 2xx or allowed.
   */
  async raw(spec: RequestSpec): Promise<Response> {
    const { apiVersion } = await this.negotiate(spec.signal);
    return this.#transport.request({ ...spec, path: `/v${apiVersion}${spec.path}` });
  }

  /** {@link raw} and parse the body as JSON. */
  async rawJson<T>(spec: RequestSpec): Promise<T> {
    const { apiVersion } = await this.negotiate(spec.signal);
    return this.#transport.json<T>({ ...spec, path: `/v${apiVersion}${spec.path}` });
  }

  /** `GET /containers/json`; names come without their leading slash. */
  async listContainers(
    opts: { all?: boolean; filters?: Record<string, string[]>; signal?: AbortSignal } = {},
  ): Promise<ContainerSummary[]> {
    const filters = opts.filters ? JSON.stringify(opts.filters) : undefined;
    const list = await this.rawJson<Record<string, unknown>[]>({
      what: "list containers",
      path: "/containers/json",
      query: { all: opts.all ? 1 : undefined, filters },
      signal: opts.signal,
    });
    return (list ?? []).map(toContainerSummary);
  }

  /** `GET /containers/{id}/json`. A missing container is a DockerError with status 404. */
  async inspectContainer(idOrName: string, signal?: AbortSignal): Promise<ContainerInfo> {
    const spec = {
      what: `inspect container ${shortId(idOrName)}`,
      path: `/containers/${enc(idOrName)}/json`,
    };
    try {
      return toContainerInfo(await this.rawJson<Record<string, unknown>>({ ...spec, signal }));
    } catch (err) {
      if (err instanceof DockerError && err.status === 404) {
        throw new DockerError(`no such container: ${idOrName}`, { status: 404, cause: err });
      }
      throw err;
    }
  }

  /**
   * Stream `GET /events` until the daemon ends it or `signal` aborts. Only the wait for the response
   * headers is timed: the stream itself is open-ended. A broken stream throws a DockerError; the
   * caller reconnects (with `since`) either way.
   */
  async *events(opts: EventsOptions): AsyncIterable<DockerEvent> {
    const filters = opts.filters ? JSON.stringify(opts.filters) : undefined;
    const spec: RequestSpec = {
      what: "docker events",
      path: "/events",
      query: { since: opts.since, filters },
      signal: opts.signal,
      timeout: "headers",
    };
    const res = await this.raw(spec);
    if (!res.body) return;
    try {
      yield* parseEventStream(res.body, { onBadLine: opts.onBadLine });
    } catch (err) {
      throw this.#transport.streamFailure(spec, err);
    } finally {
      await res.body.cancel().catch(() => {});
    }
  }

  /** `POST /containers/create` for a helper sharing `spec.networkContainer`'s network namespace. */
  async createContainer(spec: CreateHelperSpec, signal?: AbortSignal): Promise<string> {
    const res = await this.rawJson<{ Id: string }>({
      what: `create container ${spec.name}`,
      method: "POST",
      path: "/containers/create",
      query: { name: spec.name },
      body: helperBody(spec),
      signal,
    });
    return res.Id;
  }

  /** `POST /containers/{id}/start`; an already running container is fine. */
  async startContainer(id: string, signal?: AbortSignal): Promise<void> {
    const res = await this.raw({
      what: `start container ${shortId(id)}`,
      method: "POST",
      path: `/containers/${enc(id)}/start`,
      signal,
      allow: [304],
    });
    await res.body?.cancel();
  }

  /** `POST /containers/{id}/wait`: the exit code. No timeout of its own beyond the headers; pass one. */
  async waitContainer(id: string, signal?: AbortSignal): Promise<number> {
    const what = `wait for container ${shortId(id)}`;
    const spec: RequestSpec = { what, method: "POST", path: `/containers/${enc(id)}/wait`, signal };
    const res = await this.raw({ ...spec, timeout: "headers" });
    const body = await this.#transport.read(spec, res, (r) => r.json()) as {
      StatusCode?: number;
      Error?: { Message?: string } | null;
    };
    if (body.Error?.Message) throw new DockerError(`${what}: ${body.Error.Message}`);
    return body.StatusCode ?? -1;
  }

  /** `GET /containers/{id}/logs` of a non-TTY container, split into stdout and stderr. */
  async containerLogs(id: string, signal?: AbortSignal): Promise<DemuxedOutput> {
    const spec: RequestSpec = {
      what: `logs of container ${shortId(id)}`,
      path: `/containers/${enc(id)}/logs`,
      query: { stdout: 1, stderr: 1 },
      signal,
    };
    const res = await this.raw(spec);
    return demuxLogs(new Uint8Array(await this.#transport.read(spec, res, (r) => r.arrayBuffer())));
  }

  /** `DELETE /containers/{id}` with its anonymous volumes; a container already gone is fine. */
  async removeContainer(id: string, opts: { force?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    const res = await this.raw({
      what: `remove container ${shortId(id)}`,
      method: "DELETE",
      path: `/containers/${enc(id)}`,
      query: { force: opts.force ? 1 : undefined, v: 1 },
      signal: opts.signal,
      allow: [404],
    });
    await res.body?.cancel();
  }

  /** `GET /images/{name}/json`: whether the image is present locally. */
  async imageExists(name: string, signal?: AbortSignal): Promise<boolean> {
    const res = await this.raw({
      what: `inspect image ${name}`,
      path: `/images/${enc(name)}/json`,
      signal,
      allow: [404],
    });
    await res.body?.cancel();
    return res.status !== 404;
  }

  /** `POST /images/create`: pull and wait for the end of the progress stream; errors in it throw. */
  async pullImage(name: string, signal?: AbortSignal): Promise<void> {
    const spec: RequestSpec = {
      what: `pull image ${name}`,
      method: "POST",
      path: "/images/create",
      query: imageRef(name),
      signal,
      timeout: this.#opts.pullTimeoutMs ?? 300_000,
    };
    const res = await this.raw(spec);
    if (!res.body) return;
    const failed = await this.#transport.read(spec, res, async (r) => {
      for await (const line of parseJsonStream(r.body!)) {
        if (typeof line.error === "string") return line.error;
      }
      return undefined;
    });
    if (failed) throw new DockerError(`${spec.what}: ${failed}`);
  }

  /** Release the connection pool of the unix socket. */
  close(): void {
    this.#transport.close();
  }
}
