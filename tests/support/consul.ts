/**
 * Starts real Consul agents (-dev, one server) for integration tests. Tests never skip: when no consul
 * binary can be found, startConsul throws and says where it looked.
 *
 * Binary: $EGRESSTRATOR_TEST_CONSUL_BIN, else <repo>/.tools/consul/usr/bin/consul, else `consul` on PATH.
 */
import { freePorts } from "./ports.ts";

/** A running agent and helpers that write fixtures into it. */
export interface ConsulAgent {
  /** As a user would pass it: "127.0.0.1:PORT", or "https://127.0.0.1:PORT" for a TLS agent. */
  address: string;
  /** Base URL with scheme, no trailing slash. */
  httpUrl: string;
  /** Master token (ACL agents only). */
  token?: string;
  /** CA that signed the agent's certificate (TLS agents only). */
  caCertFile?: string;
  caCertPem?: string;
  /** A client certificate signed by the same CA (TLS agents only). */
  clientCertFile?: string;
  clientKeyFile?: string;
  /** Temp dir holding config, certificates and consul.log; removed by stop(). */
  dataDir: string;
  /** Kill the agent and remove its temp dir; safe to call twice. */
  stop(): Promise<void>;
  putKv(key: string, value: string | Uint8Array): Promise<void>;
  deleteKv(key: string, recurse?: boolean): Promise<void>;
  /**
   * Register a service through /v1/catalog/register. The node defaults to "ext-node" (10.99.0.1): services
   * on the agent's own node would be removed by its anti-entropy sync.
   */
  registerService(s: {
    id: string;
    name: string;
    address?: string;
    port: number;
    tags?: string[];
    node?: string;
    nodeAddress?: string;
  }): Promise<void>;
  deregisterService(id: string, node?: string): Promise<void>;
  /** ACL agents only: a policy with these HCL rules and a token for it; returns the token's SecretID. */
  createToken(rules: string): Promise<string>;
}

/** Options for {@link startConsul}. */
export interface StartConsulOptions {
  /** ACLs on, default policy deny, a random master token. */
  acl?: boolean;
  /** HTTPS only (http = -1) with a fresh CA; verifyIncoming makes the agent require client certificates. */
  tls?: boolean | { verifyIncoming: boolean };
}

const DEFAULT_NODE = "ext-node";
const STARTUP_TIMEOUT_MS = 20_000;
const REQUEST_TIMEOUT_MS = 5_000;

function isExecutable(path: string): boolean {
  try {
    const st = Deno.statSync(path);
    return st.isFile && ((st.mode ?? 0o111) & 0o111) !== 0;
  } catch {
    return false;
  }
}

/** Where the consul binary is, or a thrown Error listing every place that was tried. */
export function findConsulBinary(): string {
  const fromEnv = Deno.env.get("EGRESSTRATOR_TEST_CONSUL_BIN");
  if (fromEnv) {
    if (isExecutable(fromEnv)) return fromEnv;
    throw new Error(`EGRESSTRATOR_TEST_CONSUL_BIN=${fromEnv} is not an executable file`);
  }
  const tools = new URL("../../.tools/consul/usr/bin/consul", import.meta.url).pathname;
  if (isExecutable(tools)) return tools;
  const dirs = (Deno.env.get("PATH") ?? "").split(":").filter(Boolean);
  for (const dir of dirs) {
    if (isExecutable(`${dir}/consul`)) return `${dir}/consul`;
  }
  throw new Error(
    "integration tests need a consul binary and found none: set EGRESSTRATOR_TEST_CONSUL_BIN, " +
      `or install it at ${tools}, or put consul on PATH (searched ${dirs.join(":") || "an empty PATH"})`,
  );
}

async function run(bin: string, args: string[], cwd: string): Promise<void> {
  const out = await new Deno.Command(bin, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
    throw new Error(`${bin} ${args.join(" ")} failed (${out.code}): ${text.trim()}`);
  }
}

