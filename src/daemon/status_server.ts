/**
 * The daemon's status server: /healthz, /status (JSON), /metrics (Prometheus) and /v1/seen/<id> (what a
 * container was refused lately), on a unix socket or TCP.
 */
import { dirname } from "node:path";
import type { Logger } from "../log.ts";
import { AppError, describeError } from "../errors.ts";
import type { SeenEntry } from "./deny_log.ts";
import type { SteeredStatus } from "../fqdn/forwarder.ts";

/** The JSON `/status` serves (and `egresstrator status` prints). */
export interface StatusReport {
  version: string;
  mode: string;
  policy: string;
  source: string;
  /** False on a kernel without IPv6: only IPv4 rules are written. */
  ipv6: boolean;
  watches: number;
  docker: { connected: boolean };
  consul: { errors: number };
  /** Opted-in containers with nothing of ours in their namespace (see `containers[].unfiltered`). */
  unfiltered: number;
  containers: {
    id: string;
    name: string;
    acls: string[];
    policy: string;
    ruleCount: number;
    /** Who wrote the rules in place: nsenter, helper, or gate. */
    mode?: string;
    hash?: string;
    lastApplied?: string;
    lastError?: string;
    denied: boolean;
    unfiltered: boolean;
    /** Why the container cannot be filtered at all (it shares another namespace). */
    refused?: string;
    /** Capabilities it holds that get around its rules. */
    caps?: string[];
    /** Audit mode: nothing refused, would-be refusals logged. */
    audit?: boolean;
    /** NEW connections refused (audit: that would have been) since the daemon started. */
    deniedCount?: number;
  }[];
  /** Containers whose DNS is steered (rules by DNS name): names seen, set sizes. */
  dns?: SteeredStatus[];
}

/** What `GET /v1/seen/<id>` answers: what a container was refused lately (`suggest` reads it). */
export interface SeenReport {
  id: string;
  name: string;
  policy: string;
  audit: boolean;
  /** False with --deny-log off: nothing is remembered then. */
  denyLog: boolean;
  entries: SeenEntry[];
}

/** Where the server gets its answers. */
export interface StatusSource {
  report(): StatusReport;
  metrics(): string;
  /** The runtime gate asks for a container's rules: body {id, env}; answers {ipv4, ipv6, hash, ...}. */
  gateRender?(body: unknown): Promise<Response>;
  /** The runtime gate reports what it applied: body GateApplied. */
  gateApplied?(body: unknown): Response;
  /** The runtime gate's fast path: body {id, pid, env}; the daemon applies and adopts. */
  gateEnforce?(body: unknown): Promise<Response>;
  /**
   * The runtime shim's protocol (see gate_shim.ts): `prepare` before create, `created` from its hook
   * during create, `enforce` after.
   */
  shim?(what: "prepare" | "created" | "enforce", body: unknown): Promise<Response>;
  /** `GET /v1/seen/<full id>`: a {@link SeenReport}, or 404. */
  seen?(id: string): Response;
}

/** The largest request body the gate endpoints read: a gate report or an env list, never more. */
export const MAX_BODY_BYTES = 64 * 1024;

async function readJson(req: Request): Promise<unknown> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY_BYTES) return undefined;
  const reader = req.body?.getReader();
  if (!reader) return undefined;
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    size += r.value.length;
    if (size > MAX_BODY_BYTES) {
      await reader.cancel().catch(() => {});
      return undefined;
    }
    chunks.push(r.value);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) (all.set(c, at), at += c.length);
  try {
    return JSON.parse(new TextDecoder().decode(all));
  } catch {
    return undefined;
  }
}

/**
 * Serve until `signal` aborts. Returns once listening; a failure to listen throws (the daemon must not
 * run with someone else answering on its address). The gate endpoints, which change what the daemon
 * believes, are served only on a unix socket (mode 0600); over TCP the server is read-only.
 */
export async function serveStatus(listen: string, src: StatusSource, log: Logger, signal: AbortSignal) {
  const unix = listen.startsWith("unix://");
  const handler = async (req: Request): Promise<Response> => {
    const path = new URL(req.url).pathname;
    if (unix && req.method === "POST" && (path.startsWith("/v1/gate/") || path.startsWith("/v1/shim/"))) {
      const body = await readJson(req);
      if (body === undefined) {
        return new Response(`bad JSON, or over ${MAX_BODY_BYTES} bytes\n`, { status: 400 });
      }
      if (path === "/v1/gate/render" && src.gateRender) return await src.gateRender(body);
      if (path === "/v1/gate/applied" && src.gateApplied) return src.gateApplied(body);
      if (path === "/v1/gate/enforce" && src.gateEnforce) return await src.gateEnforce(body);
      const shim = ({
        "/v1/shim/prepare": "prepare",
        "/v1/shim/created": "created",
        "/v1/shim/enforce": "enforce",
      } as const)[path as "/v1/shim/prepare"];
      if (shim && src.shim) return await src.shim(shim, body);
    }
    if (req.method !== "GET") return new Response("method not allowed\n", { status: 405 });
    if (path === "/healthz") return Response.json({ status: "ok", docker: src.report().docker });
    if (path === "/status") return Response.json(src.report());
    if (path.startsWith("/v1/seen/") && src.seen) return src.seen(path.slice("/v1/seen/".length));
    if (path === "/metrics") {
      return new Response(src.metrics(), { headers: { "content-type": "text/plain; version=0.0.4" } });
    }
    return new Response("not found: try /healthz, /status, /metrics or /v1/seen/<container id>\n", {
      status: 404,
    });
  };
  let server: Deno.HttpServer;
  try {
    if (unix) {
      const path = listen.slice("unix://".length);
      await Deno.mkdir(dirname(path), { recursive: true, mode: 0o700 });
      await Deno.remove(path).catch(() => {});
      // Created private: there is no moment at which another user could connect.
      const umask = Deno.umask(0o177);
      try {
        server = Deno.serve({ path, signal, onListen: () => {} }, handler);
      } finally {
        Deno.umask(umask);
      }
      await Deno.chmod(path, 0o600);
    } else {
      const hostPort = listen.slice("tcp://".length);
      const i = hostPort.lastIndexOf(":");
      const hostname = hostPort.slice(0, i).replace(/^\[|\]$/g, "");
      server = Deno.serve(
        { hostname, port: Number(hostPort.slice(i + 1)), signal, onListen: () => {} },
        handler,
      );
    }
  } catch (err) {
    throw new AppError(`status server cannot listen on ${listen}: ${describeError(err)}`, { cause: err });
  }
  log.info("status server listening", { listen, gateEndpoints: unix });
  return server;
}

/** Fetch a path from a running daemon's status server (POST with a JSON body when `body` is given). */
export async function fetchStatus(
  listen: string,
  path: string,
  timeoutMs = 5000,
  body?: unknown,
): Promise<Response> {
  const signal = AbortSignal.timeout(timeoutMs);
  const init: RequestInit = body === undefined
    ? { signal }
    : { signal, method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json" } };
  if (listen.startsWith("unix://")) {
    const client = Deno.createHttpClient({
      proxy: { transport: "unix", path: listen.slice("unix://".length) },
    });
    try {
      const res = await fetch(`http://egresstrator${path}`, { ...init, client });
      const data = await res.arrayBuffer();
      // 204 and 304 may not carry a body, not even an empty one.
      const body = res.status === 204 || res.status === 304 ? null : data;
      return new Response(body, { status: res.status, headers: res.headers });
    } finally {
      client.close();
    }
  }
  return await fetch(`http://${listen.slice("tcp://".length)}${path}`, init);
}
