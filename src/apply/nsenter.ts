/** Apply with `nsenter --net=/proc/<pid>/ns/net` and the host's iptables-restore. Needs root and host PID ns. */
import type { Applier, ApplyTarget, CommandRunner } from "./applier.ts";
import { applyPayload, readScript, splitRead } from "./applier.ts";
import type { RenderedRules } from "../render/renderer.ts";
import { ApplyError } from "../errors.ts";
import { isHostNetns } from "./netns.ts";

function hint(stderr: string): string {
  if (/Operation not permitted|Permission denied/i.test(stderr)) {
    return " (nsenter mode needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN in the host's PID namespace; or use --mode helper)";
  }
  if (/No such file|cannot open/i.test(stderr)) {
    return " (the container's process is not visible: it stopped, or egresstrator runs outside the host's PID namespace)";
  }
  return "";
}

/** The nsenter applier. */
/** Options of {@link NsenterApplier}. */
export interface NsenterOptions {
  /** Write the IPv6 table too (false on a kernel without IPv6). */
  ipv6?: boolean;
  /** Deadline of one apply or read: a hung child is killed, never holds a worker. */
  timeoutMs?: number;
  nsenter?: string;
}

export class NsenterApplier implements Applier {
  readonly mode = "nsenter" as const;
  readonly ipv6: boolean;
  private readonly timeoutMs: number;
  private readonly nsenter: string;
  constructor(private readonly runner: CommandRunner, opts: NsenterOptions = {}) {
    this.ipv6 = opts.ipv6 ?? true;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.nsenter = opts.nsenter ?? "nsenter";
  }

  private nsArgs(target: ApplyTarget): string[] {
    if (!Number.isInteger(target.pid) || target.pid <= 0) {
      throw new ApplyError(`container ${target.name} (${target.id.slice(0, 12)}) has no running process`);
    }
    const ns = `/proc/${target.pid}/ns/net`;
    // Whatever Docker says about the network mode: never write the namespace egresstrator itself (or the
    // host's init) lives in. Those are the host's tables.
    if (isHostNetns(ns)) {
      throw new ApplyError(
        `container ${target.name} (${
          target.id.slice(0, 12)
        }) shares the host's network namespace: refusing to write it`,
      );
    }
    return [`--net=${ns}`, "--", "sh", "-c"];
  }

  private async sh(target: ApplyTarget, script: string, env: Record<string, string>, signal: AbortSignal) {
    const args = [...this.nsArgs(target), script];
    const deadline = AbortSignal.timeout(this.timeoutMs);
    let res;
    try {
      res = await this.runner.run(this.nsenter, args, {
        signal: AbortSignal.any([signal, deadline]),
        env: { PATH: SAFE_PATH, ...env },
      });
    } catch (err) {
      signal.throwIfAborted();
      if (deadline.aborted) {
        throw new ApplyError(`${this.nsenter} in ${target.name} did not finish within ${this.timeoutMs} ms`);
      }
      throw new ApplyError(`cannot run ${this.nsenter}: ${(err as Error).message}`, { cause: err });
    }
    return res;
  }

  async apply(
    target: ApplyTarget,
    rules: RenderedRules,
    signal: AbortSignal,
    previous?: RenderedRules,
    unstarted?: boolean,
  ): Promise<void> {
    const { env, script } = applyPayload(rules, this.ipv6, previous, unstarted);
    const res = await this.sh(target, script, env, signal);
    if (res.code !== 0) {
      const msg = res.stderr.trim().split("\n").slice(-6).join("; ") || `exit code ${res.code}`;
      throw new ApplyError(
        `apply to ${target.name} (${target.id.slice(0, 12)}) via nsenter: ${msg}${hint(msg)}`,
      );
    }
  }

  async read(target: ApplyTarget, signal: AbortSignal): Promise<RenderedRules> {
    const res = await this.sh(target, readScript(this.ipv6), {}, signal);
    if (res.code !== 0) {
      const msg = res.stderr.trim() || `exit code ${res.code}`;
      throw new ApplyError(
        `read rules of ${target.name} (${target.id.slice(0, 12)}) via nsenter: ${msg}${hint(msg)}`,
      );
    }
    return splitRead(res.stdout);
  }
}

/** PATH for the shell inside the namespace: the host's sbin dirs, where iptables lives. */
export const SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
