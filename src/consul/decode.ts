/** Consul's JSON answers -> typed values (pure); a wrong shape throws TypeError for the client to report. */

/** One KV entry; value stays raw bytes because callers decide how to treat non-UTF-8. */
export interface KvPair {
  key: string;
  value: Uint8Array | null;
  modifyIndex: number;
  flags: number;
}

/** One instance from /v1/catalog/service/<name>. */
export interface CatalogServiceEntry {
  node: string;
  /** The node's address; use it when serviceAddress is empty. */
  address: string;
  serviceId: string;
  serviceName: string;
  serviceAddress: string;
  servicePort: number;
  serviceTags: string[];
  datacenter?: string;
}

function decodeBase64(text: string): Uint8Array {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function decodeKvPairs(body: unknown): KvPair[] {
  if (body === null) return [];
  if (!Array.isArray(body)) throw new TypeError("expected an array of KV entries");
  return body.map((e): KvPair => {
    if (typeof e?.Key !== "string") throw new TypeError("a KV entry has no Key");
    if (e.Value !== null && e.Value !== undefined && typeof e.Value !== "string") {
      throw new TypeError(`KV entry ${e.Key} has a non-string Value`);
    }
    const value = typeof e.Value === "string" ? decodeBase64(e.Value) : null;
    return { key: e.Key, value, modifyIndex: Number(e.ModifyIndex) || 0, flags: Number(e.Flags) || 0 };
  });
}

export function decodeServiceEntries(body: unknown): CatalogServiceEntry[] {
  if (!Array.isArray(body)) throw new TypeError("expected an array of service instances");
  return body.map((e): CatalogServiceEntry => {
    if (typeof e?.ServiceID !== "string" || typeof e?.Node !== "string") {
      throw new TypeError("a service instance has no Node or ServiceID");
    }
    return {
      node: e.Node,
      address: String(e.Address ?? ""),
      serviceId: e.ServiceID,
      serviceName: String(e.ServiceName ?? ""),
      serviceAddress: String(e.ServiceAddress ?? ""),
      servicePort: Number(e.ServicePort) || 0,
      serviceTags: Array.isArray(e.ServiceTags) ? e.ServiceTags.map(String) : [],
      datacenter: typeof e.Datacenter === "string" ? e.Datacenter : undefined,
    };
  });
}
