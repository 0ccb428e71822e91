/**
 * What the test suite must leave on the host as it found it: the main dockerd's `docker0` (a private dockerd
 * started with `--bridge=none` deletes it), the host's iptables and ip6tables filter tables (private
 * dockerds' networks insert FORWARD rules; the main dockerd writes rules for test networks) and
 * `/etc/docker/daemon.json` (the runtime gate's installer edits one), `net.netfilter.nf_log_all_netns`
 * (every daemon sets it while it runs, for the deny log, and must put it back), and the top of
 * `/sys/fs/cgroup` (systemd in a container that bind-mounts it creates directories there and remounts it
 * read-only).
 *
 * scripts/test.sh saves the state before `deno test` runs:
 *
 *   deno run -A tests/support/host_state.ts <file>
 *
 * and passes the file in EGRESSTRATOR_TEST_HOST_BEFORE to tests/integration/zz_host_intact_test.ts, which
 * runs after every other integration test and compares.
 */
import { BRIDGE_COMMENT } from "./dockerd.ts";
import { RUN_ID, TEST_LABEL } from "./docker.ts";

/** The env var naming the file with the state saved before the suite. */
export const HOST_BEFORE_ENV = "EGRESSTRATOR_TEST_HOST_BEFORE";

/** The daemon config file of the main dockerd. */
export const DAEMON_JSON = "/etc/docker/daemon.json";

/** `docker0` as far as the suite must not change it (carrier and operstate follow other users' containers). */
export interface LinkState {
  /** A new index means it was deleted and made again. */
  ifindex: number;
  /** Administratively up. */
  up: boolean;
  mtu: number;
  /** `address/prefixlen`, sorted. */
  addresses: string[];
}

/** The state compared before and after the suite. */
export interface HostState {
  /** null: there is no docker0. */
  docker0: LinkState | null;
  /** `iptables-save -t filter`, normalised (see {@link normaliseSave}). */
  iptables: string[];
  ip6tables: string[];
  /** The file's content; null when it does not exist. */
  daemonJson: string | null;
  /**
   * Host bridges (`br-<12 hex>`) of test networks on the main dockerd that belong to another run of the
   * suite (another engineer's, at the same time): Docker's rules for them come and go meanwhile.
   */
  foreignBridges?: string[];
  /** `net.netfilter.nf_log_all_netns` ("0" or "1"); null when the kernel has no such setting. */
  nfLogAllNetns?: string | null;
  /** The entries of /sys/fs/cgroup (`name/` a directory, `name@` a link) and its mount and super options. */
  cgroupRoot?: string[];
}

const dec = new TextDecoder();

async function output(cmd: string, args: string[]): Promise<{ ok: boolean; out: string; err: string }> {
  const r = await new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" }).output();
  return { ok: r.success, out: dec.decode(r.stdout), err: dec.decode(r.stderr).trim() };
}

/** An iptables-save text without its `#` comment lines, blank lines and `[packets:bytes]` counters. */
export function normaliseSave(text: string): string[] {
  return text.split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => l.replace(/\s*\[\d+:\d+\]$/, ""));
}

async function saveFilter(cmd: "iptables-save" | "ip6tables-save"): Promise<string[]> {
  const r = await output(cmd, ["-t", "filter"]);
  if (!r.ok) throw new Error(`${cmd} -t filter failed: ${r.err}`);
  return normaliseSave(r.out);
}

async function docker0(): Promise<LinkState | null> {
  const r = await output("ip", ["-j", "addr", "show", "dev", "docker0"]);
  if (!r.ok) {
    if (/does not exist/i.test(r.err)) return null;
    throw new Error(`ip addr show dev docker0 failed: ${r.err}`);
  }
  const [link] = JSON.parse(r.out) as {
    ifindex: number;
    flags: string[];
    mtu: number;
    addr_info: { local: string; prefixlen: number }[];
  }[];
  return {
    ifindex: link.ifindex,
    up: link.flags.includes("UP"),
    mtu: link.mtu,
    addresses: link.addr_info.map((a) => `${a.local}/${a.prefixlen}`).sort(),
  };
}

