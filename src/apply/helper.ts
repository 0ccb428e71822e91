/**
 * Apply through a short-lived helper container that joins the target's network namespace
 * (`NetworkMode: container:<id>`, CAP_NET_ADMIN). The helper is always removed, on success, failure,
 * timeout and shutdown alike.
 */
import type { Applier, ApplyTarget } from "./applier.ts";
import { applyPayload, readScript, splitRead } from "./applier.ts";
import type { RenderedRules } from "../render/renderer.ts";
import { ApplyError, describeError, DockerError } from "../errors.ts";
import type { CreateHelperSpec } from "../docker/types.ts";
import type { Logger } from "../log.ts";

/** The Docker calls the helper applier makes (DockerClient has them). */
export interface HelperDocker {
  imageExists(name: string, signal?: AbortSignal): Promise<boolean>;
  pullImage(name: string, signal?: AbortSignal): Promise<void>;
  createContainer(spec: CreateHelperSpec, signal?: AbortSignal): Promise<string>;
  startContainer(id: string, signal?: AbortSignal): Promise<void>;
  waitContainer(id: string, signal?: AbortSignal): Promise<number>;
  containerLogs(id: string, signal?: AbortSignal): Promise<{ stdout: string; stderr: string }>;
  removeContainer(id: string, opts?: { force?: boolean; signal?: AbortSignal }): Promise<void>;
}

/** Label put on every helper, so leftovers can be found (`docker ps -a --filter label=egresstrator.helper`). */
export const HELPER_LABEL = "egresstrator.helper";

/** Options of {@link HelperApplier}. */
export interface HelperOptions {
  image: string;
  timeoutMs: number;
  log: Logger;
  /** Write the IPv6 table too (false on a kernel without IPv6). */
  ipv6?: boolean;
}

/** The helper-container applier. */
export class HelperApplier implements Applier {
  readonly mode = "helper" as const;
  get ipv6(): boolean {
    return this.opts.ipv6 ?? true;
  }
  private imageReady?: Promise<void>;
  constructor(private readonly docker: HelperDocker, private readonly opts: HelperOptions) {}

  /** Pull the image once if it is missing; a failed pull is retried on the next apply. */
  private ensureImage(signal: AbortSignal): Promise<void> {
    this.imageReady ??= (async () => {
      if (await this.docker.imageExists(this.opts.image, signal)) return;
      this.opts.log.info("pulling helper image", { image: this.opts.image });
      await this.docker.pullImage(this.opts.image, signal);
    })().catch((err) => {
      this.imageReady = undefined;
      throw new ApplyError(`helper image ${this.opts.image} is not available: ${describeError(err)}`, {
        cause: err,
      });
    });
    return this.imageReady;
  }

  private async runHelper(
    target: ApplyTarget,
    script: string,
    env: Record<string, string>,
    signal: AbortSignal,
  ) {
    await this.ensureImage(signal);
    const name = `egresstrator-${target.id.slice(0, 12)}`;
    const spec: CreateHelperSpec = {
      name,
      image: this.opts.image,
      cmd: ["sh", "-c", script],
      env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      labels: { [HELPER_LABEL]: target.id },
      networkContainer: target.id,
      capAdd: ["NET_ADMIN"],
    };
    let id: string | undefined;
    try {
      id = await this.docker.createContainer(spec, signal).catch(async (err) => {
        // A leftover from a crashed run holds the name: applies per container are serialised, so it is stale.
        if (!(err instanceof DockerError && err.status === 409)) throw err;
        await this.docker.removeContainer(name, { force: true, signal });
        return this.docker.createContainer(spec, signal);
      });
      await this.docker.startContainer(id, signal);
      const timeout = AbortSignal.timeout(this.opts.timeoutMs);
      const code = await this.docker.waitContainer(id, AbortSignal.any([signal, timeout])).catch((err) => {
        if (timeout.aborted) {
          throw new ApplyError(`helper ${name} did not finish within ${this.opts.timeoutMs} ms`, {
            cause: err,
          });
        }
        throw err;
      });
      const logs = await this.docker.containerLogs(id, signal);
      return { code, ...logs };
    } finally {
      // Removal must happen even when we are shutting down: it gets its own short deadline.
      const target = id ?? name;
      await this.docker.removeContainer(target, { force: true, signal: AbortSignal.timeout(10_000) }).catch((
        err,
      ) =>
        this.opts.log.warn("could not remove helper container", { helper: name, error: describeError(err) })
      );
    }
  }

  private failure(verb: string, target: ApplyTarget, err: unknown): ApplyError {
    if (err instanceof ApplyError) return new ApplyError(`${verb} ${target.name} via helper: ${err.message}`);
    return new ApplyError(
      `${verb} ${target.name} (${target.id.slice(0, 12)}) via helper: ${describeError(err)}`,
      {
        cause: err,
      },
    );
  }

  async apply(
    target: ApplyTarget,
    rules: RenderedRules,
    signal: AbortSignal,
    previous?: RenderedRules,
  ): Promise<RenderedRules> {
    const payload = applyPayload(rules, this.ipv6, previous);
    // A helper container per read would double the cost: this one reads the tables back as it ends.
    const script = `${payload.script}\n${readScript(this.ipv6)}`;
    const res = await this.runHelper(target, script, payload.env, signal).catch((err) => {
      signal.throwIfAborted();
      throw this.failure("apply to", target, err);
    });
    if (res.code !== 0) {
      const msg = res.stderr.trim().split("\n").slice(-6).join("; ") || `exit code ${res.code}`;
      throw new ApplyError(`apply to ${target.name} (${target.id.slice(0, 12)}) via helper: ${msg}`);
    }
    return splitRead(res.stdout);
  }

  async read(target: ApplyTarget, signal: AbortSignal): Promise<RenderedRules> {
    const res = await this.runHelper(target, readScript(this.ipv6), {}, signal).catch((err) => {
      signal.throwIfAborted();
      throw this.failure("read rules of", target, err);
    });
    if (res.code !== 0) {
      throw new ApplyError(
        `read rules of ${target.name} via helper: ${res.stderr.trim() || `exit ${res.code}`}`,
      );
    }
    return splitRead(res.stdout);
  }
}
