/** `validate`: check every ACL key (and the services rules name); print each problem; exit 2 on errors. */
import type { Config } from "../../config/config.ts";
import { openRuleContext, type RuleContext } from "../../context.ts";
import { formatProblem, formatRule, type RuleProblem, type ServiceRule } from "../../rules/grammar.ts";
import type { Out } from "./io.ts";
import { serviceKey } from "../../rules/services.ts";
import type { AclSnapshot } from "../../rules/acl_source.ts";

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
export async function validateCommand(config: Config, out: Out, signal: AbortSignal): Promise<number> {
  const ctx = await openRuleContext(config, signal);
  try {
    const snapshot = await ctx.source.read(signal);
    const problems = [
      ...snapshot.problems,
      ...snapshot.entries.flatMap((e) => e.problems),
      ...(await checkServices(ctx, snapshot, signal)),
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
