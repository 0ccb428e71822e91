/**
 * HTTP to the Docker Engine API with native fetch: over the unix socket through
 * `Deno.createHttpClient({ proxy: { transport: "unix" } })`, or plain TCP for `tcp://` / `http://` hosts.
 * Owns what every call shares: signals and timeouts, and turning failures into DockerErrors with context.
 */
import { DockerError } from "../errors.ts";

/** The default Docker host. */
export const DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock";

/** Options for {@link DockerTransport}. */
export interface TransportOptions {
  /** `unix:///path`, `tcp://host:port` or `http://host:port`. */
  host: string;
  /** Per-request timeout unless a request sets its own. */
  timeoutMs: number;
  /** Cancels every request (daemon shutdown). */
  signal?: AbortSignal;
}

/** One request. `what` names the operation for error messages: `inspect container 3f2a1b`. */
export interface RequestSpec {
  what: string;
  path: string;
  method?: string;
  query?: Record<string, string | number | boolean | undefined>;
  /** Sent as JSON. */
  body?: unknown;
  signal?: AbortSignal;
  /**
   * Milliseconds for the whole request, body included; defaults to the transport's. `"headers"` limits
   * only the wait for the response headers (streams and waits that legitimately run long).
   */
  timeout?: number | "headers";
  /** Statuses other than 2xx to hand back instead of throwing (404 for "exists?" checks). */
  allow?: number[];
}

/** Docker's error body: `{"message": "..."}`. */
async function dockerMessage(res: Response): Promise<string> {
  const text = (await res.text().catch(() => "")).trim();
  try {
    const msg = (JSON.parse(text) as { message?: unknown }).message;
    if (typeof msg === "string" && msg) return msg;
  } catch { /* not JSON: use the text */ }
  return text || `HTTP ${res.status} ${res.statusText}`.trim();
}

/** The useful part of fetch's connect error: `No such file or directory (os error 2)`. */
function connectReason(err: unknown): string {
  const inner = err instanceof Error && err.cause instanceof Error ? err.cause : err;
  const msg = inner instanceof Error ? inner.message : String(inner);
  return msg.replace(/^error sending request for url \([^)]*\): /, "").replace(
    /^client error \(Connect\): /,
    "",
  );
}

/** Speaks HTTP to one Docker host. Close it to release the unix-socket client. */
export class DockerTransport {
  /** The host as configured, for messages. */
  readonly host: string;
  readonly #base: string;
  readonly #client?: Deno.HttpClient;
  readonly #timeoutMs: number;
  readonly #signal?: AbortSignal;

  constructor(opts: TransportOptions) {
    this.host = opts.host;
    this.#timeoutMs = opts.timeoutMs;
    this.#signal = opts.signal;
    if (opts.host.startsWith("unix://")) {
      const path = opts.host.slice("unix://".length);
      if (!path) throw new DockerError(`docker host ${opts.host} has no socket path`);
      this.#client = Deno.createHttpClient({ proxy: { transport: "unix", path } });
      this.#base = "http://docker";
    } else if (/^(tcp|http):\/\/[^/]+\/?$/.test(opts.host)) {
      this.#base = opts.host.replace(/^tcp:/, "http:").replace(/\/$/, "");
    } else {
      throw new DockerError(
        `docker host ${opts.host} is not supported (use unix:///path or tcp://host:port)`,
      );
    }
  }

