/** DNS queries the daemon makes itself (its own lookups of protected names). */
import dnsPacket from "dns-packet";
import type { Buffer } from "node:buffer";

/** A recursive query for one name and type, with a random id. */
export function encodeQuery(name: string, type: "A" | "AAAA"): Uint8Array {
  const id = crypto.getRandomValues(new Uint16Array(1))[0];
  const buf: Buffer = dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type, name, class: "IN" }],
  });
  return new Uint8Array(buf);
}
