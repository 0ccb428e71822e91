/**
 * What a private Podman can leave on the host once its store is gone, for tests/support/podman.ts to clean
 * up: its conmon processes (and what runs under them) and the cgroups it made under libpod_parent.
 */

import { processTree } from "./processes.ts";

const CGROUP_PARENT = "libpod_parent";

/** conmon processes whose command line names `dir` (this store's), and their descendants. */
export function processesOf(dir: string): number[] {
  return processTree(/(^|\/)conmon$/, dir);
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
