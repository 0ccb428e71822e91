/**
 * What the gate checks and changes in an opted-in container's OCI spec (config.json) before `runc create`
 * (pure): whether it has a network namespace of its own, and which capabilities would get it around its
 * rules. Like GPU runtimes, the gate edits the spec; runc then creates exactly that.
 */

/** The parts of an OCI runtime spec the gate reads and writes. */
export interface OciSpec {
  process?: { env?: unknown; capabilities?: Record<string, unknown> };
  linux?: { namespaces?: unknown };
  [key: string]: unknown;
}

/** `own`: a new network namespace; `host`: none listed (the host's); `joined`: a path to another one. */
export type NetnsKind = "own" | "host" | "joined";

/** How the container gets its network namespace. */
export function netnsKind(spec: OciSpec): { kind: NetnsKind; path?: string } {
  const list = Array.isArray(spec.linux?.namespaces) ? spec.linux!.namespaces as unknown[] : [];
  const net = list.find((n) => (n as { type?: unknown })?.type === "network") as
    | { path?: unknown }
    | undefined;
  if (!net) return { kind: "host" };
  if (typeof net.path === "string" && net.path !== "") return { kind: "joined", path: net.path };
  return { kind: "own" };
}

const SETS = ["bounding", "effective", "inheritable", "permitted", "ambient"] as const;

/** Capabilities named in any of the process's sets. */
export function specCaps(spec: OciSpec): Set<string> {
  const out = new Set<string>();
  const caps = spec.process?.capabilities ?? {};
  for (const set of SETS) {
    const list = caps[set];
    if (Array.isArray(list)) { for (const c of list) if (typeof c === "string") out.add(c.toUpperCase()); }
  }
  return out;
}

/** The spec without `cap` in any set; `changed` says whether it held it. */
export function dropCap(spec: OciSpec, cap: string): { spec: OciSpec; changed: boolean } {
  const caps = spec.process?.capabilities;
  if (!caps) return { spec, changed: false };
  let changed = false;
  const next: Record<string, unknown> = { ...caps };
  for (const set of SETS) {
    const list = caps[set];
    if (!Array.isArray(list)) continue;
    const kept = list.filter((c) => !(typeof c === "string" && c.toUpperCase() === cap));
    if (kept.length !== list.length) changed = true;
    next[set] = kept;
  }
  return { spec: { ...spec, process: { ...spec.process, capabilities: next } }, changed };
}

/** The container's env from the spec. */
export function specEnv(spec: OciSpec): string[] {
  const env = spec.process?.env;
  return Array.isArray(env) ? env.filter((e): e is string => typeof e === "string") : [];
}

/** Gate settings (from its env file) that loosen the checks below, each for the few who need it. */
export interface SpecPolicy {
  /** EGRESSTRATOR_GATE_ALLOW_HOST_NETWORK=1: start an opted-in host-network container, unfiltered. */
  allowHostNetwork: boolean;
  /** EGRESSTRATOR_GATE_ALLOW_NET_ADMIN=1: start one holding NET_ADMIN or SYS_ADMIN. */
  allowNetAdmin: boolean;
  /** EGRESSTRATOR_GATE_KEEP_NET_RAW=1: leave CAP_NET_RAW in place. */
  keepNetRaw: boolean;
}

/** What to do with an opted-in container's spec before create. */
export type SpecDecision =
  | { action: "refuse"; why: string }
  /** Create it as is, apply nothing: `why` goes to the gate log (and stderr as a warning). */
  | { action: "pass"; why: string }
  /** Create it (from `spec` when it was changed), then apply its rules. */
  | { action: "enforce"; spec?: OciSpec; dropped: string[] };

/**
 * Decide (pure but for `isHostNetns`). Docker writes `--network host` as a path to a bind mount of the
 * host's namespace (`<exec-root>/netns/default`), Podman as no network namespace at all: both are the host.
 */
export function decideSpec(
  spec: OciSpec,
  policy: SpecPolicy,
  isHostNetns: (path: string) => boolean = () => false,
): SpecDecision {
  const found = netnsKind(spec);
  const ns = found.kind === "joined" && isHostNetns(found.path!) ? { kind: "host" as const } : found;
  if (ns.kind === "host") {
    if (!policy.allowHostNetwork) {
      return {
        action: "refuse",
        why: "it shares the host's network namespace (--network host), where its rules cannot be put " +
          "(EGRESSTRATOR_GATE_ALLOW_HOST_NETWORK=1 lets it start unfiltered)",
      };
    }
    return {
      action: "pass",
      why: "host network allowed by EGRESSTRATOR_GATE_ALLOW_HOST_NETWORK: UNFILTERED",
    };
  }
  if (ns.kind === "joined") {
    return { action: "pass", why: `joins the network namespace ${ns.path}: the rules of its owner apply` };
  }
  return decideCaps(spec, policy);
}

/** The capability half of {@link decideSpec}; also what `runc exec` of an opted-in container goes through. */
export function decideCaps(spec: OciSpec, policy: SpecPolicy): SpecDecision {
  const caps = specCaps(spec);
  const admin = ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"].filter((c) => caps.has(c));
  if (admin.length > 0 && !policy.allowNetAdmin) {
    return {
      action: "refuse",
      why: `it holds ${admin.join(" and ")}, with which it could rewrite its own rules ` +
        "(EGRESSTRATOR_GATE_ALLOW_NET_ADMIN=1 lets it start)",
    };
  }
  if (policy.keepNetRaw) return { action: "enforce", dropped: [] };
  const { spec: next, changed } = dropCap(spec, "CAP_NET_RAW");
  return changed
    ? { action: "enforce", spec: next, dropped: ["CAP_NET_RAW"] }
    : { action: "enforce", dropped: [] };
}

/** The argument that marks the shim's own prestart hook (so an edited spec never gets it twice). */
export const HOOK_ARG = "--egresstrator-hook";

/** An OCI hook: what runc runs, with the container's state on stdin. */
export interface OciHook {
  path: string;
  args?: string[];
  env?: string[];
  timeout?: number;
}

/**
 * `spec` with `hook` as its first prestart hook: runc runs prestart hooks once the container's
 * namespaces exist and before its process can run, in order, so this one comes before Docker's own
 * (`libnetwork-setkey`, which sets up the interfaces). A hook of ours already there is replaced.
 */
export function withPrestartHook(spec: OciSpec, hook: OciHook): OciSpec {
  const hooks = (spec.hooks && typeof spec.hooks === "object" ? spec.hooks : {}) as Record<string, unknown>;
  const prestart = Array.isArray(hooks.prestart) ? hooks.prestart as unknown[] : [];
  const others = prestart.filter((h) => {
    const args = (h as { args?: unknown })?.args;
    return !(Array.isArray(args) && args.includes(HOOK_ARG));
  });
  return { ...spec, hooks: { ...hooks, prestart: [hook, ...others] } };
}

const RawJSON = JSON as unknown as { rawJSON(text: string): unknown };

/**
 * JSON.parse that loses no number: one a double cannot hold exactly (Docker writes `--ulimit memlock=-1`
 * as 18446744073709551615, which runc reads as a uint64) is kept as its own text and written back as it
 * was by JSON.stringify. The gate rewrites specs; it must never change what it does not mean to.
 */
export function parseLossless(text: string): unknown {
  return JSON.parse(text, function (_key, value, ctx?: { source?: string }) {
    return typeof value === "number" && ctx?.source !== undefined && String(value) !== ctx.source
      ? RawJSON.rawJSON(ctx.source)
      : value;
  });
}
