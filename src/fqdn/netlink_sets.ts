/**
 * Set entries written straight into a namespace's ipsets over netlink: the long-lived channel per
 * namespace that keeps an answer's hold short (a process per batch costs ~3-5 ms here; a netlink message
 * tens of microseconds).
 *
 * The socket is made inside the container's namespace by the listener thread (ns_worker.ts), which is in
 * that namespace anyway to open the listeners; a netlink socket talks to the namespace it was made in,
 * whichever thread uses it. Messages are ipset's own `IPSET_CMD_ADD` (what `ipset -exist add <set> <ip>
 * timeout <s>` sends), acknowledged one by one; a failed ack is an error, and the caller falls back to
 * `ipset restore` (sets.ts).
 */
import type { SetEntry } from "./steering.ts";
import { parseAddress } from "../rules/ip.ts";

const NFNL_SUBSYS_IPSET = 6;
const IPSET_CMD_ADD = 9;
const IPSET_PROTOCOL = 7;
const NLM_F_REQUEST = 1, NLM_F_ACK = 4;
const NLMSG_ERROR = 2;
const NLA_F_NESTED = 0x8000, NLA_F_NET_BYTEORDER = 0x4000;
const IPSET_ATTR_PROTOCOL = 1, IPSET_ATTR_SETNAME = 2, IPSET_ATTR_DATA = 7;
const IPSET_ATTR_IP = 1, IPSET_ATTR_TIMEOUT = 6;
const IPSET_ATTR_IPADDR_IPV4 = 1, IPSET_ATTR_IPADDR_IPV6 = 2;
const NFPROTO_IPV4 = 2, NFPROTO_IPV6 = 10;

function align4(n: number) {
  return (n + 3) & ~3;
}

/** One netlink attribute (header, payload, padding). */
function attr(type: number, payload: Uint8Array): Uint8Array {
  const len = 4 + payload.length;
  const out = new Uint8Array(align4(len));
  const v = new DataView(out.buffer);
  v.setUint16(0, len, true);
  v.setUint16(2, type, true);
  out.set(payload, 4);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) out.set(p, o), o += p.length;
  return out;
}

const be32 = (n: number) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, false);
  return b;
};

/** The `IPSET_CMD_ADD` message for one entry (no NLM_F_EXCL: an existing entry gets the new timeout). */
export function addMessage(seq: number, e: SetEntry): Uint8Array {
  const a = parseAddress(e.address);
  if (!a) throw new Error(`not an address: ${e.address}`);
  const name = new TextEncoder().encode(e.set + "\0");
  const ip = attr(
    IPSET_ATTR_IP | NLA_F_NESTED,
    attr(
      (a.family === "ipv4" ? IPSET_ATTR_IPADDR_IPV4 : IPSET_ATTR_IPADDR_IPV6) | NLA_F_NET_BYTEORDER,
      a.bytes,
    ),
  );
  const timeout = attr(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, be32(Math.max(1, Math.ceil(e.timeout))));
  const body = concat([
    attr(IPSET_ATTR_PROTOCOL, new Uint8Array([IPSET_PROTOCOL])),
    attr(IPSET_ATTR_SETNAME, name),
    attr(IPSET_ATTR_DATA | NLA_F_NESTED, concat([ip, timeout])),
  ]);
  const len = 16 + 4 + body.length;
  const out = new Uint8Array(len);
  const v = new DataView(out.buffer);
  v.setUint32(0, len, true);
  v.setUint16(4, (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_ADD, true);
  v.setUint16(6, NLM_F_REQUEST | NLM_F_ACK, true);
  v.setUint32(8, seq, true);
  v.setUint32(12, 0, true);
  out[16] = a.family === "ipv4" ? NFPROTO_IPV4 : NFPROTO_IPV6;
  out[17] = 0; // NFNETLINK_V0
  out.set(body, 20);
  return out;
}

/** The acks in a buffer: sequence number -> errno (0 for success). */
export function readAcks(buf: Uint8Array, n: number): Map<number, number> {
  const v = new DataView(buf.buffer, buf.byteOffset, n);
  const out = new Map<number, number>();
  let o = 0;
  while (o + 16 <= n) {
    const len = v.getUint32(o, true);
    if (len < 16 || o + len > n) break;
    if (v.getUint16(o + 4, true) === NLMSG_ERROR && len >= 20) {
      out.set(v.getUint32(o + 8, true), -v.getInt32(o + 16, true) || 0);
    }
    o += align4(len);
  }
  return out;
}

/** The kernel refused an entry (no such set, a full set): the channel itself is fine. */
export class EntryRefused extends Error {}

const lib = () =>
  Deno.dlopen("libc.so.6", {
    send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
    recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize", nonblocking: true },
    close: { parameters: ["i32"], result: "i32" },
  });
let libc: ReturnType<typeof lib> | undefined;

/** One namespace's ipset netlink socket (an fd the listener thread made there). */
export class NetlinkSets {
  private seq = 1;
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;
  constructor(private readonly fd: number) {
    libc ??= lib();
  }

  /** Add the entries; rejects naming the first refused one. One batch at a time on this socket. */
  add(entries: SetEntry[]): Promise<void> {
    const run = this.chain.then(() => this.send(entries));
    this.chain = run.catch(() => {});
    return run;
  }

  private async send(entries: SetEntry[]): Promise<void> {
    if (this.closed) throw new Error("netlink socket closed");
    const seqs = entries.map(() => this.seq++);
    const msg = concat(entries.map((e, i) => addMessage(seqs[i], e)));
    const sent = Number(libc!.symbols.send(this.fd, msg, BigInt(msg.length), 0));
    if (sent !== msg.length) throw new Error(`netlink send failed (${sent})`);
    const want = new Set(seqs);
    const buf = new Uint8Array(65536);
    while (want.size > 0) {
      // The socket has a receive timeout (set where it was made): a lost ack cannot hang this.
      const n = Number(await libc!.symbols.recv(this.fd, buf, BigInt(buf.length), 0));
      if (n <= 0) throw new Error(`netlink: no ack (${n})`);
      for (const [seq, errno] of readAcks(buf, n)) {
        if (!want.delete(seq)) continue;
        if (errno !== 0) {
          const e = entries[seqs.indexOf(seq)];
          throw new EntryRefused(`ipset refused ${e.address} for ${e.set} (errno ${errno})`);
        }
      }
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    // After anything still in flight.
    this.chain.finally(() => libc!.symbols.close(this.fd));
  }
}
