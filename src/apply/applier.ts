/** How rules get into a container's network namespace. Everything before this is shared by all modes. */
import { CLEAR_TEXT, type RenderedRules } from "../render/renderer.ts";
import type { ApplyMode } from "../config/config.ts";
import { ipsetText, setsIn, STEER_OFF } from "../fqdn/steering.ts";

/** The container to act on. `pid` is its init process as the host sees it (0 when unknown). */
export interface ApplyTarget {
  id: string;
  name: string;
  pid: number;
}

/** Puts a whole filter table (both families) into a namespace, atomically per family. */
export interface Applier {
  readonly mode: ApplyMode;
  /** False when the kernel has no IPv6 at all: then only the IPv4 table is written (and read). */
  readonly ipv6: boolean;
  /**
   * Each family's restore is atomic, and ipv4 is rolled back if ipv6 fails, so a bad text changes
   * nothing. Resolves with the tables as read back when that came for free (the helper container reads
   * them in the same run); else with nothing, and {@link read} gives drift checks their baseline later,
   * off the time to enforce. `unstarted`: the namespace was just made by `runc create` and none of the
   * container's code has run in it (the gate), so its raw table is certainly empty and is not written
   * (that saves one table transaction per family, ~10 ms each here).
   */
  apply(
    target: ApplyTarget,
    rules: RenderedRules,
    signal: AbortSignal,
    previous?: RenderedRules,
    unstarted?: boolean,
  ): Promise<RenderedRules | void>;
  /** Read the filter and raw tables back (`iptables-save`), for drift checks. */
  read(target: ApplyTarget, signal: AbortSignal): Promise<RenderedRules>;
}

/** Result of running a program. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program; injected so the nsenter applier can be unit-tested without root. */
export interface CommandRunner {
  run(
    cmd: string,
    args: string[],
    opts: { stdin?: string; signal: AbortSignal; env?: Record<string, string> },
  ): Promise<
    CommandResult
  >;
}

/** The real runner: Deno.Command, stdin piped when given. */
export const denoRunner: CommandRunner = {
  async run(cmd, args, opts) {
    const child = new Deno.Command(cmd, {
      args,
      stdin: opts.stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
      signal: opts.signal,
      env: opts.env,
    }).spawn();
    if (opts.stdin !== undefined) {
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode(opts.stdin)).catch(() => {});
      await w.close().catch(() => {});
    }
    const out = await child.output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  },
};

/**
 * The raw table, emptied with every apply: a NOTRACK or CT rule there (written by a container holding
 * CAP_NET_ADMIN) would take packets out of conntrack and past the state matches of the filter rules.
 * Docker and Podman write nothing into a container's own raw table.
 */
export const RAW_TEXT = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

/**
 * The shell program both appliers run inside the namespace: one restore per family, each one transaction
 * (filter and raw together). Texts arrive in env vars split into chunks (EGT4_0, EGT4_1, ... / EGT6_0,
 * ...), so no temp files and no single string over the kernel's 128 KiB limit.
 *
 * Lean on purpose (every iptables process costs ~7 ms here): no separate `--test` runs, since each restore
 * is atomic for its family and changes nothing when it fails; no read-back, which drift checks do later,
 * off the time to enforce. Either both families change or neither does: IPv4 is written first, and put
 * back when the IPv6 restore fails. What it is put back to is the previous text when the caller knows it
 * (EGTP4_*: what it last wrote into this namespace, or an empty table for a fresh one), else a save taken
 * first (one more process). The raw table needs no save: it is always empty after an apply of ours. (Both
 * restores at once measured slower than one after the other on two busy cores.) `-w`: the legacy backend's
 * xtables lock.
 */
export function applyScript(
  chunks4: number,
  chunks6: number,
  ipv6 = true,
  prev4?: number,
  raw = true,
): string {
  const cat = (fam: string, n: number) =>
    `printf '%s' ${Array.from({ length: n }, (_, i) => `"$EGT${fam}_${i}"`).join(" ")}${
      raw ? ' "$EGTRAW"' : ""
    }`;
  const restore4 = `${cat("4", chunks4)} | iptables-restore -w 5 || ` +
    `{ echo "egresstrator: ipv4 rules rejected by iptables-restore" >&2; exit 3; }`;
  if (!ipv6) return restore4;
  const back4 = prev4 ? cat("P4", prev4) : `printf '%s\\n' "$old4"`;
  return [
    ...(prev4 ? [] : [`old4=$(iptables-save -t filter) || exit 5`]),
    restore4,
    `${cat("6", chunks6)} | ip6tables-restore -w 5 || { ${back4} | iptables-restore -w 5; ` +
    `echo "egresstrator: ipv6 rules rejected by ip6tables-restore; ipv4 rules rolled back" >&2; exit 4; }`,
  ].join("\n");
}

const CHUNK = 64 * 1024;

/** Split a text into env entries for {@link applyScript}. */
export function chunkEnv(fam: "4" | "6" | "P4", text: string): Record<string, string> {
  const env: Record<string, string> = {};
  const n = Math.max(1, Math.ceil(text.length / CHUNK));
  for (let i = 0; i < n; i++) env[`EGT${fam}_${i}`] = text.slice(i * CHUNK, (i + 1) * CHUNK);
  return env;
}

