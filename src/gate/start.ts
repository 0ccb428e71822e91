/**
 * The gate's opted-in path, kept light: with the daemon up, one request over its unix socket does the work
 * (the daemon renders from its warm caches, applies with nsenter and adopts the rules). Only when it
 * cannot is the rule machinery loaded here (direct.ts).
 */
import { type Config, parseDuration } from "../config/config.ts";
import { loadConfig } from "../config/load.ts";
import { rawFromEnv } from "../config/options_table.ts";
import { fetchStatus } from "../daemon/status_server.ts";
import { describeError } from "../errors.ts";

/** What runtime.ts knows when it calls in. */
export interface GateStartInput {
  id: string;
  pid: number;
  containerEnv: string[];
  env: Record<string, string | undefined>;
  /**
   * Its namespace was given as a path (Podman's hook): it may have existed before this container, so its
   * raw table is emptied like any other (default: runc just made it, nothing has run in it).
   */
  givenNetns?: boolean;
}

/** Append one JSON line to EGRESSTRATOR_GATE_LOG, if set; a log it cannot write never blocks a start. */
export function gateLog(env: GateStartInput["env"], fields: Record<string, unknown>): void {
  const path = env.EGRESSTRATOR_GATE_LOG;
  if (!path) return;
  try {
    Deno.writeTextFileSync(path, JSON.stringify({ time: new Date().toISOString(), ...fields }) + "\n", {
      append: true,
    });
  } catch { /* the log is a convenience; the decision stands */ }
}

/** Log a refusal and return its one-line reason for the caller to report. */
export function refuse(env: GateStartInput["env"], id: string, why: string): string {
  gateLog(env, { id, decision: "refused", error: why });
  return `refusing to start ${id.slice(0, 12)}: ${why}`;
}

/**
 * The fast path: ask the daemon to enforce. Resolves with the daemon's report, or with why it could not
 * (then the slow path runs; a 501 means "apply it yourself", the daemon uses helper containers).
 */
async function viaDaemon(
  config: Config,
  inp: GateStartInput,
): Promise<{ ruleCount: number } | { error: string; render: boolean }> {
  if (!config.listen?.startsWith("unix://")) {
    return { error: "no daemon unix socket (--listen)", render: false };
  }
  // Only what decides the rules leaves the container's env: no secrets in the request.
  const env = inp.containerEnv.filter((e) => e.startsWith("EGRESSTRATOR_"));
  try {
    const res = await fetchStatus(config.listen, "/v1/gate/enforce", 3000, {
      id: inp.id,
      pid: inp.pid,
      env,
      unstarted: !inp.givenNetns,
    });
    const body = await res.json() as { ruleCount?: number; error?: string };
    if (res.ok && typeof body.ruleCount === "number") return { ruleCount: body.ruleCount };
    // 501: a daemon that applies with helper containers still renders from its warm caches.
    return { error: body.error ?? `HTTP ${res.status}`, render: res.status === 501 };
  } catch (err) {
    return { error: describeError(err), render: false };
  }
}

/** Put rules in place before start. Returns undefined when done, or why the start must be refused. */
export async function gateStart(inp: GateStartInput): Promise<string | undefined> {
  const t0 = performance.now();
  let config: Config;
  try {
    // The same path as the daemon's: token file, TLS files, `--dns host` and all.
    config = await loadConfig(rawFromEnv(inp.env));
  } catch (err) {
    return refuse(inp.env, inp.id, `bad configuration: ${describeError(err)}`);
  }
  const onFailure = inp.env.EGRESSTRATOR_GATE_ON_FAILURE || "deny";
  if (onFailure !== "deny" && onFailure !== "refuse") {
    // A typo must not quietly pick one: refusing is the choice that never starts anything unfiltered.
    return refuse(inp.env, inp.id, `EGRESSTRATOR_GATE_ON_FAILURE must be deny or refuse, not "${onFailure}"`);
  }
  const timeoutMs = parseDuration("EGRESSTRATOR_GATE_TIMEOUT", inp.env.EGRESSTRATOR_GATE_TIMEOUT || "3s");
  const fast = await viaDaemon(config, inp);
  if ("ruleCount" in fast) {
    const ms = Math.round(performance.now() - t0);
    gateLog(inp.env, { id: inp.id, decision: "applied", source: "daemon", rules: fast.ruleCount, ms });
    return undefined;
  }
  const { direct } = await import("./direct.ts");
  return await direct(config, inp, {
    refuseOnFailure: onFailure === "refuse",
    timeoutMs,
    t0,
    daemonError: fast.render ? undefined : fast.error,
  });
}
