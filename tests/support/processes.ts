/** Processes on this host, as a tree: what a private dockerd or Podman leaves behind once it is gone. */

/**
 * Processes whose program name matches `program` and whose command line names something under `dir`,
 * plus all their descendants (never this process).
 */
export function processTree(program: RegExp, dir: string): number[] {
  const parent = new Map<number, number>();
  const out = new Set<number>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const pid = Number(e.name);
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
      parent.set(pid, Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
      const argv = Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0");
      if (program.test(argv[0] ?? "") && argv.some((a) => a.includes(`${dir}/`))) out.add(pid);
    } catch { /* gone meanwhile */ }
  }
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, ppid] of parent) {
      if (!out.has(pid) && out.has(ppid)) (out.add(pid), grew = true);
    }
  }
  out.delete(Deno.pid);
  return [...out];
}
