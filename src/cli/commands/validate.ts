/** `validate`: check every ACL key (and the services rules name); print each problem; exit 2 on errors. */
import type { Config } from "../../config/config.ts";
import { openRuleContext, type RuleContext } from "../../context.ts";
import { formatProblem, formatRule, type RuleProblem, type ServiceRule } from "../../rules/grammar.ts";
import type { Out } from "./io.ts";
import { serviceKey } from "../../rules/services.ts";
import type { AclSnapshot } from "../../rules/acl_source.ts";
import type { FqdnRule } from "../../rules/grammar.ts";
import { encodeQuery } from "../../fqdn/query.ts";
import { queryUdp } from "../../fqdn/upstream.ts";
import { readAnswer } from "../../fqdn/answers.ts";
import { hostResolvers } from "../../fqdn/resolvers.ts";

/**
 * `--resolve`: whether each DNS name in a rule resolves from this host (A or AAAA), asked of
 * --fqdn-upstream or the host's resolver. A warning when not: the rule may still be right (a name only
 * containers' resolvers know). Wildcards are not looked up: only answers can fill them.
 */
async function checkNames(
  config: Config,
  snapshot: AclSnapshot,
  signal: AbortSignal,
): Promise<RuleProblem[]> {
  const rules = snapshot.entries.flatMap((e) => e.rules).filter((
    r,
  ): r is FqdnRule & { key: string; line: number } => r.kind === "fqdn" && !r.wildcard);
  if (rules.length === 0) return [];
  const server = (config.fqdnUpstream.length ? config.fqdnUpstream : hostResolvers())[0];
  const where = (r: (typeof rules)[number]) => ({ key: r.key, line: r.line, text: formatRule(r) });
  if (!server) {
    return rules.map((r) => ({
      ...where(r),
      reason: "not looked up: no resolver (--fqdn-upstream)",
      severity: "warning",
    }));
  }
  const known = new Map<string, Promise<string | undefined>>();
  const look = async (name: string): Promise<string | undefined> => {
    const found: string[] = [];
    let why = "no A or AAAA record";
    for (const type of ["A", "AAAA"] as const) {
      signal.throwIfAborted();
      try {
        const ans = readAnswer(await queryUdp({ address: server }, encodeQuery(name, type), 2000, signal));
        if (ans && ans.rcode !== "NOERROR") why = ans.rcode;
        for (const a of ans?.addresses ?? []) found.push(a.address);
      } catch (err) {
        why = (err as Error).message;
      }
    }
    return found.length ? undefined : why;
  };
  const out: RuleProblem[] = [];
  for (const r of rules) {
    if (!known.has(r.name)) known.set(r.name, look(r.name));
    const why = await known.get(r.name)!;
    if (why) {
      out.push({
        ...where(r),
        reason: `does not resolve from this host (${server}): ${why}`,
        severity: "warning",
      });
    }
  }
  return out;
}

type Located = ServiceRule & { key: string; line: number };

async function checkServices(
  ctx: RuleContext,
  snapshot: AclSnapshot,
  signal: AbortSignal,
): Promise<RuleProblem[]> {
  const rules = snapshot.entries.flatMap((e) => e.rules).filter((r): r is Located => r.kind === "service");
  const problems: RuleProblem[] = [];
  if (!ctx.consul) {
    for (const r of rules) {
      problems.push({
        key: r.key,
        line: r.line,
        text: formatRule(r),
        reason: "service rules need Consul's catalog, and --acl-dir has none",
        severity: "error",
      });
    }
    return problems;
  }
  const consul = ctx.consul;
  const catalogs = new Map<string, Promise<Record<string, string[]>>>();
  const catalogOf = (dc = "") => {
    if (!catalogs.has(dc)) {
      catalogs.set(dc, consul.catalogServices({ datacenter: dc || undefined, signal }).then((r) => r.data));
    }
    return catalogs.get(dc)!;
  };
  const counts = new Map<string, Promise<number>>();
  for (const r of rules) {
    const where = { key: r.key, line: r.line, text: formatRule(r) };
    const services = await catalogOf(r.datacenter);
    const tags = services[r.service];
    if (!tags) {
      const dc = r.datacenter ? ` in datacenter ${r.datacenter}` : "";
      problems.push({
        ...where,
        reason: `service "${r.service}" is not in the catalog${dc}`,
        severity: "error",
      });
      continue;
    }
    const id = serviceKey(r);
    if (!counts.has(id)) {
      counts.set(
        id,
        consul.catalogService(r.service, { tag: r.tag, datacenter: r.datacenter, signal }).then((x) =>
          x.data.length
        ),
      );
    }
    if ((await counts.get(id)!) === 0) {
      const what = r.tag
        ? `no instance of "${r.service}" has tag "${r.tag}"`
        : `"${r.service}" has no instances`;
      problems.push({ ...where, reason: `${what} right now`, severity: "warning" });
    }
  }
  return problems;
}

/** Run `validate`; returns the exit code (2 when any error was found). */
export async function validateCommand(
  config: Config,
  out: Out,
  signal: AbortSignal,
  opts: { resolve?: boolean } = {},
): Promise<number> {
  const ctx = await openRuleContext(config, signal);
  try {
    const snapshot = await ctx.source.read(signal);
    const problems = [
      ...snapshot.problems,
      ...snapshot.entries.flatMap((e) => e.problems),
      ...(await checkServices(ctx, snapshot, signal)),
      ...(opts.resolve ? await checkNames(config, snapshot, signal) : []),
    ];
    for (const p of problems) out.stdout(`${formatProblem(p)}\n`);
    const errors = problems.filter((p) => p.severity === "error").length;
    const rules = snapshot.entries.reduce((n, e) => n + e.rules.length, 0);
    const empty = snapshot.entries.length === 0 && snapshot.problems.length === 0
      ? " (no ACL keys found)"
      : "";
    out.stderr(
      `validate: ${ctx.source.description}: ${snapshot.entries.length} keys, ${rules} rules, ` +
        `${errors} errors, ${problems.length - errors} warnings${empty}\n`,
    );
    return errors > 0 ? 2 : 0;
  } finally {
    ctx.close();
  }
}
