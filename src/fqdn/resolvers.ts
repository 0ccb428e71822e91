/** Which resolvers a container's DNS goes to, and so where its steered queries are sent on. */
import { parseAddress } from "../rules/ip.ts";

/** The `nameserver` lines of a resolv.conf, as canonical addresses (scope ids dropped). */
export function nameservers(resolvConf: string): string[] {
  const out: string[] = [];
  for (const line of resolvConf.split("\n")) {
    const m = /^\s*nameserver\s+([0-9a-fA-F:.]+)(%\S+)?\s*$/.exec(line);
    if (m && parseAddress(m[1])) out.push(m[1].toLowerCase());
  }
  return out;
}

const isLoopback = (a: string) => a.startsWith("127.") || a === "::1";

/**
 * A container's resolvers, in order: the ones in its own /etc/resolv.conf; when that names Docker's
 * embedded DNS (127.0.0.11), the ones Docker forwards to from inside the namespace (`--dns`, else
 * `fallback`). Loopback addresses are left out (they are not steered). At most 8.
 */
export function containerResolvers(
  resolvConf: string,
  dockerDns: string[] | undefined,
  fallback: string[],
): string[] {
  const own = nameservers(resolvConf);
  const embedded = own.some(isLoopback) || own.length === 0;
  const list = [
    ...own.filter((a) => !isLoopback(a)),
    ...(embedded ? (dockerDns && dockerDns.length ? dockerDns : fallback) : []),
  ].filter((a) => parseAddress(a) && !isLoopback(a));
  return [...new Set(list)].slice(0, 8);
}

/**
 * Read the container's resolv.conf, at most 64 KiB; "" if none. From the host file Docker mounts there
 * when it says which (`hostPath`: the container can change its content, never what it is); else through
 * the container's root (`/proc/<pid>/root`), where the container could have put a FIFO or a symlink to
 * one in its place: only a regular file is read, and not for more than a second.
 */
export async function readContainerResolvConf(pid: number, hostPath?: string): Promise<string> {
  const path = hostPath?.startsWith("/") ? hostPath : `/proc/${pid}/root/etc/resolv.conf`;
  try {
    if (!(await Deno.stat(path)).isFile) return "";
  } catch {
    return "";
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  return await Promise.race([
    readSmall(path),
    new Promise<string>((r) => timer = setTimeout(() => r(""), 1000)),
  ]).finally(() => clearTimeout(timer));
}

async function readSmall(path: string): Promise<string> {
  try {
    const f = await Deno.open(path);
    try {
      const buf = new Uint8Array(65536);
      const n = await f.read(buf);
      return new TextDecoder().decode(buf.subarray(0, n ?? 0));
    } finally {
      f.close();
    }
  } catch {
    return "";
  }
}

/**
 * The host's resolvers (its /etc/resolv.conf), loopback ones left out; on a host whose resolv.conf names
 * only a local stub (systemd-resolved's 127.0.0.53), the stub's upstreams, as Docker takes them.
 */
export function hostResolvers(): string[] {
  const read = (path: string) => {
    try {
      return nameservers(Deno.readTextFileSync(path)).filter((a) => !isLoopback(a));
    } catch {
      return [];
    }
  };
  const own = read("/etc/resolv.conf");
  return own.length ? own : read("/run/systemd/resolve/resolv.conf");
}