/**
 * Env and script for applying both families (IPv4 alone when `ipv6` is false). `previous`: what is in the
 * namespace now, if the caller knows (see {@link applyScript}). `unstarted`: leave the raw table alone
 * (see {@link Applier.apply}).
 */
export function applyPayload(
  rules: RenderedRules,
  ipv6 = true,
  previous?: RenderedRules,
  unstarted = false,
): { env: Record<string, string>; script: string } {
  const env: Record<string, string> = {
    ...chunkEnv("4", rules.ipv4),
    ...(ipv6 ? chunkEnv("6", rules.ipv6) : {}),
  };
  const count = (prefix: string) => Object.keys(env).filter((k) => k.startsWith(prefix)).length;
  const n4 = count("EGT4_"), n6 = count("EGT6_");
  if (!unstarted) env.EGTRAW = RAW_TEXT;
  let prev4: number | undefined;
  if (previous && ipv6) {
    Object.assign(env, chunkEnv("P4", previous.ipv4));
    prev4 = count("EGTP4_");
  }
  let script = applyScript(n4, n6, ipv6, prev4, !unstarted);
  // Rules by DNS name: their sets exist before the rules that match them (kept, with their entries, if
  // they do), and the DNS steering goes in after them, in the same run.
  const sets = [...new Set([...setsIn(rules.ipv4), ...(ipv6 ? setsIn(rules.ipv6) : [])])]
    .filter((s) => ipv6 || /^eg[rp]4-/.test(s));
  if (sets.length > 0 || rules.ipset) {
    env.EGTSETS = ipsetText(sets) + (rules.ipset ?? "");
    script = `printf '%s' "$EGTSETS" | ipset -exist restore || ` +
      `{ echo "egresstrator: ipset restore failed (rules by DNS name need ipset)" >&2; exit 6; }\n${script}`;
  }
  if (rules.nft) {
    env.EGTNFT = rules.nft;
    const write = `printf '%s' "$EGTNFT" | nft -f - || ` +
      `{ echo "egresstrator: DNS steering rejected by nft" >&2; exit 7; }`;
    // Taking steering out needs no nft where there is none (nothing can have been put in without it).
    script += rules.nft === STEER_OFF
      ? `\nif command -v nft >/dev/null 2>&1; then ${write}; fi`
      : `\n${write}`;
    // DNS flows from before the steering would bypass it (nat sees only a flow's first packet): the rules
    // drop them; forgetting them lets the container's next query start a steered flow.
    if (rules.nft !== STEER_OFF) {
      script +=
        "\n{ conntrack -D -p udp --dport 53; conntrack -D -p tcp --dport 53; } >/dev/null 2>&1 || true";
    }
  }
  return { env, script };
}

/** What a namespace holds before anything of ours was written: empty filter tables. */
export const EMPTY_RULES: RenderedRules = { ipv4: CLEAR_TEXT, ipv6: CLEAR_TEXT };

/**
 * Script that prints both families' filter and raw tables, separated by a marker line: what drift checks
 * compare, so a NOTRACK rule added in raw is drift as much as a flushed filter table. The filter tables
 * come with their rule counters (`-c`), which the deny log reads; {@link normalizeSaved} drops them.
 */
export const READ_SCRIPT =
  "iptables-save -c -t filter && iptables-save -t raw && echo '#--egresstrator-ipv6--' && " +
  "ip6tables-save -c -t filter && ip6tables-save -t raw";

/**
 * The DNS steering of rules by DNS name, read with the tables (last, so it counts with the last family):
 * a steering taken out or changed is drift like a flushed table. Nothing where there is no nft, or no
 * steering.
 */
const READ_STEERING =
  "{ command -v nft >/dev/null 2>&1 && nft list table inet egresstrator 2>/dev/null || true; }";

/** {@link READ_SCRIPT} (and the steering), or the IPv4 tables alone on a kernel without IPv6. */
export function readScript(ipv6: boolean): string {
  return `${ipv6 ? READ_SCRIPT : "iptables-save -c -t filter && iptables-save -t raw"} && ${READ_STEERING}`;
}

/**
 * Whether this kernel has IPv6 at all. Booted with `ipv6.disable=1` it has no `/proc/sys/net/ipv6`, no
 * namespace can have IPv6 traffic, and ip6tables-restore cannot even initialise its table. (A namespace
 * with IPv6 merely switched off by sysctl still has the directory, and still gets its IPv6 rules.)
 */
export function kernelHasIPv6(exists: (path: string) => boolean = pathExists): boolean {
  return exists("/proc/sys/net/ipv6/conf");
}

/** Only a path that is certainly not there counts as absent: any other error (permissions) is "there". */
function pathExists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch (err) {
    // Fail closed: believing IPv6 absent when it is not would leave every container's IPv6 unfiltered.
    return !(err instanceof Deno.errors.NotFound);
  }
}

/** Saved tables without comments, counters or blank lines: equal text means equal rules. */
export function normalizeSaved(text: string): string {
  return text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"))
    .map((l) => l.replace(/\s*\[\d+:\d+\]$/, "").replace(/^\[\d+:\d+\]\s+/, "")).join("\n");
}

/** Split {@link READ_SCRIPT}'s output. */
export function splitRead(stdout: string): RenderedRules {
  const [ipv4, ipv6 = ""] = stdout.split("#--egresstrator-ipv6--\n");
  return { ipv4, ipv6 };
}
