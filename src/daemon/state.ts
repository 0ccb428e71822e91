/** What the daemon remembers per container: the rows of `/status`, and what the gate reports. */
import type { Policy } from "../config/config.ts";
import type { ContainerInfo } from "../docker/types.ts";
import type { EnforceOutcome } from "../apply/enforce.ts";
import type { RenderedRules } from "../render/renderer.ts";

/** What the loop remembers per enforced container (also what `/status` shows). */
export interface ContainerState {
  id: string;
  name: string;
  acls: string[];
  policy: Policy;
  /** Audit mode: its rules refuse nothing and log what they would refuse. */
  audit?: boolean;
  hash?: string;
  /** Hash of the tables as read back after the last apply: what drift checks compare with. */
  savedHash?: string;
  ruleCount: number;
  mode: string;
  lastApplied?: string;
  lastError?: string;
  /** True while the container holds the deny-all set because its real rules could not be built. */
  denied: boolean;
  /**
   * True while nothing of ours is known to be in the container's namespace although it opted in: the
   * rules and deny-all both failed (or `--on-error skip`). Logged, shown, counted, and retried.
   */
  unfiltered: boolean;
  /**
   * The namespace the state is about: the init pid Docker reported (or the gate saw). A restarted
   * container has a new one, so nothing applied to the old namespace counts for it.
   */
  pid?: number;
  /** Why it cannot be filtered (no network namespace of its own): then nothing is written for it. */
  refused?: string;
  /**
   * The text this daemon last wrote into the namespace (or saw the gate write through it): what a failed
   * family is rolled back to. Unknown (undefined) after drift or when someone else wrote.
   */
  applied?: RenderedRules;
  /** Risky capabilities it holds (NET_RAW, NET_ADMIN, SYS_ADMIN): each a way around its rules. */
  caps?: string[];
  attempts: number;
}

/** What the runtime gate reports after applying rules before a container's start. */
export interface GateApplied {
  id: string;
  hash: string;
  savedHash?: string;
  acls: string[];
  policy: Policy;
  /** Audit mode (absent: enforcing). */
  audit?: boolean;
  ruleCount: number;
  denied: boolean;
  /** The init pid of the created container: the namespace the rules went into. */
  pid?: number;
}

/** A state for a container nothing has been decided for yet. */
export function blankState(id: string, name: string, mode: string): ContainerState {
  return {
    id,
    name,
    acls: [],
    policy: "protect",
    ruleCount: 0,
    mode,
    denied: false,
    unfiltered: false,
    attempts: 0,
  };
}

/** The state after a decision that put rules (or deny-all) in place, or found them there. */
export function settledState(
  info: ContainerInfo,
  out: Exclude<EnforceOutcome, { status: "skipped" | "refused" }>,
  same: ContainerState | undefined,
  mode: string,
  caps: string[],
): ContainerState {
  const unchanged = out.status === "unchanged";
  return {
    id: info.id,
    name: info.name,
    acls: out.acls,
    policy: out.policy,
    audit: out.audit,
    hash: out.hash,
    ruleCount: out.ruleCount,
    // A write needs a new drift baseline: read back after the decision, off the time to enforce.
    savedHash: unchanged ? same?.savedHash : undefined,
    // "gate" stays until the daemon itself writes something.
    mode: unchanged && same ? same.mode : mode,
    lastApplied: unchanged ? same?.lastApplied : new Date().toISOString(),
    lastError: out.error,
    denied: out.status === "denied",
    unfiltered: false,
    pid: info.pid,
    caps,
    applied: unchanged ? same?.applied : out.rendered,
    attempts: out.status === "denied" ? (same?.attempts ?? 0) + 1 : 0,
  };
}