async function daemonJson(): Promise<string | null> {
  try {
    return await Deno.readTextFile(DAEMON_JSON);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

async function nfLogAllNetns(): Promise<string | null> {
  return await Deno.readTextFile("/proc/sys/net/netfilter/nf_log_all_netns").then(
    (t) => t.trim(),
    () => null,
  );
}

function cgroupRoot(): string[] {
  const entries = [...Deno.readDirSync("/sys/fs/cgroup")]
    .map((e) => `${e.name}${e.isSymlink ? "@" : e.isDirectory ? "/" : ""}`).sort();
  const line = Deno.readTextFileSync("/proc/self/mountinfo").split("\n")
    .find((l) => l.split(" ")[4] === "/sys/fs/cgroup");
  const [mount, sb] = line ? line.split(" - ") : ["", ""];
  return [...entries, `mount ${mount.split(" ")[5] ?? "-"}, super ${sb.split(" ")[2] ?? "-"}`];
}

/** Read the host's state now. */
/** Bridges of labelled test networks on the main dockerd not of this run (at the snapshot: all of them). */
async function foreignBridges(): Promise<string[]> {
  const out = await new Deno.Command("docker", {
    args: ["network", "ls", "--filter", `label=${TEST_LABEL}`, "--format", "{{.ID}} {{.Labels}}"],
    stdout: "piped",
    stderr: "null",
  }).output().catch(() => undefined);
  if (!out?.success) return [];
  return dec.decode(out.stdout).split("\n").filter((l) => l && !l.includes(`${TEST_LABEL}=${RUN_ID}`))
    .map((l) => `br-${l.split(" ")[0].slice(0, 12)}`);
}

export async function captureHostState(): Promise<HostState> {
  const [d0, v4, v6, dj, nf, fb] = await Promise.all([
    docker0(),
    saveFilter("iptables-save"),
    saveFilter("ip6tables-save"),
    daemonJson(),
    nfLogAllNetns(),
    foreignBridges(),
  ]);
  return {
    foreignBridges: fb,
    docker0: d0,
    iptables: v4,
    ip6tables: v6,
    daemonJson: dj,
    nfLogAllNetns: nf,
    cgroupRoot: cgroupRoot(),
  };
}

/** Lines of `a` not matched by a line of `b` (as multisets), in `a`'s order. */
function without(a: string[], b: string[]): string[] {
  const left = new Map<string, number>();
  for (const l of b) left.set(l, (left.get(l) ?? 0) + 1);
  return a.filter((l) => {
    const n = left.get(l) ?? 0;
    if (n > 0) left.set(l, n - 1);
    return n === 0;
  });
}

/**
 * Another run of the suite on this machine (a second engineer's) adds and removes the FORWARD rules of its
 * own private dockerds meanwhile: those, marked with another run's id, are not this run's business.
 */
function theirs(line: string): boolean {
  return line.includes(BRIDGE_COMMENT) && !line.includes(RUN_ID);
}

function tableDiff(name: string, allBefore: string[], allAfter: string[], foreign: string[] = []): string[] {
  const mine = (l: string) => !theirs(l) && !foreign.some((b) => l.includes(b));
  const before = allBefore.filter(mine);
  const after = allAfter.filter(mine);
  if (JSON.stringify(before) === JSON.stringify(after)) return [];
  const gone = without(before, after);
  const added = without(after, before);
  if (gone.length === 0 && added.length === 0) {
    return [
      `${name}: the same lines in another order; before:\n${before.join("\n")}\nafter:\n${after.join("\n")}`,
    ];
  }
  return [
    ...gone.map((l) => `${name}: line gone: ${l}`),
    ...added.map((l) => `${name}: line added: ${l}`),
  ];
}

const show = (v: unknown) => JSON.stringify(v);

/** Every difference between two states, one line each (empty when they are the same). */
export function diffHostState(before: HostState, after: HostState): string[] {
  const out: string[] = [];
  if (show(before.docker0) !== show(after.docker0)) {
    out.push(`docker0: was ${show(before.docker0)}, now ${show(after.docker0)}`);
  }
  const foreign = [...(before.foreignBridges ?? []), ...(after.foreignBridges ?? [])];
  out.push(...tableDiff("iptables -t filter", before.iptables, after.iptables, foreign));
  out.push(...tableDiff("ip6tables -t filter", before.ip6tables, after.ip6tables, foreign));
  if (before.daemonJson !== after.daemonJson) {
    out.push(`${DAEMON_JSON}: was ${show(before.daemonJson)}, now ${show(after.daemonJson)}`);
  }
  // A state saved before this field existed has none: nothing to compare then.
  if (before.nfLogAllNetns !== undefined && before.nfLogAllNetns !== after.nfLogAllNetns) {
    out.push(
      `net.netfilter.nf_log_all_netns: was ${show(before.nfLogAllNetns)}, now ${show(after.nfLogAllNetns)}`,
    );
  }
  if (before.cgroupRoot && show(before.cgroupRoot) !== show(after.cgroupRoot)) {
    out.push(`/sys/fs/cgroup: was ${show(before.cgroupRoot)}, now ${show(after.cgroupRoot)}`);
  }
  return out;
}

if (import.meta.main) {
  const [file] = Deno.args;
  if (!file) {
    console.error("usage: deno run -A tests/support/host_state.ts <file to write the host state to>");
    Deno.exit(2);
  }
  await Deno.writeTextFile(file, JSON.stringify(await captureHostState(), null, 2) + "\n");
}