async function logTail(path: string, lines = 40): Promise<string> {
  try {
    return (await Deno.readTextFile(path)).trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

interface Tls {
  caCertFile: string;
  caCertPem: string;
  clientCertFile: string;
  clientKeyFile: string;
  config: Record<string, unknown>;
}

/** A CA, a server certificate (SANs localhost and 127.0.0.1) and a client certificate, made by consul. */
async function makeTls(bin: string, dir: string, verifyIncoming: boolean): Promise<Tls> {
  await run(bin, ["tls", "ca", "create"], dir);
  await run(bin, ["tls", "cert", "create", "-server", "-dc", "dc1"], dir);
  await run(bin, ["tls", "cert", "create", "-client", "-dc", "dc1"], dir);
  const caCertFile = `${dir}/consul-agent-ca.pem`;
  return {
    caCertFile,
    caCertPem: await Deno.readTextFile(caCertFile),
    clientCertFile: `${dir}/dc1-client-consul-0.pem`,
    clientKeyFile: `${dir}/dc1-client-consul-0-key.pem`,
    config: {
      ca_file: caCertFile,
      cert_file: `${dir}/dc1-server-consul-0.pem`,
      key_file: `${dir}/dc1-server-consul-0-key.pem`,
      verify_incoming: false,
      verify_incoming_rpc: false,
      verify_incoming_https: verifyIncoming,
      verify_outgoing: false,
    },
  };
}

/** Start a dev agent; resolves once it has a leader (and, with ACLs, once the master token works). */
export async function startConsul(opts: StartConsulOptions = {}): Promise<ConsulAgent> {
  const bin = findConsulBinary();
  let lastError: unknown;
  // Free ports are picked then released, so another process can take one first; retry on that race.
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      return await startOnce(bin, opts);
    } catch (err) {
      lastError = err;
      if (!/address already in use/i.test(String((err as Error).message))) throw err;
    }
  }
  throw lastError;
}

async function startOnce(bin: string, opts: StartConsulOptions): Promise<ConsulAgent> {
  const dir = await Deno.makeTempDir({ prefix: "egresstrator-consul-" });
  const logFile = `${dir}/consul.log`;
  const verifyIncoming = typeof opts.tls === "object" && opts.tls.verifyIncoming;
  let child: Deno.ChildProcess | undefined;
  let http: Deno.HttpClient | undefined;
  try {
    const tls = opts.tls ? await makeTls(bin, dir, verifyIncoming) : undefined;
    const [web, dns, serfLan, serfWan, server] = freePorts(5);
    const token = opts.acl ? crypto.randomUUID() : undefined;
    const config: Record<string, unknown> = {
      node_name: `egresstrator-test-${web}`,
      disable_update_check: true,
      log_level: "DEBUG",
      ports: {
        http: tls ? -1 : web,
        https: tls ? web : -1,
        dns,
        serf_lan: serfLan,
        serf_wan: serfWan,
        server,
        grpc: -1,
      },
      ...(tls?.config ?? {}),
    };
    if (token) {
      config.acl = {
        enabled: true,
        default_policy: "deny",
        enable_token_persistence: false,
        tokens: { master: token, agent: token },
      };
    }
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config, null, 2));
    const args = [
      "agent",
      "-dev",
      "-bind",
      "127.0.0.1",
      "-client",
      "127.0.0.1",
      "-config-file",
      `${dir}/config.json`,
    ];
    // sh only redirects both streams into the log; exec makes the signal in stop() reach consul itself.
    child = new Deno.Command("sh", {
      args: ["-c", 'exec "$0" "$@" >"$CONSUL_LOG" 2>&1', bin, ...args],
      env: { CONSUL_LOG: logFile },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const httpUrl = `${tls ? "https" : "http"}://127.0.0.1:${web}`;
    if (tls) {
      http = verifyIncoming
        ? Deno.createHttpClient({
          caCerts: [tls.caCertPem],
          cert: await Deno.readTextFile(tls.clientCertFile),
          key: await Deno.readTextFile(tls.clientKeyFile),
        })
        : Deno.createHttpClient({ caCerts: [tls.caCertPem] });
    }
    const api = makeApi(httpUrl, token, http);
    await waitReady(api, child, token !== undefined, logFile);
    const agent = buildAgent({ api, child, http, dir, httpUrl, token, tls });
    return agent;
  } catch (err) {
    const tail = await logTail(logFile);
    await kill(child);
    http?.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw new Error(
      `could not start consul (${bin}): ${(err as Error).message}\n--- consul.log tail ---\n${tail}`,
      {
        cause: err,
      },
    );
  }
}

type Api = (method: string, path: string, body?: BodyInit, token?: string) => Promise<Response>;

