/**
 * Wiring shared by every entry point (CLI commands, daemon, gate): builds the Consul client, the ACL
 * source and the renderer a command needs from a Config.
 */
import type { Config, Policy } from "./config/config.ts";
import { ConfigError } from "./errors.ts";
import { ConsulClient } from "./consul/client.ts";
import { type AclSnapshot, type AclSource, ConsulAclSource, DirAclSource } from "./rules/acl_source.ts";
import { loadTemplates, Renderer } from "./render/renderer.ts";
import { RuleCache } from "./rules/rule_cache.ts";
import { buildPlan, type ContainerRef, type RulePlan } from "./rules/plan.ts";
import { VERSION } from "./version.ts";

async function readPem(what: string, path?: string): Promise<string | undefined> {
  if (!path) return undefined;
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    throw new ConfigError(`cannot read ${what} ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** A Consul client for this Config (reads the CA and client certificate files). */
export async function openConsul(config: Config, signal?: AbortSignal): Promise<ConsulClient> {
  return new ConsulClient({
    address: config.consul.address,
    ssl: config.consul.ssl,
    token: config.consul.token,
    caCertPem: await readPem("CA certificate (--ssl-ca-cert)", config.consul.caCertFile),
    clientCertPem: await readPem("client certificate (CONSUL_CLIENT_CERT)", config.consul.clientCertFile),
    clientKeyPem: await readPem("client key (CONSUL_CLIENT_KEY)", config.consul.clientKeyFile),
    timeoutMs: config.consul.timeoutMs,
    signal,
  });
}

/** Everything needed to go from "ACL list" to "rendered text". */
export interface RuleContext {
  source: AclSource;
  consul?: ConsulClient;
  renderer: Renderer;
  /** The built-in templates alone: deny-all never depends on a custom template. */
  denyRenderer: Renderer;
  close(): void;
}

/** Open the ACL source (Consul or --acl-dir) and load the templates. */
export async function openRuleContext(config: Config, signal?: AbortSignal): Promise<RuleContext> {
  const templates = await loadTemplates(config.templateFile);
  const renderer = new Renderer(templates, VERSION);
  const denyRenderer = templates.custom
    ? new Renderer({ ...templates, custom: undefined }, VERSION)
    : renderer;
  if (config.aclDir) {
    return { source: new DirAclSource(config.aclDir), renderer, denyRenderer, close() {} };
  }
  const consul = await openConsul(config, signal);
  return {
    source: new ConsulAclSource(consul, config.kvPath),
    consul,
    renderer,
    denyRenderer,
    close: () => consul.close(),
  };
}

/** Read ACLs, resolve the services they name, and plan for one ACL list. */
export async function planFor(
  ctx: RuleContext,
  config: Config,
  want: { acls: string[]; container?: ContainerRef; policy?: Policy; audit?: boolean },
  signal?: AbortSignal,
): Promise<{ plan: RulePlan; snapshot: AclSnapshot }> {
  const { snapshot, services } = await new RuleCache(ctx.source, ctx.consul).get(signal);
  const plan = buildPlan({
    snapshot,
    acls: want.acls,
    services,
    policy: want.policy ?? config.policy,
    dnsResolvers: config.dnsResolvers,
    container: want.container,
    hasCatalog: ctx.source.hasCatalog,
    audit: want.audit ?? config.audit,
    denyLog: config.denyLog,
  });
  return { plan, snapshot };
}
