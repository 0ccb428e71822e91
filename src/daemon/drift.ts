/**
 * Drift checks: read each enforced container's filter and raw tables back and compare them with what was
 * read right after the last apply. Whoever changed them (an `iptables -F`, a NOTRACK rule from a container
 * holding NET_ADMIN, a manual `clear`), the container is marked for a fresh apply.
 */
import type { Applier } from "../apply/applier.ts";
import type { RenderedRules } from "../render/renderer.ts";
import { savedHash } from "../apply/enforce.ts";
import type { ContainerInfo } from "../docker/types.ts";
import { describeError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { pool } from "../util/async.ts";
import type { ContainerState } from "./state.ts";

/** What one pass needs from the loop. */
export interface DriftDeps {
  candidates: ContainerState[];
  /** Still the state to judge (not re-applied or forgotten meanwhile). */
  current(s: ContainerState): boolean;
  repair(s: ContainerState): void;
  concurrency: number;
  docker: { inspectContainer(id: string, signal?: AbortSignal): Promise<ContainerInfo> };
  applier: Pick<Applier, "read">;
  log: Logger;
  signal: AbortSignal;
  /** Sees every table read (with counters): the deny log counts from them. */
  onRead?(s: ContainerState, rules: RenderedRules): void;
}

/** One pass over the candidates; returns how many were repaired. */
export async function driftPass(d: DriftDeps): Promise<number> {
  let repaired = 0;
  await pool(d.candidates, d.concurrency, async (s) => {
    if (!d.current(s)) return;
    const drifted = await isDrifted(d, s).catch((err) => {
      d.log.debug("drift check failed", { container: s.name, error: describeError(err) });
      return false;
    });
    if (!drifted || !d.current(s)) return;
    repaired++;
    d.repair(s);
  });
  return repaired;
}

async function isDrifted(d: DriftDeps, s: ContainerState): Promise<boolean> {
  const info = await d.docker.inspectContainer(s.id, d.signal);
  // A new namespace is not drift: the start event (or the next full pass) handles it.
  if (!info.running || (s.pid !== undefined && info.pid !== s.pid)) return false;
  const now = await d.applier.read({ id: s.id, name: s.name, pid: info.pid }, d.signal);
  d.onRead?.(s, now);
  return (await savedHash(now)) !== s.savedHash;
}
