/**
 * Consul HTTP API client over native fetch: KV tree and catalog reads, with token, TLS, per-request
 * timeouts and blocking-query support. It only reads; every failure is a ConsulError that names what failed.
 */
import { ConfigError, ConsulError, ValidationError } from "../errors.ts";
import { normalizeConsulAddress } from "./address.ts";
import { parseDuration } from "../config/duration.ts";
import { type CatalogServiceEntry, decodeKvPairs, decodeServiceEntries, type KvPair } from "./decode.ts";

export { normalizeConsulAddress } from "./address.ts";
export type { CatalogServiceEntry, KvPair } from "./decode.ts";

/** How to reach Consul. */
export interface ConsulClientOptions {
  /** Address as the user typed it: "127.0.0.1:8500", "http://host:8500", "https://host:8501". */
  address: string;
  /** Use https when the address has no scheme (the --ssl flag); also upgrades an explicit http://. */
  ssl?: boolean;
  /** Sent as the X-Consul-Token header; never part of an error message or log. */
  token?: string;
  /** Contents of a PEM CA file, trusted in addition to the system roots. */
  caCertPem?: string;
  /** Client certificate (PEM contents), for agents with verify_incoming. Needs clientKeyPem. */
  clientCertPem?: string;
  /** Client key (PEM contents). */
  clientKeyPem?: string;
  /** Per request, default 10000; a blocking query gets at least wait + wait/16 + 5 s. */
  timeoutMs?: number;
  /** Shutdown signal combined with every request; its reason is rethrown unchanged. */
  signal?: AbortSignal;
}

/** Per-call options; index and wait make a blocking query. */
export interface QueryOptions {
  index?: number;
  /** Go duration such as "55s" or "5m" (Consul caps it at 10 min). */
  wait?: string;
  stale?: boolean;
  signal?: AbortSignal;
  datacenter?: string;
}

/** Decoded body plus the X-Consul-Index header (0 when missing or invalid). */
export interface QueryResult<T> {
  data: T;
  index: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const BLOCKING_GRACE_MS = 5_000;
const TLS_REASON = /certificate|tls|ssl|handshake|alert|corrupt message/i;
/** With TLS 1.3 a server rejecting the client certificate often shows up as a dropped connection instead. */
const TLS_DROP = /connection closed|broken pipe|connection reset/i;

/** URL-encode each "/"-separated segment; "." and ".." cannot be sent because URL parsers collapse them. */
function encodePath(value: string, label: string, keepSlash: boolean): string {
  const parts = keepSlash ? value.split("/") : [value];
  if (parts.some((p) => p === "." || p === "..")) {
    throw new ValidationError(
      `${label} "${value}" has a "." or ".." path segment, which consul cannot address`,
    );
  }
  return parts.map(encodeURIComponent).join("/");
}

function parseIndex(header: string | null): number {
  if (header === null || !/^\d+$/.test(header.trim())) return 0;
  const n = Number(header.trim());
  return Number.isSafeInteger(n) ? n : 0;
}

/** The useful tail of a fetch failure: Deno nests the OS error in cause. */
function fetchReason(err: unknown): string {
  const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : "";
  const msg = cause || (err instanceof Error ? err.message : String(err));
  if (/connection refused/i.test(msg)) return "connection refused";
  if (/dns error/i.test(msg)) return "DNS lookup failed: " + msg.replace(/^.*dns error:\s*/i, "");
  return msg.replace(/^error sending request[^)]*\)\s*(\([^)]*\))?:\s*/i, "").replace(
    /^client error \(\w+\):\s*/i,
    "",
  );
}

/** What to check for a TLS failure, from rustls' wording. */
function tlsHint(reason: string): string {
  if (/BadCertificate|CertificateRequired|UnknownCA|AccessDenied/i.test(reason)) {
    return "consul rejected the client: check the client certificate and key (verify_incoming)";
  }
  if (TLS_DROP.test(reason)) {
    return "consul closed the connection, as it does without a valid client certificate: " +
      "check the client certificate and key (verify_incoming)";
  }
  if (/corrupt message|InvalidContentType/i.test(reason)) {
    return "consul does not seem to serve https on this port: check the address scheme and --ssl";
  }
  return "check --ssl-ca-cert";
}

