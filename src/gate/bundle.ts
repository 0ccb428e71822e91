/**
 * The gate's look at an opted-in bundle before `runc create`: parse config.json, decide (spec.ts), and
 * write the edited spec back in place (atomically) when a capability was dropped.
 */
import { decideSpec, type OciSpec, specEnv } from "./spec.ts";

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

/** Decide for the bundle whose config.json is `text` at `path`. Never throws: a bad spec is refused. */
export function decideBundle(
  path: string,
  text: string,
  env: Record<string, string | undefined>,
): BundleDecision {
  let spec: OciSpec;
  try {
    spec = JSON.parse(text) as OciSpec;
  } catch (err) {
    return { refuse: `${path} is not JSON: ${(err as Error).message}` };
  }
  const containerEnv = specEnv(spec);
  if (!containerEnv.includes("EGRESSTRATOR_ENABLE=1")) return {};
  const d = decideSpec(spec, {
    allowHostNetwork: on(env.EGRESSTRATOR_GATE_ALLOW_HOST_NETWORK),
    allowNetAdmin: on(env.EGRESSTRATOR_GATE_ALLOW_NET_ADMIN),
    keepNetRaw: on(env.EGRESSTRATOR_GATE_KEEP_NET_RAW),
  });
  if (d.action === "refuse") return { refuse: d.why };
  if (d.action === "pass") return { note: d.why };
  if (d.spec) {
    try {
      const tmp = `${path}.egresstrator-tmp`;
      Deno.writeTextFileSync(tmp, JSON.stringify(d.spec));
      Deno.renameSync(tmp, path);
    } catch (err) {
      return { refuse: `cannot drop ${d.dropped.join(",")} from ${path}: ${(err as Error).message}` };
    }
  }
  return { enforceEnv: containerEnv };
}
