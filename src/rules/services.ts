/** Resolving `<tag>.<service>@<dc>` rules to catalog instances (the I/O half; the plan stays pure). */
import type { ServiceRule } from "./grammar.ts";
import { describeError } from "../errors.ts";

/** One catalog instance as the plan needs it. */
export interface ServiceInstance {
  node: string;
  /** Service address, else the node's address (may be a hostname: the plan rejects those). */
  address: string;
  port: number;
}

/** What a lookup gave: instances, or why there are none. */
export type ServiceLookup = { ok: true; instances: ServiceInstance[] } | { ok: false; error: string };

/** The catalog call this module needs (ConsulClient has it). */
export interface CatalogReader {
  catalogService(name: string, q?: { tag?: string; datacenter?: string; signal?: AbortSignal }): Promise<{
    data: { node: string; address: string; serviceAddress: string; servicePort: number }[];
    index: number;
  }>;
}

/** Canonical id of a service query: `tag.service@dc`. Rules with the same id share one lookup. */
export function serviceKey(r: Pick<ServiceRule, "service" | "tag" | "datacenter">): string {
  return `${r.tag ? r.tag + "." : ""}${r.service}${r.datacenter ? "@" + r.datacenter : ""}`;
}

/** Map catalog entries to instances (pure). */
export function toInstances(
  data: { node: string; address: string; serviceAddress: string; servicePort: number }[],
) {
  return data.map((e) => ({ node: e.node, address: e.serviceAddress || e.address, port: e.servicePort }));
}

/** Look up every distinct service once, in parallel. Failures are recorded, not thrown. */
export async function resolveServices(
  catalog: CatalogReader,
  rules: ServiceRule[],
  signal?: AbortSignal,
): Promise<Map<string, ServiceLookup>> {
  const distinct = new Map<string, ServiceRule>();
  for (const r of rules) distinct.set(serviceKey(r), r);
  const out = new Map<string, ServiceLookup>();
  await Promise.all([...distinct].map(async ([key, r]) => {
    try {
      const res = await catalog.catalogService(r.service, { tag: r.tag, datacenter: r.datacenter, signal });
      out.set(key, { ok: true, instances: toInstances(res.data) });
    } catch (err) {
      signal?.throwIfAborted();
      out.set(key, { ok: false, error: describeError(err) });
    }
  }));
  return out;
}
