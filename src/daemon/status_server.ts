/** The daemon's status server: /healthz, /status (JSON) and /metrics (Prometheus), on a unix socket or TCP. */
import { dirname } from "node:path";
import type { Logger } from "../log.ts";
import { describeError } from "../errors.ts";

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
  }[];
}

/** Where the server gets its answers. */
export interface StatusSource {
  report(): StatusReport;
  metrics(): string;
  /** The runtime gate asks for a container's rules: body {id, env}; answers {ipv4, ipv6, hash, ...}. */
  gateRender?(body: unknown): Promise<Response>;
  /** The runtime gate reports what it applied: body GateApplied. */
  gateApplied?(body: unknown): Response;
}

/** Serve until `signal` aborts. Returns once listening; a failure to listen is logged, not fatal. */
export async function serveStatus(listen: string, src: StatusSource, log: Logger, signal: AbortSignal) {
  const handler = async (req: Request): Promise<Response> => {
    const path = new URL(req.url).pathname;
    if (req.method === "POST" && (path === "/v1/gate/render" || path === "/v1/gate/applied")) {
      const body = await req.json().catch(() => undefined);
      if (body === undefined) return new Response("bad JSON\n", { status: 400 });
      if (path === "/v1/gate/render" && src.gateRender) return await src.gateRender(body);
      if (path === "/v1/gate/applied" && src.gateApplied) return src.gateApplied(body);
    }
    if (req.method !== "GET") return new Response("method not allowed\n", { status: 405 });
    if (path === "/healthz") return Response.json({ status: "ok", docker: src.report().docker });
    if (path === "/status") return Response.json(src.report());
    if (path === "/metrics") {
      return new Response(src.metrics(), { headers: { "content-type": "text/plain; version=0.0.4" } });
    }
    return new Response("not found: try /healthz, /status or /metrics\n", { status: 404 });
  };
  try {
    let server: Deno.HttpServer;
    if (listen.startsWith("unix://")) {
      const path = listen.slice("unix://".length);
      await Deno.mkdir(dirname(path), { recursive: true });
      await Deno.remove(path).catch(() => {});
      server = Deno.serve({ path, signal, onListen: () => {} }, handler);
      // The gate endpoints answer with rules and take reports: root only.
      await Deno.chmod(path, 0o600).catch(() => {});
    } else {
      const hostPort = listen.slice("tcp://".length);
      const i = hostPort.lastIndexOf(":");
      const hostname = hostPort.slice(0, i).replace(/^\[|\]$/g, "");
      server = Deno.serve(
        { hostname, port: Number(hostPort.slice(i + 1)), signal, onListen: () => {} },
        handler,
      );
    }
    log.info("status server listening", { listen });
    return server;
  } catch (err) {
    log.error("status server could not listen; continuing without it", { listen, error: describeError(err) });
    return undefined;
  }
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
      return new Response(data, { status: res.status, headers: res.headers });
    } finally {
      client.close();
    }
  }
  return await fetch(`http://${listen.slice("tcp://".length)}${path}`, init);
}
