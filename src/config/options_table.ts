/**
 * The global options: flag, env var and default, in one table (no commander here, so the runtime gate
 * can map env to options without loading the CLI).
 */
import type { RawOptions } from "./config.ts";

/** One global option. */
export interface GlobalSpec {
  key: keyof RawOptions;
  flags: string;
  env?: string;
  def?: string;
  help: string;
  choices?: string[];
}

/** Every global option, in help order. */
export const GLOBAL_OPTIONS: GlobalSpec[] = [
  {
    key: "consul",
    flags: "-c, --consul <address>",
    env: "CONSUL_HTTP_ADDR",
    def: "127.0.0.1:8500",
    help: "Consul address: host:port, http://host:port or https://host:port",
  },
  {
    key: "consulToken",
    flags: "-t, --consul-token <token>",
    env: "CONSUL_HTTP_TOKEN",
    help: "Consul ACL token (never logged)",
  },
  {
    key: "consulTokenFile",
    flags: "--consul-token-file <file>",
    env: "CONSUL_HTTP_TOKEN_FILE",
    help: "file holding the Consul token",
  },
  {
    key: "kvPath",
    flags: "-k, --kv-path <path>",
    env: "CONSUL_PATH",
    def: "egress/acl/",
    help: "Consul KV prefix holding the ACL keys",
  },
  {
    key: "template",
    flags: "-f, --template <file>",
    env: "CONSUL_TEMPLATE",
    help: "custom Eta template for the rules (default: built-in)",
  },
  {
    key: "image",
    flags: "-i, --image <image>",
    env: "EGRESSTRATOR_IMAGE",
    help: "helper image with iptables; implies --mode helper",
  },
  { key: "ssl", flags: "--ssl", env: "CONSUL_HTTP_SSL", help: "use https to reach Consul" },
  {
    key: "sslCaCert",
    flags: "--ssl-ca-cert <file>",
    env: "CONSUL_CACERT",
    help: "CA certificate (PEM) to verify Consul with",
  },
  {
    key: "sslClientCert",
    flags: "--ssl-client-cert <file>",
    env: "CONSUL_CLIENT_CERT",
    help: "client certificate (PEM) for Consul",
  },
  {
    key: "sslClientKey",
    flags: "--ssl-client-key <file>",
    env: "CONSUL_CLIENT_KEY",
    help: "client key (PEM) for Consul",
  },
  {
    key: "consulTimeout",
    flags: "--consul-timeout <duration>",
    env: "EGRESSTRATOR_CONSUL_TIMEOUT",
    def: "10s",
    help: "timeout of one Consul request",
  },
  {
    key: "aclDir",
    flags: "--acl-dir <dir>",
    env: "EGRESSTRATOR_ACL_DIR",
    help: "read ACLs from files in this directory instead of Consul",
  },
  {
    key: "dns",
    flags: "--dns <list>",
    env: "EGRESSTRATOR_DNS",
    def:
      "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,8.8.8.8,8.8.4.4,fc00::/7,fe80::/10,2001:4860:4860::8888,2001:4860:4860::8844",
    help: "resolvers DNS (udp/tcp 53, DoT 853) may go to: addresses or CIDRs of both families, or host",
  },
  {
    key: "policy",
    flags: "--policy <policy>",
    env: "EGRESSTRATOR_DEFAULT_POLICY",
    def: "protect",
    help: "default policy; a container may pick its own with EGRESSTRATOR_POLICY",
    choices: ["protect", "allowlist"],
  },
  {
    key: "audit",
    flags: "--audit",
    env: "EGRESSTRATOR_AUDIT_ALL",
    help:
      "audit mode for every opted-in container: nothing is refused, what the rules would refuse is logged " +
      "(a container's own EGRESSTRATOR_AUDIT=0 or 1 wins)",
  },
  {
    key: "denyLog",
    flags: "--deny-log <setting>",
    env: "EGRESSTRATOR_DENY_LOG",
    def: "on",
    help: "log refused connections (rate-limited LOG rules read from /dev/kmsg; the daemon sets " +
      "net.netfilter.nf_log_all_netns=1 while it runs)",
    choices: ["on", "off"],
  },
  {
    key: "mode",
    flags: "-m, --mode <mode>",
    env: "EGRESSTRATOR_MODE",
    def: "nsenter",
    help: "how rules are applied",
    choices: ["nsenter", "helper"],
  },
  {
    key: "dockerHost",
    flags: "-H, --docker-host <url>",
    env: "DOCKER_HOST",
    def: "unix:///var/run/docker.sock",
    help: "Docker Engine API address",
  },
  {
    key: "dockerApiVersion",
    flags: "--docker-api-version <version>",
    env: "DOCKER_API_VERSION",
    help: "Docker API version (default: negotiated)",
  },
  {
    key: "onError",
    flags: "--on-error <action>",
    env: "EGRESSTRATOR_ON_ERROR",
    def: "deny",
    help: "what an opted-in container gets while its rules cannot be built or written (deny: deny-all)",
    choices: ["deny", "skip"],
  },
  {
    key: "concurrency",
    flags: "--concurrency <n>",
    env: "EGRESSTRATOR_CONCURRENCY",
    def: "8",
    help: "containers applied to in parallel",
  },
  {
    key: "helperTimeout",
    flags: "--helper-timeout <duration>",
    env: "EGRESSTRATOR_HELPER_TIMEOUT",
    def: "30s",
    help: "how long one apply may run (a helper container, or nsenter and iptables-restore)",
  },
  {
    key: "fqdnMinTtl",
    flags: "--fqdn-min-ttl <duration>",
    env: "EGRESSTRATOR_FQDN_MIN_TTL",
    def: "30s",
    help: "rules by DNS name: an answered address is kept at least this long (plus 5s grace)",
  },
  {
    key: "fqdnUpstream",
    flags: "--fqdn-upstream <list>",
    env: "EGRESSTRATOR_FQDN_UPSTREAM",
    help:
      "rules by DNS name: resolvers for the daemon's own lookups of protected names, and where Docker's embedded DNS is taken to forward (default: the host's resolv.conf)",
  },
  {
    key: "listen",
    flags: "--listen <address>",
    env: "EGRESSTRATOR_LISTEN",
    def: "unix:///run/egresstrator/egresstrator.sock",
    help: "daemon status server (/healthz, /status, /metrics): unix:///path, tcp://host:port or none",
  },
  {
    key: "resyncInterval",
    flags: "--resync-interval <duration>",
    env: "EGRESSTRATOR_RESYNC_INTERVAL",
    def: "60s",
    help: "daemon: how often rules are read back and repaired if changed (0 = off)",
  },
  {
    key: "stale",
    flags: "--stale",
    env: "EGRESSTRATOR_CONSUL_STALE",
    help: "let any Consul server answer watches, not only the leader",
  },
  {
    key: "logFormat",
    flags: "--log-format <format>",
    env: "EGRESSTRATOR_LOG_FORMAT",
    def: "text",
    help: "log line format",
    choices: ["text", "json"],
  },
  {
    key: "logLevel",
    flags: "--log-level <level>",
    env: "EGRESSTRATOR_LOG_LEVEL",
    def: "info",
    help: "least severe level logged",
    choices: ["debug", "info", "warn", "error"],
  },
  {
    key: "debug",
    flags: "--debug",
    env: "EGRESSTRATOR_DEBUG",
    help: "debug logs and stack traces on errors",
  },
];

/** Options from env alone (the runtime gate has no flags). */
export function rawFromEnv(env: Record<string, string | undefined>): RawOptions {
  const raw: Record<string, unknown> = {};
  for (const spec of GLOBAL_OPTIONS) {
    if (spec.env && env[spec.env] !== undefined) raw[spec.key] = env[spec.env];
  }
  return raw as RawOptions;
}
