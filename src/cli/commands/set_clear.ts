/** `set` and `clear`: act on one container or `--all`, print a line per container, exit 1 if any failed. */
import { STEER_OFF } from "../../fqdn/steering.ts";
import type { Config } from "../../config/config.ts";
import { ConfigError, describeError, ValidationError } from "../../errors.ts";
import { DockerClient } from "../../docker/client.ts";
import { resolveContainer } from "../../docker/resolve.ts";
import type { ContainerInfo } from "../../docker/types.ts";
import { openRuleContext } from "../../context.ts";
import { RuleCache } from "../../rules/rule_cache.ts";
import { makeApplier } from "../../apply/make.ts";
import { enforce, EnforceFailure } from "../../apply/enforce.ts";
import { containerIntent } from "../../rules/intent.ts";
import { CLEAR_TEXT } from "../../render/renderer.ts";
import { parseAclList } from "../../rules/plan.ts";
import { createLogger } from "../../log.ts";
import { heldCaps } from "../../apply/caps.ts";
import { capRisk, namespaceProblem } from "../../rules/isolation.ts";
import { pool } from "../../util/async.ts";
import type { Out } from "./io.ts";

/** Options of `set` and `clear`. */
export interface TargetOptions {
  container?: string;
  all?: boolean;
  rules?: string;
}

function label(info: ContainerInfo): string {
  return `${info.name} (${info.id.slice(0, 12)})`;
}

/** The containers a command acts on: one by reference, or every running one that opts in. */
export async function targets(
  docker: DockerClient,
  config: Config,
  opts: TargetOptions,
  signal: AbortSignal,
) {
  if (!!opts.container === !!opts.all) throw new ConfigError("name one container, or pass --all");
  if (opts.container) {
    const found = await resolveContainer(docker, opts.container, signal);
    const info = await docker.inspectContainer(found.id, signal);
    if (!info.running) throw new ValidationError(`container ${label(info)} is not running`);
    return [info];
  }
  const list = await docker.listContainers({ filters: { status: ["running"] }, signal });
  const infos = await Promise.all(
    list.map((c) => docker.inspectContainer(c.id, signal).catch(() => undefined)),
  );
  return infos.filter((i): i is ContainerInfo => !!i && containerIntent(i.env, config.policy).enabled);
}

async function warnCaps(info: ContainerInfo, out: Out): Promise<void> {
  const caps = await heldCaps(info);
  if (caps.length === 0) return;
  out.stderr(
    `set: warning: ${label(info)} holds ${caps.join(", ")} (${caps.map(capRisk).join("; ")}): ` +
      "run it with --cap-drop NET_RAW, or use the runtime gate\n",
  );
}

/** Run `set`; returns the exit code. */
export async function setCommand(config: Config, opts: TargetOptions, out: Out, signal: AbortSignal) {
  const docker = new DockerClient({ host: config.dockerHost, apiVersion: config.dockerApiVersion });
  const ctx = await openRuleContext(config, signal);
  const log = createLogger({ level: config.debug ? "debug" : "warn", format: config.logFormat });
  try {
    const list = await targets(docker, config, opts, signal);
    if (list.length === 0) out.stderr("set: no running container opts in (EGRESSTRATOR_ENABLE=1)\n");
    const deps = {
      applier: makeApplier(config, docker, log),
      rules: new RuleCache(
        ctx.source,
        ctx.consul,
        60_000,
        (lines) => lines.forEach((l) => out.stderr(`${l}\n`)),
      ),
      renderer: () => ctx.renderer,
      denyRenderer: ctx.denyRenderer,
      config,
    };
    const aclsOverride = opts.rules !== undefined ? parseAclList(opts.rules) : undefined;
    let failed = 0;
    let refused = 0;
    await pool(list, config.concurrency, async (info) => {
      const t0 = performance.now();
      try {
        const r = await enforce(deps, { info, aclsOverride, signal });
        for (const n of r.notes) out.stderr(`${info.name}: ${n}\n`);
        const ms = Math.round(performance.now() - t0);
        if (r.status === "skipped") {
          failed++;
          out.stdout(`${label(info)}: not set: ${r.reason} (set EGRESSTRATOR_ENABLE=1 or pass --rules)\n`);
        } else if (r.status === "refused") {
          refused++;
          out.stderr(`set: ${label(info)}: refused: ${r.reason}\n`);
        } else {
          await warnCaps(info, out);
          // The real rules are not in place: that is a failure of `set`, whatever stands in for them.
          if (r.status === "denied") failed++;
          const what = r.status === "denied"
            ? `deny-all applied (${r.error})`
            : `${r.ruleCount} rules applied`;
          out.stdout(
            `${label(info)}: ${what}, acls ${r.acls.join(",") || "(none)"}, policy ${r.policy}${
              r.audit ? " (audit: nothing refused)" : ""
            }, ${deps.applier.mode}, ${ms} ms\n`,
          );
        }
      } catch (err) {
        signal.throwIfAborted();
        failed++;
        if (err instanceof EnforceFailure) { for (const n of err.notes) out.stderr(`${info.name}: ${n}\n`); }
        out.stdout(`${label(info)}: FAILED: ${describeError(err)}\n`);
      }
    });
    // A container that cannot be filtered is a usage error (2); a failed apply is a runtime one (1).
    return failed > 0 ? 1 : refused > 0 ? 2 : 0;
  } finally {
    ctx.close();
    docker.close();
  }
}

/** Run `clear`: an empty ACCEPT filter table for both families. */
export async function clearCommand(config: Config, opts: TargetOptions, out: Out, signal: AbortSignal) {
  const docker = new DockerClient({ host: config.dockerHost, apiVersion: config.dockerApiVersion });
  const log = createLogger({ level: config.debug ? "debug" : "warn", format: config.logFormat });
  try {
    const list = await targets(docker, config, opts, signal);
    if (list.length === 0) out.stderr("clear: no running container opts in (EGRESSTRATOR_ENABLE=1)\n");
    const applier = makeApplier(config, docker, log);
    let failed = 0;
    let refused = 0;
    await pool(list, config.concurrency, async (info) => {
      const shared = namespaceProblem(info);
      if (shared) {
        refused++;
        return out.stderr(`clear: ${label(info)}: refused: ${shared}\n`);
      }
      try {
        // The DNS steering of rules by DNS name goes too: left pointing at the daemon's listeners, it would
        // leave the container without DNS once the daemon stops.
        await applier.apply(info, { ipv4: CLEAR_TEXT, ipv6: CLEAR_TEXT, nft: STEER_OFF }, signal);
        out.stdout(`${label(info)}: cleared\n`);
      } catch (err) {
        signal.throwIfAborted();
        failed++;
        out.stdout(`${label(info)}: FAILED: ${describeError(err)}\n`);
      }
    });
    return failed > 0 ? 1 : refused > 0 ? 2 : 0;
  } finally {
    docker.close();
  }
}
