/**
 * The gate's slow path, when the daemon cannot do the work (it is down, or applies with helper
 * containers): get the container's rules (the daemon's render first, then Consul directly), or fail
 * closed (deny-all) or refuse the start, as configured; apply them with nsenter into the created
 * namespace; tell the daemon so it does not apply them again.
 */
import type { Config } from "../config/config.ts";
import { containerIntent } from "../rules/intent.ts";
import { fetchStatus } from "../daemon/status_server.ts";
import { openRuleContext } from "../context.ts";
import { RuleCache } from "../rules/rule_cache.ts";
import { buildRules, countRules, denyPlan } from "../render/build.ts";
import { checkRendered, loadTemplates, type RenderedRules, Renderer, rulesHash } from "../render/renderer.ts";
import { NsenterApplier } from "../apply/nsenter.ts";
import { denoRunner, EMPTY_RULES, kernelHasIPv6 } from "../apply/applier.ts";
import { setsIn } from "../fqdn/steering.ts";
import { describeError } from "../errors.ts";
import { VERSION } from "../version.ts";
import type { ContainerInfo } from "../docker/types.ts";

import { gateLog, type GateStartInput, refuse } from "./start.ts";

interface Rules {
  rendered: RenderedRules;
  hash: string;
  acls: string[];
  policy: "protect" | "allowlist";
  audit?: boolean;
  ruleCount: number;
}

async function fromDaemon(
  config: Config,
  id: string,
  containerEnv: string[],
  timeoutMs: number,
): Promise<Rules> {
  if (!config.listen) throw new Error("no daemon address (--listen none)");
  // Only what decides the rules leaves the container's env: no secrets in the request.
  const env = containerEnv.filter((e) => e.startsWith("EGRESSTRATOR_"));
  const res = await fetchStatus(config.listen, "/v1/gate/render", timeoutMs, { id, env });
  const body = await res.json() as Rules & { ipv4: string; ipv6: string; error?: string };
  if (!res.ok) throw new Error(`daemon: ${body.error ?? res.status}`);
  // Whoever answers on the socket, what goes into the namespace must be a filter table and nothing else.
  if (typeof body.ipv4 !== "string" || typeof body.ipv6 !== "string" || typeof body.hash !== "string") {
    throw new Error("daemon: the answer has no rules");
  }
  checkRendered(body.ipv4, "the daemon's ipv4 rules");
  checkRendered(body.ipv6, "the daemon's ipv6 rules");
  return { ...body, rendered: { ipv4: body.ipv4, ipv6: body.ipv6 } };
}

async function fromConsul(config: Config, inp: GateStartInput, timeoutMs: number): Promise<Rules> {
  const signal = AbortSignal.timeout(timeoutMs);
  const ctx = await openRuleContext(config, signal);
  try {
    const intent = containerIntent(inp.containerEnv, config.policy, config.audit);
    const deps = { rules: new RuleCache(ctx.source, ctx.consul), renderer: () => ctx.renderer, config };
    const want = {
      id: inp.id,
      name: inp.id.slice(0, 12),
      acls: intent.acls,
      policy: intent.policy,
      audit: intent.audit,
    };
    const built = await buildRules(deps, want, signal);
    return built;
  } finally {
    ctx.close();
  }
}

async function denyRules(config: Config, id: string, containerEnv: string[]): Promise<Rules> {
  // Built-in templates only: the fail-closed set must not depend on a custom template working.
  const renderer = new Renderer(await loadTemplates(), VERSION);
  const audit = containerIntent(containerEnv, config.policy, config.audit).audit;
  const rendered = renderer.renderAll(
    denyPlan(config, { id, name: id.slice(0, 12) } as ContainerInfo, audit),
  );
  return {
    rendered,
    hash: await rulesHash(rendered),
    acls: [],
    policy: "allowlist",
    audit,
    ruleCount: countRules(rendered),
  };
}

/** The slow path; `t0` is when the gate started on this container. */
export async function direct(
  config: Config,
  inp: GateStartInput,
  opts: { refuseOnFailure: boolean; timeoutMs: number; t0: number; daemonError?: string },
): Promise<string | undefined> {
  const { refuseOnFailure, timeoutMs, t0 } = opts;
  const errors: string[] = opts.daemonError ? [`daemon: ${opts.daemonError}`] : [];
  let rules: Rules | undefined;
  let source = "daemon";
  for (
    const [name, get] of [
      ["daemon", () => fromDaemon(config, inp.id, inp.containerEnv, Math.min(timeoutMs, 2000))],
      ["consul", () => fromConsul(config, inp, timeoutMs)],
    ] as const
  ) {
    try {
      const got = await get();
      // Rules by DNS name are kept true by the daemon's DNS forwarder, which is not doing this start.
      if (setsIn(got.rendered.ipv4 + got.rendered.ipv6).length > 0) {
        throw new Error("its rules name destinations by DNS name, which only the daemon can enforce");
      }
      rules = got;
      source = name;
      break;
    } catch (err) {
      errors.push(`${name}: ${describeError(err)}`);
    }
  }
  const denied = !rules;
  if (!rules) {
    if (refuseOnFailure) return refuse(inp.env, inp.id, `no rules could be had (${errors.join("; ")})`);
    rules = await denyRules(config, inp.id, inp.containerEnv);
    source = "deny";
  }
  try {
    const target = { id: inp.id, name: inp.id.slice(0, 12), pid: inp.pid };
    const applier = new NsenterApplier(denoRunner, { ipv6: kernelHasIPv6(), timeoutMs: 15_000 });
    // Just created: nothing is in its namespace yet, so a failed family rolls back to empty tables,
    // and no raw table needs emptying.
    await applier.apply(target, rules.rendered, AbortSignal.timeout(15_000), EMPTY_RULES, !inp.givenNetns);
  } catch (err) {
    return refuse(inp.env, inp.id, `rules could not be applied: ${describeError(err)}`);
  }
  if (config.listen) {
    const report = {
      id: inp.id,
      hash: rules.hash,
      acls: rules.acls,
      policy: rules.policy,
      audit: rules.audit ?? false,
      ruleCount: rules.ruleCount,
      denied,
      pid: inp.pid,
    };
    await fetchStatus(config.listen, "/v1/gate/applied", 1000, report).then((r) => r.body?.cancel()).catch(
      () => {},
    );
  }
  const ms = Math.round(performance.now() - t0);
  gateLog(inp.env, {
    id: inp.id,
    decision: denied ? "denied" : "applied",
    source,
    rules: rules.ruleCount,
    ms,
    ...(denied ? { error: errors.join("; ") } : {}),
  });
  return undefined;
}
