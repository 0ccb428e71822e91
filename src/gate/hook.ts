/**
 * The gate as an OCI hook, for Podman (hooks.d) or any runtime that runs `createRuntime` hooks:
 * `egresstrator hook`, with the container's state on stdin. The runtime calls it once the namespaces exist
 * and before the container's process starts, so the same rules as the runtime gate's go in before the
 * first packet, with no wrapper around the runtime and whichever runtime (crun, runc) is configured.
 * A non-zero exit fails the create: the container never starts, and the runtime shows our stderr.
 *
 * What a hook cannot do is edit the spec: the process's capabilities are already fixed. So where the
 * runtime gate drops CAP_NET_RAW, the hook refuses a container that holds it (Podman's default set as
 * Debian ships it has none).
 */
import { gateEnv } from "./runtime.ts";
import { policyOf } from "./bundle.ts";
import { isHostNetns } from "../apply/netns.ts";
import { decideCaps, netnsKind, type OciSpec, specCaps, specEnv, type SpecPolicy } from "./spec.ts";

/** The OCI state the runtime writes on a hook's stdin (the parts used). */
interface HookState {
  id: string;
  pid: number;
  bundle: string;
}

/** What to do with an opted-in container, decided from its spec (pure but for `isHostNetns`). */
export type HookDecision =
  | { action: "refuse"; why: string }
  | { action: "pass"; why: string }
  | { action: "enforce" };

/**
 * A namespace Podman made for this container (`/run/netns/netns-<uuid>`, CNI's `cni-<uuid>`): the
 * container's own, given to the runtime as a path. Another container's is `/proc/<pid>/ns/net`.
 */
function ownNamedNetns(path: string): boolean {
  return /^\/(var\/)?run\/netns\/[^/]+$/.test(path);
}

/** Decide for an opted-in container's spec. */
export function hookDecision(
  spec: OciSpec,
  policy: SpecPolicy,
  hostNetns: (path: string) => boolean = () => false,
): HookDecision {
  const ns = netnsKind(spec);
  const host = ns.kind === "host" || (ns.kind === "joined" && hostNetns(ns.path!));
  if (host) {
    return policy.allowHostNetwork ? { action: "pass", why: "host network allowed: UNFILTERED" } : {
      action: "refuse",
      why: "it shares the host's network namespace (--network host), where its rules cannot be put " +
        "(EGRESSTRATOR_GATE_ALLOW_HOST_NETWORK=1 lets it start unfiltered)",
    };
  }
  if (ns.kind === "joined" && !ownNamedNetns(ns.path!)) {
    return { action: "pass", why: `joins the network namespace ${ns.path}: the rules of its owner apply` };
  }
  const caps = decideCaps(spec, { ...policy, keepNetRaw: true });
  if (caps.action === "refuse") return caps;
  if (!policy.keepNetRaw && specCaps(spec).has("CAP_NET_RAW")) {
    return {
      action: "refuse",
      why: "it holds CAP_NET_RAW (packet sockets send frames iptables never sees), which a hook cannot " +
        "take away: run it with --cap-drop NET_RAW (EGRESSTRATOR_GATE_KEEP_NET_RAW=1 lets it start)",
    };
  }
  return { action: "enforce" };
}

function parseState(text: string): HookState {
  const s = JSON.parse(text) as Partial<HookState>;
  if (typeof s.id !== "string" || !s.id || typeof s.bundle !== "string" || !s.bundle) {
    throw new Error("no id or bundle in it");
  }
  if (!Number.isInteger(s.pid) || s.pid! <= 0) throw new Error("no pid in it (not the createRuntime stage?)");
  return s as HookState;
}

function say(text: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(`egresstrator hook: ${text}\n`));
}

/** Run as the hook: the state JSON from stdin. Returns the exit code for main.ts. */
export async function runHook(stateText: string, processEnv: Record<string, string | undefined>) {
  let state: HookState;
  let text: string;
  try {
    state = parseState(stateText);
  } catch (err) {
    // Could not even tell which container this is: refuse rather than risk an unfiltered start.
    say(`refusing: cannot read the container state on stdin: ${(err as Error).message}`);
    return 1;
  }
  const short = state.id.slice(0, 12);
  const path = `${state.bundle}/config.json`;
  try {
    text = Deno.readTextFileSync(path);
  } catch (err) {
    say(`refusing ${short}: cannot read ${path}: ${(err as Error).message}`);
    return 1;
  }
  // The cheap test first: a container without the opt-in anywhere in its spec passes untouched.
  if (!text.includes("EGRESSTRATOR_ENABLE=1")) return 0;
  let spec: OciSpec;
  try {
    spec = JSON.parse(text) as OciSpec;
  } catch (err) {
    say(`refusing ${short}: ${path} is not JSON: ${(err as Error).message}`);
    return 1;
  }
  const containerEnv = specEnv(spec);
  if (!containerEnv.includes("EGRESSTRATOR_ENABLE=1")) return 0;
  const env = gateEnv(processEnv);
  const d = hookDecision(spec, policyOf(env), isHostNetns);
  if (d.action === "refuse") {
    say(`refusing to start ${short}: ${d.why}`);
    return 1;
  }
  if (d.action === "pass") {
    say(`${short}: ${d.why}`);
    return 0;
  }
  const { gateStart } = await import("./start.ts");
  const refusal = await gateStart({
    id: state.id,
    pid: state.pid,
    containerEnv,
    env,
    givenNetns: netnsKind(spec).kind === "joined",
  });
  if (refusal === undefined) return 0;
  say(refusal);
  return 1;
}
