/**
 * Following Docker: subscribe, full pass, stream; on any break, back off, resubscribe from the last event
 * seen and run a full pass again. Events only mark containers dirty for the reconcile loop.
 */
import type { DockerClient } from "../docker/client.ts";
import type { Logger } from "../log.ts";
import type { Reconciler } from "./reconcile.ts";
import { describeError } from "../errors.ts";
import { abortableSleep, backoffDelay } from "../util/async.ts";

/** What {@link followEvents} needs. */
export interface FollowDeps {
  docker: DockerClient;
  reconciler: Reconciler;
  log: Logger;
  signal: AbortSignal;
  state: { dockerConnected: boolean };
}

/**
 * Subscribe, full pass, stream; on any break, or a stream that ends cleanly, back off (growing, with
 * jitter, reset once a stream has carried an event), resubscribe from the last event, full pass again.
 */
export async function followEvents({ docker, reconciler, log, signal, state }: FollowDeps): Promise<void> {
  let since: string = (Date.now() / 1000).toFixed(3);
  let attempt = 0;
  let connectedOnce = false;
  const backOff = async (msg: string, fields: Record<string, unknown>) => {
    const retryMs = backoffDelay(++attempt, 500, 15_000);
    log.warn(msg, { ...fields, retryMs });
    await abortableSleep(retryMs, signal);
  };
  while (!signal.aborted) {
    try {
      await docker.negotiate(signal);
      // Events since the last one seen cover the gap between listing and subscribing.
      const stream = docker.events({
        since,
        // Podman's Docker API matches event filters on its own names ("died", "remove") and reports a
        // removal as "remove": without them a stopped or removed Podman container was never forgotten.
        filters: { type: ["container"], event: ["start", "die", "destroy", "died", "remove"] },
        signal,
        onBadLine: (_line, reason) => log.warn("bad event from docker", { reason }),
      });
      const n = await reconciler.markAll(signal);
      log.info(connectedOnce ? "reconnected to docker" : "connected to docker", { running: n });
      connectedOnce = true;
      state.dockerConnected = true;
      for await (const ev of stream) {
        attempt = 0;
        since = (ev.timeNano / 1e9).toFixed(9);
        if (ev.action === "start") reconciler.mark(ev.id, Math.floor(ev.timeNano / 1e6), true);
        else reconciler.forget(ev.id);
      }
      state.dockerConnected = false;
      if (!signal.aborted) await backOff("docker event stream ended; reconnecting", {});
    } catch (err) {
      state.dockerConnected = false;
      if (signal.aborted) break;
      await backOff("docker unavailable; retrying", { error: describeError(err) });
    }
  }
}