  /**
   * Send a request and return the response once its headers are in, with a 2xx (or allowed) status.
   * The body is still to be read: read it before the request's timeout runs out.
   */
  async request(spec: RequestSpec): Promise<Response> {
    const { signal, done } = this.#signals(spec);
    const init: RequestInit & { client?: Deno.HttpClient } = { method: spec.method ?? "GET", signal };
    if (this.#client) init.client = this.#client;
    if (spec.body !== undefined) {
      init.body = JSON.stringify(spec.body);
      init.headers = { "content-type": "application/json" };
    }
    let res: Response;
    try {
      res = await fetch(this.#url(spec), init);
    } catch (err) {
      throw this.#failure(spec, signal, err);
    } finally {
      done();
    }
    if (res.ok || spec.allow?.includes(res.status)) return res;
    const message = await dockerMessage(res).catch((err) => {
      throw this.#failure(spec, signal, err);
    });
    throw new DockerError(`${spec.what}: ${message}`, { status: res.status });
  }

  /** {@link request} and read the body as JSON (undefined for an empty body). */
  async json<T>(spec: RequestSpec): Promise<T> {
    const res = await this.request(spec);
    const text = await this.read(spec, res, (r) => r.text());
    if (!text.trim()) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch (err) {
      throw new DockerError(`${spec.what}: docker sent a body that is not JSON`, { cause: err });
    }
  }

  /** Read a body with the request's error mapping (timeouts and aborts land here too). */
  async read<T>(spec: RequestSpec, res: Response, reader: (res: Response) => Promise<T>): Promise<T> {
    try {
      return await reader(res);
    } catch (err) {
      throw this.#failure(spec, this.#callerSignal(spec), err);
    }
  }

  /** Map an error met while streaming a body: caller aborts pass through, the rest gets context. */
  streamFailure(spec: RequestSpec, err: unknown): unknown {
    return this.#failure(spec, this.#callerSignal(spec), err);
  }

  /** Release the unix-socket client. */
  close(): void {
    this.#client?.close();
  }

  #url(spec: RequestSpec): string {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(spec.query ?? {})) if (v !== undefined) params.set(k, String(v));
    const qs = params.toString();
    return `${this.#base}${spec.path}${qs ? "?" + qs : ""}`;
  }

  #callerSignal(spec: RequestSpec): AbortSignal | undefined {
    const list = [this.#signal, spec.signal].filter((s): s is AbortSignal => s !== undefined);
    return list.length ? AbortSignal.any(list) : undefined;
  }

  /** The signal for one request, and a callback to call when the headers are in. */
  #signals(spec: RequestSpec): { signal: AbortSignal; done: () => void } {
    const list = [this.#signal, spec.signal].filter((s): s is AbortSignal => s !== undefined);
    if (spec.timeout !== "headers") {
      list.push(AbortSignal.timeout(spec.timeout ?? this.#timeoutMs));
      return { signal: AbortSignal.any(list), done: () => {} };
    }
    // A header-only timeout must stop counting once the headers are in, so it is a timer we clear.
    const headers = new AbortController();
    const ms = this.#timeoutMs;
    const timer = setTimeout(
      () => headers.abort(new DOMException(`no answer in ${ms} ms`, "TimeoutError")),
      ms,
    );
    list.push(headers.signal);
    return { signal: AbortSignal.any(list), done: () => clearTimeout(timer) };
  }

  #failure(spec: RequestSpec, signal: AbortSignal | undefined, err: unknown): unknown {
    for (const s of [this.#signal, spec.signal]) if (s?.aborted) return s.reason;
    if (err instanceof DockerError) return err;
    if (
      err instanceof DOMException && err.name === "TimeoutError" || signal?.reason?.name === "TimeoutError"
    ) {
      const ms = typeof spec.timeout === "number" ? spec.timeout : this.#timeoutMs;
      return new DockerError(`${spec.what}: docker at ${this.host} timed out after ${ms} ms`, { cause: err });
    }
    if (err instanceof TypeError && /fetch failed|error sending request|Connect/i.test(err.message)) {
      const reason = connectReason(err);
      return new DockerError(
        `docker at ${this.host} is unreachable: ${reason} (is dockerd running? permission to the socket?)`,
        { cause: err },
      );
    }
    const msg = err instanceof Error ? err.message : String(err);
    return new DockerError(`${spec.what}: ${msg}`, { cause: err });
  }
}

/** Encode a path segment; Docker decodes it before routing, so `/` in image names may be escaped. */
export function enc(segment: string): string {
  return encodeURIComponent(segment);
}

/** `p`, or a rejection with the signal's reason as soon as it aborts. */
export function untilAborted<T>(p: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
