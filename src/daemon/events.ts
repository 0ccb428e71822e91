/**
 * Following Docker: subscribe, full pass, stream; on any break, back off, resubscribe from the last event
 * seen and run a full pass again. Events only mark containers dirty for the reconcile loop.
 */
import type { DockerClient } from "../docker/client.ts";
import type { Logger } from "../log.ts";
import type { Reconciler } from "./reconcile.ts";
import { describeError } from "../errors.ts";
import { abortableSleep } from "../util/async.ts";

/** What {@link followEvents} needs. */
export interface FollowDeps {
  docker: DockerClient;
  reconciler: Reconciler;
  log: Logger;
  signal: AbortSignal;
  state: { dockerConnected: boolean };
}

/** Subscribe, full pass, stream; on any break: back off, resubscribe from the last event, full pass again. */
export async function followEvents({ docker, reconciler, log, signal, state }: FollowDeps): Promise<void> {
  let since: string = (Date.now() / 1000).toFixed(3);
  let backoff = 500;
  let connectedOnce = false;
  while (!signal.aborted) {
    try {
      await docker.negotiate(signal);
      // Events since the last one seen cover the gap between listing and subscribing.
      const stream = docker.events({
        since,
        filters: { type: ["container"], event: ["start", "die", "destroy"] },
        signal,
        onBadLine: (_line, reason) => log.warn("bad event from docker", { reason }),
      });
      const n = await reconciler.markAll(signal);
      log.info(connectedOnce ? "reconnected to docker" : "connected to docker", { running: n });
      connectedOnce = true;
      state.dockerConnected = true;
      backoff = 500;
      for await (const ev of stream) {
        since = (ev.timeNano / 1e9).toFixed(9);
        if (ev.action === "start") reconciler.mark(ev.id, Math.floor(ev.timeNano / 1e6));
        else reconciler.forget(ev.id);
      }
      state.dockerConnected = false;
      if (!signal.aborted) log.warn("docker event stream ended; reconnecting");
    } catch (err) {
      state.dockerConnected = false;
      if (signal.aborted) break;
      log.warn("docker unavailable; retrying", { error: describeError(err), retryMs: backoff });
      await abortableSleep(backoff * (0.5 + Math.random() / 2), signal);
      backoff = Math.min(backoff * 2, 15_000);
    }
  }
}
