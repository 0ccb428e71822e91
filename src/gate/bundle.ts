/**
 * The gate's look at an opted-in bundle before `runc create`: parse config.json, decide (spec.ts), and
 * write the edited spec back in place (atomically) when a capability was dropped.
 */
import {
  decideCaps,
  decideSpec,
  type OciHook,
  type OciSpec,
  parseLossless,
  specEnv,
  type SpecPolicy,
  withPrestartHook,
} from "./spec.ts";
import { isHostNetns } from "../apply/netns.ts";

/** What runtime.ts does next. */
export interface BundleDecision {
  /** Refuse the create, with this reason. */
  refuse?: string;
  /** A warning for stderr (and runc's log). */
  note?: string;
  /** Apply rules after create, for a container with this env; undefined: apply nothing. */
  enforceEnv?: string[];
}

const on = (v: string | undefined) => /^(1|true|yes|on)$/i.test(v ?? "");

export function policyOf(env: Record<string, string | undefined>): SpecPolicy {
  return {
    allowHostNetwork: on(env.EGRESSTRATOR_GATE_ALLOW_HOST_NETWORK),
    allowNetAdmin: on(env.EGRESSTRATOR_GATE_ALLOW_NET_ADMIN),
    keepNetRaw: on(env.EGRESSTRATOR_GATE_KEEP_NET_RAW),
  };
}

/** Write `value` as JSON to `path` through a temp file and a rename: runc never reads half a file. */
function replaceJson(path: string, value: unknown): string | undefined {
  try {
    const tmp = `${path}.egresstrator-tmp`;
    Deno.writeTextFileSync(tmp, JSON.stringify(value));
    Deno.renameSync(tmp, path);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * `runc exec --process <file>` into an opted-in container (`docker exec`): dockerd builds that process
 * from the container's HostConfig, not from the spec the gate edited, so its capabilities get the same
 * treatment. Returns a refusal, or undefined when the exec may go on.
 */
export function decideExec(
  path: string,
  text: string,
  env: Record<string, string | undefined>,
): string | undefined {
  let process: OciSpec["process"];
  try {
    process = parseLossless(text) as OciSpec["process"];
  } catch (err) {
    return `${path} is not JSON: ${(err as Error).message}`;
  }
  const spec: OciSpec = { process };
  if (!specEnv(spec).includes("EGRESSTRATOR_ENABLE=1")) return undefined;
  const d = decideCaps(spec, policyOf(env));
  if (d.action === "refuse") return d.why.replace(/^it holds/, "the exec holds");
  if (d.action === "enforce" && d.spec) {
    const failed = replaceJson(path, d.spec.process);
    if (failed) return `cannot drop ${d.dropped.join(",")} from ${path}: ${failed}`;
  }
  return undefined;
}

/**
 * Decide for the bundle whose config.json is `text` at `path`. Never throws: a bad spec is refused.
 * `hook`: for a container to enforce, put it in as the first prestart hook (see withPrestartHook).
 */
export function decideBundle(
  path: string,
  text: string,
  env: Record<string, string | undefined>,
  hook?: OciHook,
): BundleDecision {
  let spec: OciSpec;
  try {
    spec = parseLossless(text) as OciSpec;
  } catch (err) {
    return { refuse: `${path} is not JSON: ${(err as Error).message}` };
  }
  const containerEnv = specEnv(spec);
  if (!containerEnv.includes("EGRESSTRATOR_ENABLE=1")) return {};
  const d = decideSpec(spec, policyOf(env), isHostNetns);
  if (d.action === "refuse") return { refuse: d.why };
  if (d.action === "pass") return { note: d.why };
  const edited = hook ? withPrestartHook(d.spec ?? spec, hook) : d.spec;
  const failed = edited ? replaceJson(path, edited) : undefined;
  if (failed) {
    return {
      refuse: `cannot ${d.dropped.length ? `drop ${d.dropped.join(",")} from` : "write"} ${path}: ${failed}`,
    };
  }
  return { enforceEnv: containerEnv };
}
