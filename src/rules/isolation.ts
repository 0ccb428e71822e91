/**
 * Whether a container can be filtered at all (pure): it must have a network namespace of its own, and it
 * should not hold the capabilities that get around or rewrite the rules.
 */
import type { ContainerInfo } from "../docker/types.ts";

/** Why rules must not be written for this container, or undefined when its namespace is its own. */
export function namespaceProblem(info: Pick<ContainerInfo, "networkMode">): string | undefined {
  const mode = info.networkMode;
  if (mode === "host") {
    return "shares the host's network namespace (--network host): its rules would be the host's; not applied";
  }
  if (mode.startsWith("container:")) {
    const other = mode.slice("container:".length);
    return `shares the namespace of ${other.length === 64 ? other.slice(0, 12) : other}; ${
      other.length === 64 ? other.slice(0, 12) : other
    }'s rules apply`;
  }
  return undefined;
}

/** Capabilities that undo egress rules: packet sockets skip them, NET_ADMIN/SYS_ADMIN can rewrite them. */
export const RISKY_CAPS = ["NET_RAW", "NET_ADMIN", "SYS_ADMIN"] as const;
export type RiskyCap = typeof RISKY_CAPS[number];

/** Bit numbers in a /proc/<pid>/status capability mask. */
const CAP_BIT: Record<RiskyCap, number> = { NET_ADMIN: 12, NET_RAW: 13, SYS_ADMIN: 21 };

/** Docker's default set holds NET_RAW; the other two only when added or privileged. */
const DOCKER_DEFAULT: ReadonlySet<RiskyCap> = new Set(["NET_RAW"]);

function norm(cap: string): string {
  return cap.toUpperCase().replace(/^CAP_/, "");
}

/** Risky capabilities a container holds, from its HostConfig, the way Docker combines them. */
export function capsFromHostConfig(
  info: Pick<ContainerInfo, "capAdd" | "capDrop" | "privileged">,
): RiskyCap[] {
  if (info.privileged) return [...RISKY_CAPS];
  const add = new Set(info.capAdd.map(norm));
  const drop = new Set(info.capDrop.map(norm));
  const base = (c: RiskyCap) => add.has("ALL") || (!drop.has("ALL") && DOCKER_DEFAULT.has(c));
  return RISKY_CAPS.filter((c) => (base(c) || add.has(c)) && !drop.has(c));
}

/** Risky capabilities in a `CapBnd:` (or `CapEff:`) line of /proc/<pid>/status; undefined if absent. */
export function capsFromProcStatus(status: string, field = "CapBnd"): RiskyCap[] | undefined {
  const m = new RegExp(`^${field}:\\s*([0-9a-f]+)$`, "m").exec(status);
  if (!m) return undefined;
  const mask = BigInt(`0x${m[1]}`);
  return RISKY_CAPS.filter((c) => (mask >> BigInt(CAP_BIT[c])) & 1n);
}

/** What each risky capability lets the container do, for warnings and the README. */
export function capRisk(cap: RiskyCap): string {
  return cap === "NET_RAW"
    ? "packet sockets send frames iptables never sees"
    : "can rewrite or switch off its own rules";
}
