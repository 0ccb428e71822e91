/**
 * What a private Podman can leave on the host once its store is gone, for tests/support/podman.ts to clean
 * up: its conmon processes (and what runs under them) and the cgroups it made under libpod_parent.
 */

const CGROUP_PARENT = "libpod_parent";

/** conmon processes whose command line names `dir` (this store's), and their descendants. */
export function processesOf(dir: string): number[] {
  const parent = new Map<number, number>();
  const out = new Set<number>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const pid = Number(e.name);
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
      parent.set(pid, Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
      const argv = Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0");
      if (/(^|\/)conmon$/.test(argv[0] ?? "") && argv.some((a) => a.includes(`${dir}/`))) out.add(pid);
    } catch { /* gone meanwhile */ }
  }
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, ppid] of parent) {
      if (!out.has(pid) && out.has(ppid)) (out.add(pid), grew = true);
    }
  }
  return [...out];
}

/** Directories under every hierarchy's libpod_parent (Podman's cgroupfs parent), deepest first. */
export function podmanCgroups(): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(dir)];
    } catch {
      return;
    }
    for (const e of entries) if (e.isDirectory) walk(`${dir}/${e.name}`);
    out.push(dir);
  };
  for (const h of Deno.readDirSync("/sys/fs/cgroup")) {
    if (h.isDirectory || h.isSymlink) walk(`/sys/fs/cgroup/${h.name}/${CGROUP_PARENT}`);
  }
  return out;
}