function malformed(path: string, err: unknown, status: number): ConsulError {
  return new ConsulError(`consul returned malformed JSON for GET ${path}: ${(err as Error).message}`, {
    cause: err,
    status,
  });
}

interface Raw {
  body: unknown;
  status: number;
  index: number;
}

interface Req {
  what: string;
  path: string;
  params?: URLSearchParams;
  q: QueryOptions;
  allow404?: boolean;
}

/** Read-only Consul client; one per process, closed on shutdown. */
export class ConsulClient {
  /** Normalized base URL, e.g. http://127.0.0.1:8500/. */
  readonly baseUrl: URL;
  readonly #token?: string;
  readonly #timeoutMs: number;
  readonly #signal?: AbortSignal;
  #http?: Deno.HttpClient;

  /** Validates the address and certificates; throws ConfigError for bad options. */
  constructor(opts: ConsulClientOptions) {
    this.baseUrl = normalizeConsulAddress(opts.address, opts.ssl ?? false);
    this.#token = opts.token || undefined;
    this.#signal = opts.signal;
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!Number.isFinite(this.#timeoutMs) || this.#timeoutMs <= 0) {
      throw new ConfigError(`consul timeout must be a positive number of ms, got ${opts.timeoutMs}`);
    }
    if (!opts.clientCertPem !== !opts.clientKeyPem) {
      throw new ConfigError("a consul client certificate needs both the certificate and its key");
    }
    // Deno accepts a CA bundle without any certificate in it and then trusts only the system roots.
    if (opts.caCertPem !== undefined && !opts.caCertPem.includes("-----BEGIN CERTIFICATE-----")) {
      throw new ConfigError("the consul CA file holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    if (opts.caCertPem || opts.clientCertPem) {
      const caCerts = opts.caCertPem ? [opts.caCertPem] : [];
      try {
        this.#http = opts.clientCertPem && opts.clientKeyPem
          ? Deno.createHttpClient({ caCerts, cert: opts.clientCertPem, key: opts.clientKeyPem })
          : Deno.createHttpClient({ caCerts });
      } catch (err) {
        throw new ConfigError(`cannot load the consul TLS certificates: ${(err as Error).message}`, {
          cause: err,
        });
      }
    }
  }

  /** All keys under prefix (GET /v1/kv/<prefix>?recurse=true); a missing prefix gives [] with its index. */
  async kvTree(prefix: string, q: QueryOptions = {}): Promise<QueryResult<KvPair[]>> {
    const path = "/v1/kv/" + encodePath(prefix, "kv prefix", true);
    const params = new URLSearchParams("recurse=true");
    return await this.#query({ what: `kv ${prefix}`, path, params, q, allow404: true }, decodeKvPairs);
  }

  /** Instances of one service (GET /v1/catalog/service/<name>), optionally filtered by tag and dc. */
  async catalogService(
    name: string,
    q: QueryOptions & { tag?: string } = {},
  ): Promise<QueryResult<CatalogServiceEntry[]>> {
    if (name === "") throw new ValidationError("consul service name is empty");
    const path = "/v1/catalog/service/" + encodePath(name, "service name", false);
    const params = new URLSearchParams(q.tag === undefined ? {} : { tag: q.tag });
    return await this.#query({ what: `catalog service ${name}`, path, params, q }, decodeServiceEntries);
  }

  /** Service names and their tags (GET /v1/catalog/services). */
  async catalogServices(q: QueryOptions = {}): Promise<QueryResult<Record<string, string[]>>> {
    return await this.#query({ what: "catalog services", path: "/v1/catalog/services", q }, (body) => {
      if (typeof body !== "object" || body === null || Array.isArray(body)) {
        throw new TypeError("expected an object");
      }
      return Object.fromEntries(
        Object.entries(body).map(([k, v]) => [k, Array.isArray(v) ? v.map(String) : []]),
      );
    });
  }

  /** Release the TLS HTTP client, if one was created. Safe to call twice. */
  close(): void {
    this.#http?.close();
    this.#http = undefined;
  }

  async #query<T>(req: Req, decode: (body: unknown) => T): Promise<QueryResult<T>> {
    const raw = await this.#get(req);
    try {
      return { data: decode(raw.body), index: raw.index };
    } catch (err) {
      throw malformed(req.path, err, raw.status);
    }
  }

  async #get(req: Req): Promise<Raw> {
    const { q, path } = req;
    const params = req.params ?? new URLSearchParams();
    if (q.index !== undefined) params.set("index", String(Math.max(0, Math.trunc(q.index))));
    let timeoutMs = this.#timeoutMs;
    if (q.wait !== undefined) {
      const waitMs = parseDuration("blocking wait", q.wait);
      // Consul takes Go durations only: a bare number of seconds goes as milliseconds.
      params.set("wait", /^[\d.]+$/.test(q.wait.trim()) ? `${waitMs}ms` : q.wait.trim());
      // Consul adds up to wait/16 of jitter to the wait before it answers.
      timeoutMs = Math.max(timeoutMs, Math.ceil(waitMs + waitMs / 16) + BLOCKING_GRACE_MS);
    }
    if (q.stale) params.set("stale", "");
    if (q.datacenter) params.set("dc", q.datacenter);
    const url = new URL(path, this.baseUrl);
    url.search = params.toString();
    const timeout = AbortSignal.timeout(timeoutMs);
    const signals = [this.#signal, q.signal, timeout].filter((s): s is AbortSignal => s !== undefined);
    const headers: Record<string, string> = { Accept: "application/json" };
    if (this.#token) headers["X-Consul-Token"] = this.#token;
    const init: RequestInit = { headers, signal: AbortSignal.any(signals) };
    let res: Response;
    let text: string;
    try {
      res = await fetch(url, this.#http ? { ...init, client: this.#http } : init);
      text = await res.text();
    } catch (err) {
      if (this.#signal?.aborted) throw this.#signal.reason;
      if (q.signal?.aborted) throw q.signal.reason;
      throw this.#unreached(err, path, timeout.aborted ? timeoutMs : undefined);
    }
    const index = parseIndex(res.headers.get("X-Consul-Index"));
    if (res.status === 404 && req.allow404) return { body: null, status: 404, index };
    if (!res.ok) throw this.#answered(res.status, text, req);
    try {
      return { body: JSON.parse(text), status: res.status, index };
    } catch (err) {
      throw malformed(path, err, res.status);
    }
  }

  #unreached(err: unknown, path: string, timedOutMs: number | undefined): ConsulError {
    const at = this.baseUrl.origin;
    if (timedOutMs !== undefined) {
      return new ConsulError(`consul at ${at} did not answer GET ${path}: timed out after ${timedOutMs} ms`, {
        cause: err,
      });
    }
    const reason = this.#scrub(fetchReason(err));
    if (TLS_REASON.test(reason) || (this.baseUrl.protocol === "https:" && TLS_DROP.test(reason))) {
      const msg = `TLS handshake with consul at ${at} failed: ${reason}; ${tlsHint(reason)} (GET ${path})`;
      return new ConsulError(msg, { cause: err });
    }
    return new ConsulError(`consul at ${at} is unreachable: ${reason} (GET ${path})`, { cause: err });
  }

  #answered(status: number, text: string, req: Req): ConsulError {
    const body = this.#scrub(text.trim()).slice(0, 200) || "(empty body)";
    if (status === 403) {
      return new ConsulError(
        `consul denied access to ${req.what} (403): check the token (--consul-token / CONSUL_HTTP_TOKEN) ` +
          `has read rights: ${body} (GET ${req.path})`,
        { status },
      );
    }
    return new ConsulError(`consul answered ${status} for GET ${req.path}: ${body}`, { status });
  }

  /** Never echo the token, even if a proxy or Consul put it in a body. */
  #scrub(text: string): string {
    return this.#token ? text.replaceAll(this.#token, "<token>") : text;
  }
}