function makeApi(base: string, masterToken: string | undefined, http: Deno.HttpClient | undefined): Api {
  return async (method, path, body, token = masterToken) => {
    const headers: Record<string, string> = {};
    if (token) headers["X-Consul-Token"] = token;
    const init: RequestInit = { method, body, headers, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) };
    return await fetch(base + path, http ? { ...init, client: http } : init);
  };
}

/** Call the API and fail on a non-2xx answer; returns the body text. */
async function call(api: Api, method: string, path: string, body?: BodyInit): Promise<string> {
  const res = await api(method, path, body);
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: consul answered ${res.status}: ${text}`);
  return text;
}

async function waitReady(api: Api, child: Deno.ChildProcess, acl: boolean, logFile: string): Promise<void> {
  let exited: Deno.CommandStatus | undefined;
  child.status.then((s) => exited = s);
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  let last = "no answer yet";
  while (Date.now() < deadline) {
    if (exited) throw new Error(`consul exited with code ${exited.code} during startup`);
    if (/address already in use/i.test(await logTail(logFile, 200))) {
      throw new Error("address already in use");
    }
    try {
      const res = await api("GET", "/v1/status/leader");
      const leader = await res.text();
      // The body is a JSON string with a trailing newline: "\"127.0.0.1:8300\"\n", or "\"\"\n" before election.
      if (res.ok && JSON.parse(leader) !== "") {
        if (!acl) return;
        const self = await api("GET", "/v1/acl/token/self");
        last = `acl/token/self answered ${self.status}: ${await self.text()}`;
        if (self.ok) return;
      } else {
        last = `status/leader answered ${res.status}: ${leader}`;
      }
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`consul not ready after ${STARTUP_TIMEOUT_MS} ms: ${last}`);
}

async function kill(child: Deno.ChildProcess | undefined): Promise<void> {
  if (!child) return;
  try {
    child.kill("SIGTERM");
  } catch {
    // Already gone.
  }
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }, 5_000);
  await child.status;
  clearTimeout(timer);
}

function buildAgent(p: {
  api: Api;
  child: Deno.ChildProcess;
  http?: Deno.HttpClient;
  dir: string;
  httpUrl: string;
  token?: string;
  tls?: Tls;
}): ConsulAgent {
  const { api, dir, token, tls } = p;
  let stopping: Promise<void> | undefined;
  const kvPath = (key: string) => "/v1/kv/" + key.split("/").map(encodeURIComponent).join("/");
  return {
    address: tls ? p.httpUrl : p.httpUrl.replace(/^http:\/\//, ""),
    httpUrl: p.httpUrl,
    token,
    caCertFile: tls?.caCertFile,
    caCertPem: tls?.caCertPem,
    clientCertFile: tls?.clientCertFile,
    clientKeyFile: tls?.clientKeyFile,
    dataDir: dir,
    stop() {
      stopping ??= (async () => {
        await kill(p.child);
        p.http?.close();
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      })();
      return stopping;
    },
    async putKv(key, value) {
      const body = typeof value === "string" ? value : new Uint8Array(value);
      const text = await call(api, "PUT", kvPath(key), body);
      if (text.trim() !== "true") throw new Error(`PUT kv ${key}: consul answered ${text}`);
    },
    async deleteKv(key, recurse = false) {
      await call(api, "DELETE", kvPath(key) + (recurse ? "?recurse=true" : ""));
    },
    async registerService(s) {
      const body = {
        Node: s.node ?? DEFAULT_NODE,
        Address: s.nodeAddress ?? "10.99.0.1",
        Service: { ID: s.id, Service: s.name, Address: s.address ?? "", Port: s.port, Tags: s.tags ?? [] },
      };
      await call(api, "PUT", "/v1/catalog/register", JSON.stringify(body));
    },
    async deregisterService(id, node = DEFAULT_NODE) {
      await call(api, "PUT", "/v1/catalog/deregister", JSON.stringify({ Node: node, ServiceID: id }));
    },
    async createToken(rules) {
      if (!token) throw new Error("createToken needs an agent started with { acl: true }");
      const name = `test-${crypto.randomUUID()}`;
      const policy = JSON.parse(
        await call(api, "PUT", "/v1/acl/policy", JSON.stringify({ Name: name, Rules: rules })),
      );
      const created = JSON.parse(
        await call(
          api,
          "PUT",
          "/v1/acl/token",
          JSON.stringify({ Description: name, Policies: [{ ID: policy.ID }] }),
        ),
      );
      return created.SecretID as string;
    },
  };
}
