/**
 * Labelled test bridge networks: with given subnets on the main dockerd, or with free ones on any dockerd
 * (the host's addresses and routes are read first, so a test network never overlaps what the host uses).
 * removeAllTestObjects and the private dockerd's stop() remove them.
 */
import type { DockerClient } from "../../src/docker/client.ts";
import { RUN_ID, TEST_LABEL, withDocker } from "./docker.ts";

/** The `POST /networks/create` body of a labelled test bridge network (shared by every test dockerd helper). */
export function networkBody(
  name: string,
  opts: { subnets: string[]; ipv6?: boolean; bridge?: string; runId?: string },
): Record<string, unknown> {
  return {
    Name: name,
    Driver: "bridge",
    CheckDuplicate: true,
    EnableIPv6: opts.ipv6 === true,
    IPAM: { Driver: "default", Config: opts.subnets.map((Subnet) => ({ Subnet })) },
    ...(opts.bridge ? { Options: { "com.docker.network.bridge.name": opts.bridge } } : {}),
    Labels: { [TEST_LABEL]: opts.runId ?? RUN_ID },
  };
}

/** Create a labelled bridge network on the main dockerd; its id. With `ipv6`, give `subnet6` too (Docker wants one). */
export async function createNetwork(
  name: string,
  opts: { ipv6?: boolean; subnet?: string; subnet6?: string; runId?: string } = {},
): Promise<string> {
  const subnets = [opts.subnet, opts.subnet6].filter((s): s is string => !!s);
  return await withDocker(undefined, async (c) => {
    const { Id } = await c.rawJson<{ Id: string }>({
      what: `create test network ${name}`,
      method: "POST",
      path: "/networks/create",
      body: networkBody(name, { subnets, ipv6: opts.ipv6, runId: opts.runId }),
    });
    return Id;
  });
}

/**
 * The `n` of every `10.<second>.n.x` IPv4 and `fd00:e6e5:n::` IPv6 address or route on this host: the
 * subnets test networks must not take.
 */
export async function usedOctets(second: number): Promise<Set<number>> {
  let text = "";
  for (const args of [["-4", "route", "show"], ["-4", "-o", "addr", "show"], ["-6", "route", "show"]]) {
    const out = await new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).output();
    if (!out.success) throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
    text += new TextDecoder().decode(out.stdout);
  }
  const used = new Set<number>();
  const re = new RegExp(`\\b10\\.${second}\\.(\\d{1,3})\\.|fd00:e6e5:([0-9a-f]{1,4})::`, "g");
  for (const m of text.matchAll(re)) used.add(m[1] ? Number(m[1]) : parseInt(m[2], 16));
  return used;
}

/** A random `n` in 2..251 not in `used`. */
export function freeOctet(used: Set<number>): number {
  const free = Array.from({ length: 250 }, (_, i) => i + 2).filter((n) => !used.has(n));
  return free[Math.floor(Math.random() * free.length)];
}

/** A test network with subnets picked by {@link createFreeNetwork}. */
export interface FreeNetwork {
  id: string;
  name: string;
  /** `10.<second>.<n>.0/24` */
  subnet4: string;
  /** `fd00:e6e5:<n>::/64`, with `ipv6` only. */
  subnet6?: string;
}

/**
 * A labelled bridge network on `c`'s dockerd with subnets no host address or route uses yet:
 * `10.<second>.<n>.0/24`, and with `ipv6` also `fd00:e6e5:<n>::/64` (EnableIPv6 on a user-defined network
 * needs no daemon option). Docker's overlap error is retried with another `n`, 8 times at most.
 */
export async function createFreeNetwork(
  c: DockerClient,
  opts: { name: string; second: number; ipv6?: boolean; bridge?: string },
): Promise<FreeNetwork> {
  const { name, second } = opts;
  let last = "";
  for (let attempt = 0; attempt < 8; attempt++) {
    const n = freeOctet(await usedOctets(second));
    const subnet4 = `10.${second}.${n}.0/24`;
    const subnet6 = opts.ipv6 ? `fd00:e6e5:${n.toString(16)}::/64` : undefined;
    const res = await c.raw({
      what: `create network ${name}`,
      method: "POST",
      path: "/networks/create",
      body: networkBody(name, {
        subnets: subnet6 ? [subnet4, subnet6] : [subnet4],
        ipv6: opts.ipv6,
        bridge: opts.bridge,
      }),
      allow: [400, 403, 409],
    });
    const body = await res.json() as { Id?: string; message?: string };
    if (res.ok) return { id: body.Id!, name, subnet4, subnet6 };
    last = body.message ?? `HTTP ${res.status}`;
    if (!/overlap|already/i.test(last)) throw new Error(`create network ${name}: ${last}`);
  }
  throw new Error(`create network ${name}: no free 10.${second}.x.0/24 subnet after 8 tries: ${last}`);
}
