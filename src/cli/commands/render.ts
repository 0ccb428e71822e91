/** `render`: print the iptables-restore text (or the template model) for an ACL list; touches nothing. */
import type { Config } from "../../config/config.ts";
import { openRuleContext, planFor } from "../../context.ts";
import { templateContext } from "../../render/renderer.ts";
import { formatProblem } from "../../rules/grammar.ts";
import { parseAclList } from "../../rules/plan.ts";
import type { Out } from "./io.ts";
import { ConfigError } from "../../errors.ts";
import type { AclSnapshot, AclSource } from "../../rules/acl_source.ts";
import type { RulePlan } from "../../rules/plan.ts";
import { VERSION } from "../../version.ts";
import { DockerClient } from "../../docker/client.ts";
import { resolveContainer } from "../../docker/resolve.ts";
import { containerIntent } from "../../rules/intent.ts";
import { fetchStatus, type StatusReport } from "../../daemon/status_server.ts";

/** Options of `render`. */
export interface RenderOptions {
  rules?: string;
  json?: boolean;
  family?: string;
  container?: string;
}

/** Print problems and an empty-prefix note on stderr. */
function reportProblems(out: Out, plan: RulePlan, snapshot: AclSnapshot, source: AclSource): void {
  if (snapshot.entries.length === 0 && snapshot.problems.length === 0) {
    out.stderr(`warning: ${source.description} holds no ACL keys (empty or missing prefix)\n`);
  }
  for (const p of plan.problems) out.stderr(`${formatProblem(p)}\n`);
}

/** The ACL list and policy a container asks for (its env), `--rules` overriding the list. */
async function containerWant(
  config: Config,
  ref: string,
  rules: string | undefined,
  out: Out,
  signal: AbortSignal,
) {
  const docker = new DockerClient({ host: config.dockerHost, apiVersion: config.dockerApiVersion });
  try {
    const found = await resolveContainer(docker, ref, signal);
    const info = await docker.inspectContainer(found.id, signal);
    const intent = containerIntent(info.env, config.policy, config.audit);
    for (const p of intent.problems) out.stderr(`${info.name}: ${p}\n`);
    if (!intent.enabled && rules === undefined) {
      out.stderr(`${info.name}: note: not opted in (EGRESSTRATOR_ENABLE=1); showing what it would get\n`);
    }
    const acls = rules !== undefined ? parseAclList(rules) : intent.acls;
    return { acls, policy: intent.policy, audit: intent.audit, container: { id: info.id, name: info.name } };
  } finally {
    docker.close();
  }
}

/** The daemon's known addresses per set for a container (`/status`), or undefined with a note why not. */
async function knownAddresses(
  config: Config,
  id: string,
  out: Out,
): Promise<Record<string, string[]> | undefined> {
  if (!config.listen) return undefined;
  try {
    const res = await fetchStatus(config.listen, "/status", 2000);
    const report = await res.json() as StatusReport;
    const row = report.dns?.find((r) => r.id === id);
    if (!row) out.stderr("note: the daemon does not steer this container's DNS (yet): no addresses known\n");
    return row?.known ?? {};
  } catch (err) {
    out.stderr(
      `note: no addresses for DNS names: the daemon on ${config.listen} did not answer (${
        (err as Error).message
      })\n`,
    );
    return undefined;
  }
}

/** Run `render`; returns the exit code. */
export async function renderCommand(config: Config, opts: RenderOptions, out: Out, signal: AbortSignal) {
  const family = opts.family ?? "ipv4";
  if (!["ipv4", "ipv6", "all"].includes(family)) {
    throw new ConfigError(`--family must be ipv4, ipv6 or all, not "${family}"`);
  }
  const want = opts.container
    ? await containerWant(config, opts.container, opts.rules, out, signal)
    : { acls: parseAclList(opts.rules) };
  const ctx = await openRuleContext(config, signal);
  try {
    const { plan, snapshot } = await planFor(ctx, config, want, signal);
    reportProblems(out, plan, snapshot, ctx.source);
    const families = family === "all" ? (["ipv4", "ipv6"] as const) : [family as "ipv4" | "ipv6"];
    if (opts.json) {
      const models = families.map((f) => templateContext(plan, f, VERSION));
      // DNS-name destinations: the addresses the daemon's sets hold now for this container, if it says.
      if (plan.fqdn.length > 0) {
        const container = "container" in want ? want.container : undefined;
        const known = container ? await knownAddresses(config, container.id, out) : undefined;
        if (!container) out.stderr("note: DNS names get their addresses from a container's answers\n");
        for (const m of models) {
          for (const acl of [...m.allowed, ...m.protected]) {
            for (const n of acl.names) {
              if (known) (n as { addresses?: string[] }).addresses = known[n.set] ?? [];
            }
          }
        }
      }
      out.stdout(
        JSON.stringify(models.length === 1 ? models[0] : { ipv4: models[0], ipv6: models[1] }, null, 2),
      );
      out.stdout("\n");
    } else {
      for (const f of families) out.stdout(ctx.renderer.render(plan, f));
    }
    return 0;
  } finally {
    ctx.close();
  }
}
