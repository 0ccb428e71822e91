/**
 * The one host setting the deny log changes: `net.netfilter.nf_log_all_netns`. The kernel writes what a
 * LOG rule in a container's namespace logs only while it is 1; the daemon sets it at start, keeps it set,
 * and puts back what it found when it stops. What it found is also kept in a file beside the status
 * socket, so a daemon started after a crash of ours still knows to put back 0, not the 1 we left.
 */
import type { Logger } from "../log.ts";
import { describeError } from "../errors.ts";
import { isNotCapable } from "./kmsg.ts";

/** The sysctl's file. */
export const NF_LOG_ALL_NETNS = "/proc/sys/net/netfilter/nf_log_all_netns";

/** What {@link enableNfLogAllNetns} hands back. */
export interface NfLogSetting {
  /** Whether the kernel logs from containers' namespaces now. */
  readonly enabled: boolean;
  /** Set it again if someone turned it off meanwhile (called now and then while the daemon runs). */
  ensure(): Promise<void>;
  /** Put back the value found at start, if we changed it and it is still ours. */
  restore(): Promise<void>;
}

/** Options of {@link enableNfLogAllNetns}. */
export interface NfLogOptions {
  log: Logger;
  /** The sysctl file (tests point it elsewhere). */
  path?: string;
  /** Where the value found at start is kept while it is changed; none: not kept. */
  stateFile?: string;
}

/**
 * Read and write the sysctl file directly, or through `sh` where Deno's permissions keep /proc out of
 * reach (the compiled binary: /proc needs --allow-all, --allow-run it has). The path and value are `sh`'s
 * arguments, never part of its script.
 */
async function viaShell(script: string, args: string[]): Promise<string> {
  const out = await new Deno.Command("sh", { args: ["-c", script, "sh", ...args], stdin: "null" }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr).trim() || `sh exited ${out.code}`);
  return new TextDecoder().decode(out.stdout);
}

async function readValue(path: string): Promise<string> {
  try {
    return (await Deno.readTextFile(path)).trim();
  } catch (err) {
    if (!isNotCapable(err)) throw err;
    return (await viaShell('cat -- "$1"', [path])).trim();
  }
}

async function writeValue(path: string, value: string): Promise<void> {
  try {
    await Deno.writeTextFile(path, `${value}\n`);
  } catch (err) {
    if (!isNotCapable(err)) throw err;
    await viaShell('printf \'%s\\n\' "$2" > "$1"', [path, value]);
  }
}

/** Set the sysctl to 1 (if it is not), remembering what to put back. Never throws: it warns. */
export async function enableNfLogAllNetns(opts: NfLogOptions): Promise<NfLogSetting> {
  const path = opts.path ?? NF_LOG_ALL_NETNS;
  const { log, stateFile } = opts;
  /** The value to put back when we changed it; undefined while the setting is not ours. */
  let original: string | undefined;
  let enabled = false;
  const saved = stateFile
    ? await Deno.readTextFile(stateFile).then((t) => t.trim(), () => undefined)
    : undefined;

  const set = async (first: boolean): Promise<void> => {
    try {
      const now = await readValue(path);
      if (now === "1") {
        enabled = true;
        // Left at 1 by a daemon of ours that did not stop cleanly: 0 is what to put back.
        if (original === undefined && saved === "0") original = "0";
        return;
      }
      await writeValue(path, "1");
      enabled = true;
      original = now;
      if (stateFile) await Deno.writeTextFile(stateFile, `${now}\n`).catch(() => {});
      log[first ? "info" : "warn"](
        first ? "set" : "set again: someone turned it off (--deny-log off keeps it off)",
        {
          sysctl: "net.netfilter.nf_log_all_netns",
          was: now,
          now: 1,
        },
      );
    } catch (err) {
      if (enabled || first) {
        log.warn("cannot set net.netfilter.nf_log_all_netns=1: the kernel does not log refused connections", {
          error: describeError(err),
          fix:
            "run as root in the host's network namespace (under systemd, see packaging/egresstrator.service)",
        });
      }
      enabled = false;
    }
  };

  await set(true);
  return {
    get enabled() {
      return enabled;
    },
    ensure: () => set(false),
    restore: async () => {
      if (original === undefined) return;
      try {
        if ((await readValue(path)) === "1") await writeValue(path, original);
        log.info("put back", { sysctl: "net.netfilter.nf_log_all_netns", now: original });
        if (stateFile) await Deno.remove(stateFile).catch(() => {});
      } catch (err) {
        log.warn("cannot put net.netfilter.nf_log_all_netns back", {
          to: original,
          error: describeError(err),
        });
      }
    },
  };
}
