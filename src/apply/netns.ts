/** Which network namespace a path is: the host's must never be written. */

function inode(path: string): number | undefined {
  try {
    return Deno.statSync(path).ino ?? undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether a namespace file (`/proc/<pid>/ns/net`, or Docker's bind mount of one) is the host's: the one
 * PID 1 is in, or egresstrator itself (run by systemd, or by containerd as the gate) is in.
 */
export function isHostNetns(path: string): boolean {
  const target = inode(path);
  return target !== undefined &&
    (target === inode("/proc/1/ns/net") || target === inode("/proc/self/ns/net"));
}
