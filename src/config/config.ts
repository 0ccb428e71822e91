/**
 * Configuration: defaults -> env -> flags -> validate -> frozen Config.
 * The core receives a Config and never reads Deno.env or Deno.args itself.
 */
import { ConfigError } from "../errors.ts";
import { parseAddress } from "../rules/ip.ts";
import type { LogFormat, LogLevel } from "../log.ts";
import { parseDuration, parseDurationOrOff } from "./duration.ts";
import { GLOBAL_OPTIONS } from "./options_table.ts";

export { parseDuration } from "./duration.ts";

export type Policy = "protect" | "allowlist";
export type ApplyMode = "nsenter" | "helper";
export type OnError = "deny" | "skip";

/** Where ACLs and services come from. */
export interface ConsulConfig {
  address: string;
  ssl: boolean;
  /** Secret: never logged or printed. */
  token?: string;
  caCertFile?: string;
  clientCertFile?: string;
  clientKeyFile?: string;
  timeoutMs: number;
}

/** Everything a command needs, fixed once built. */
export interface Config {
  consul: ConsulConfig;
  kvPath: string;
  aclDir?: string;
  templateFile?: string;
  image?: string;
  mode: ApplyMode;
  dockerHost: string;
  dockerApiVersion?: string;
  dnsResolvers: string[];
  policy: Policy;
  onError: OnError;
  logFormat: LogFormat;
  logLevel: LogLevel;
  debug: boolean;
  /** Concurrent applies across containers in the daemon and `--all`. */
  concurrency: number;
  /** Seconds a helper container may run before it is killed and removed. */
  helperTimeoutMs: number;
  /** Status server: `unix:///path`, `tcp://host:port`, or undefined for none. */
  listen?: string;
  /** Drift check period; 0 turns it off. */
  resyncIntervalMs: number;
  /** Let any Consul server answer watches (`?stale`), not only the leader. */
  consulStale: boolean;
  /** Audit mode for containers that do not pick one themselves (EGRESSTRATOR_AUDIT). */
  audit: boolean;
  /** Log (and count) refused connections: LOG rules, the kernel log reader, the host sysctl. */
  denyLog: boolean;
  /** Rules by DNS name: lowest time an answered address is kept (ms). */
  fqdnMinTtlMs: number;
  /** Rules by DNS name: resolvers for the daemon's own lookups (empty: the host's). */
  fqdnUpstream: string[];
}

/** The default of an option, as its row in the options table writes it (the one place defaults live). */
export function optionDefault(key: keyof RawOptions): string {
  const def = GLOBAL_OPTIONS.find((o) => o.key === key)?.def;
  if (def === undefined) throw new Error(`option ${key} has no default in the options table`);
  return def;
}

/** Defaults in the shape Config uses, parsed from the options table. */
export const DEFAULTS = Object.freeze({
  consul: optionDefault("consul"),
  kvPath: optionDefault("kvPath"),
  dockerHost: optionDefault("dockerHost"),
  dnsResolvers: Object.freeze(parseResolvers(optionDefault("dns"))),
  timeoutMs: parseDuration("--consul-timeout", optionDefault("consulTimeout")),
  concurrency: Number(optionDefault("concurrency")),
  helperTimeoutMs: parseDuration("--helper-timeout", optionDefault("helperTimeout")),
  listen: optionDefault("listen"),
  resyncIntervalMs: parseDuration("--resync-interval", optionDefault("resyncInterval")),
  fqdnMinTtlMs: parseDuration("--fqdn-min-ttl", optionDefault("fqdnMinTtl")),
});

