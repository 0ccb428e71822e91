/** The risky capabilities a running container really holds: its init's bounding set, else its HostConfig. */
import type { ContainerInfo } from "../docker/types.ts";
import { capsFromHostConfig, capsFromProcStatus, type RiskyCap } from "../rules/isolation.ts";

/**
 * /proc/<pid>/status is the truth (the runtime gate may have dropped NET_RAW, which the HostConfig does
 * not show); it is readable when egresstrator shares the host's PID namespace, as nsenter mode does.
 */
export async function heldCaps(
  info: Pick<ContainerInfo, "pid" | "capAdd" | "capDrop" | "privileged">,
  read: (path: string) => Promise<string> = (p) => Deno.readTextFile(p),
): Promise<RiskyCap[]> {
  if (info.pid > 0) {
    const status = await read(`/proc/${info.pid}/status`).catch(() => "");
    const caps = capsFromProcStatus(status);
    if (caps) return caps;
  }
  return capsFromHostConfig(info);
}