/** Raw option values as the CLI collected them (flags already merged with env by commander). */
export interface RawOptions {
  consul?: string;
  consulToken?: string;
  consulTokenFile?: string;
  kvPath?: string;
  template?: string;
  image?: string;
  ssl?: boolean | string;
  sslCaCert?: string;
  sslClientCert?: string;
  sslClientKey?: string;
  aclDir?: string;
  mode?: string;
  dockerHost?: string;
  dockerApiVersion?: string;
  dns?: string;
  policy?: string;
  onError?: string;
  logFormat?: string;
  logLevel?: string;
  debug?: boolean | string;
  consulTimeout?: string;
  concurrency?: string;
  helperTimeout?: string;
  listen?: string;
  resyncInterval?: string;
  stale?: boolean | string;
  audit?: boolean | string;
  denyLog?: string;
  fqdnMinTtl?: string;
  fqdnUpstream?: string;
}

function oneOf<T extends string>(
  name: string,
  value: string | undefined,
  allowed: readonly T[],
  def: string,
): T {
  const v = value === undefined || value === "" ? def : value;
  if ((allowed as readonly string[]).includes(v)) return v as T;
  throw new ConfigError(`${name} must be one of ${allowed.join(", ")}, not "${v}"`);
}

/** Accept "1", "true", "yes", "on" (and their opposites) from env, booleans from flags. */
export function parseBool(name: string, value: boolean | string | undefined): boolean {
  if (typeof value === "boolean") return value;
  if (value === undefined || value === "") return false;
  const v = value.toLowerCase();
  if (["1", "true", "yes", "on"].includes(v)) return true;
  if (["0", "false", "no", "off"].includes(v)) return false;
  throw new ConfigError(`${name} must be true or false, not "${value}"`);
}

/** `--fqdn-upstream`: resolver addresses (no CIDRs). */
export function parseUpstreams(value: string): string[] {
  return value.split(",").map((s) => s.trim()).filter(Boolean).map((a) => {
    const p = parseAddress(a.replace(/^\[|\]$/g, ""));
    if (!p) throw new ConfigError(`--fqdn-upstream: "${a}" is not an IPv4/IPv6 address`);
    return a.replace(/^\[|\]$/g, "").toLowerCase();
  });
}

/** Validate a comma-separated resolver list: addresses or CIDRs of either family. */
export function parseResolvers(value: string): string[] {
  const out: string[] = [];
  for (const part of value.split(",").map((s) => s.trim()).filter(Boolean)) {
    const [addr, prefix, ...rest] = part.replace(/^\[|\](?=\/|$)/g, "").split("/");
    const parsed = parseAddress(addr);
    const max = parsed?.family === "ipv6" ? 128 : 32;
    if (
      !parsed || rest.length > 0 || (prefix !== undefined && !(/^\d{1,3}$/.test(prefix) && +prefix <= max))
    ) {
      throw new ConfigError(`--dns: "${part}" is not an IPv4/IPv6 address or CIDR`);
    }
    out.push(prefix === undefined ? addr : `${addr}/${prefix}`);
  }
  if (out.length === 0) throw new ConfigError("--dns needs at least one resolver address");
  return out;
}

/** `unix:///path`, `tcp://host:port`, `host:port` or `none`. */
export function parseListen(value: string | undefined): string | undefined {
  const v = value === undefined || value === "" ? DEFAULTS.listen : value;
  if (v === "none" || v === "off") return undefined;
  if (/^unix:\/\/\/.+/.test(v)) return v;
  const hostPort = v.replace(/^tcp:\/\//, "");
  const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(hostPort);
  if (!m || Number(m[2]) > 65535) {
    throw new ConfigError(`--listen must be unix:///path, tcp://host:port or none, not "${v}"`);
  }
  return `tcp://${hostPort}`;
}

function positiveInt(name: string, value: string | undefined, def: number): number {
  if (value === undefined || value === "") return def;
  if (!/^[1-9]\d{0,3}$/.test(value)) throw new ConfigError(`${name} must be a whole number from 1 to 9999`);
  return Number(value);
}

/** Turn raw options into a validated, frozen Config. */
export function buildConfig(raw: RawOptions, extra: { token?: string } = {}): Readonly<Config> {
  const kvPath = raw.kvPath ?? DEFAULTS.kvPath;
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x1f]/.test(kvPath)) throw new ConfigError("--kv-path contains control characters");
  const debug = parseBool("--debug", raw.debug);
  const mode = oneOf(
    "--mode",
    raw.mode ?? (raw.image ? "helper" : undefined),
    ["nsenter", "helper"],
    optionDefault("mode"),
  );
  if (mode === "helper" && !raw.image) {
    throw new ConfigError("--mode helper needs --image (an image with iptables-restore, see Dockerfile)");
  }
  const dockerHost = raw.dockerHost || DEFAULTS.dockerHost;
  if (!/^(unix|tcp|http|https):\/\/.+/.test(dockerHost)) {
    throw new ConfigError(`--docker-host must look like unix:///var/run/docker.sock or tcp://host:2375`);
  }
  if (raw.dockerApiVersion && !/^1\.\d{1,2}$/.test(raw.dockerApiVersion)) {
    throw new ConfigError(`DOCKER_API_VERSION must look like 1.41, not "${raw.dockerApiVersion}"`);
  }
  if ((raw.sslClientCert === undefined) !== (raw.sslClientKey === undefined)) {
    throw new ConfigError("a Consul client certificate needs both CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY");
  }
  const config: Config = {
    consul: {
      address: raw.consul || DEFAULTS.consul,
      ssl: parseBool("--ssl", raw.ssl),
      token: extra.token ?? (raw.consulToken || undefined),
      caCertFile: raw.sslCaCert || undefined,
      clientCertFile: raw.sslClientCert || undefined,
      clientKeyFile: raw.sslClientKey || undefined,
      timeoutMs: raw.consulTimeout
        ? parseDuration("--consul-timeout", raw.consulTimeout)
        : DEFAULTS.timeoutMs,
    },
    kvPath,
    aclDir: raw.aclDir || undefined,
    templateFile: raw.template || undefined,
    image: raw.image || undefined,
    mode,
    dockerHost,
    dockerApiVersion: raw.dockerApiVersion || undefined,
    dnsResolvers: raw.dns ? parseResolvers(raw.dns) : [...DEFAULTS.dnsResolvers],
    policy: oneOf("--policy", raw.policy, ["protect", "allowlist"], optionDefault("policy")),
    onError: oneOf("--on-error", raw.onError, ["deny", "skip"], optionDefault("onError")),
    logFormat: oneOf("--log-format", raw.logFormat, ["text", "json"], optionDefault("logFormat")),
    logLevel: oneOf(
      "--log-level",
      raw.logLevel,
      ["debug", "info", "warn", "error"],
      debug ? "debug" : optionDefault("logLevel"),
    ),
    debug,
    concurrency: positiveInt("--concurrency", raw.concurrency, DEFAULTS.concurrency),
    helperTimeoutMs: raw.helperTimeout
      ? parseDuration("--helper-timeout", raw.helperTimeout)
      : DEFAULTS.helperTimeoutMs,
    listen: parseListen(raw.listen),
    resyncIntervalMs: raw.resyncInterval === undefined || raw.resyncInterval === ""
      ? DEFAULTS.resyncIntervalMs
      : parseDurationOrOff("--resync-interval", raw.resyncInterval),
    consulStale: parseBool("--stale", raw.stale),
    audit: parseBool("--audit", raw.audit),
    denyLog: oneOf("--deny-log", raw.denyLog, ["on", "off"], optionDefault("denyLog")) === "on",
    fqdnMinTtlMs: raw.fqdnMinTtl ? parseDuration("--fqdn-min-ttl", raw.fqdnMinTtl) : DEFAULTS.fqdnMinTtlMs,
    fqdnUpstream: raw.fqdnUpstream ? parseUpstreams(raw.fqdnUpstream) : [],
  };
  return deepFreeze(config);
}

function deepFreeze<T>(obj: T): Readonly<T> {
  for (const v of Object.values(obj as Record<string, unknown>)) {
    if (v && typeof v === "object") deepFreeze(v);
  }
  return Object.freeze(obj);
}
