/**
 * What the DNS forwarder reads from the messages it relays (pure): the question a container asked, the
 * addresses an answer gives for it, and the SERVFAIL it sends back when no answer comes. Nothing here
 * throws: a message that cannot be read gives null.
 *
 * dns-packet decodes names, types and records, after a small walk of our own over the raw bytes, because
 * dns-packet alone would
 * - read an A or AAAA record's 4 or 16 bytes whatever its RDLENGTH says, so a malformed record silently
 *   shifts every record after it (we refuse such a message);
 * - join labels with "." after decoding them as UTF-8, so the one label `api.stripe` followed by `com`
 *   would read as `api.stripe.com` (the question name is read here, and only plain labels are accepted);
 * - fail the whole message on an odd record in the authority or additional sections, which are never
 *   used (they are cut off before decoding).
 * IPv6 text is re-formatted with src/rules/ip.ts: dns-packet's (@leichtgewicht/ip-codec) compresses the
 * first run of zero groups, not the longest one as RFC 5952 says.
 */
// @ts-types="@types/dns-packet"
import * as packet from "dns-packet";
import { Buffer } from "node:buffer";
import { formatAddress, parseIPv6 } from "../rules/ip.ts";
import { canonicalName } from "./names.ts";

/** The question of a standard query. */
export interface DnsQuery {
  id: number;
  /** ASCII lower-cased, no trailing dot (`""` for the root). */
  qname: string;
  /** `A`, `AAAA`, ... as dns-packet names types (`UNKNOWN_<n>` for others). */
  qtype: string;
}

/** An address an answer gives for the question name, directly or through its CNAME chain. */
export interface AnsweredAddress {
  family: "ipv4" | "ipv6";
  /** Canonical text: dotted quad, or RFC 5952 IPv6. */
  address: string;
  /** Seconds: the record's TTL, lowered to the smallest TTL of the CNAME records that led to it. */
  ttl: number;
}

/** What an answer says about its question. */
export interface DnsAnswer extends DnsQuery {
  /** `NOERROR`, `NXDOMAIN`, `SERVFAIL`, ... (the header's 4 bits; `RCODE_<n>` past 10). */
  rcode: string;
  /** The TC bit: the answer did not fit and the client should ask again over TCP. */
  truncated: boolean;
  /** One entry per address (the longest TTL kept when an address comes twice), in answer order. */
  addresses: AnsweredAddress[];
  /** The CNAME chain's names after the question name, in order (at most {@link MAX_CNAME_HOPS}). */
  cnames: string[];
}

/** Longest CNAME chain followed from the question name. */
export const MAX_CNAME_HOPS = 16;

const HEADER = 12;
const TYPE_A = 1;
const TYPE_AAAA = 28;
/** A label of printable ASCII without ".": what a name we match against rules may be made of. */
const PLAIN = /^[\x21-\x2d\x2f-\x7e]+$/;

interface Header {
  id: number;
  qr: boolean;
  opcode: number;
  tc: boolean;
  qdcount: number;
  ancount: number;
}

interface RawQuestion {
  /** Canonical name, or null when a label is not {@link PLAIN}. */
  name: string | null;
  /** Offset just past the question (name, type, class). */
  end: number;
}

const u16 = (buf: Uint8Array, at: number) => (buf[at] << 8) | buf[at + 1];

function readHeader(msg: Uint8Array): Header | null {
  if (!(msg instanceof Uint8Array) || msg.length < HEADER) return null;
  return {
    id: u16(msg, 0),
    qr: (msg[2] & 0x80) !== 0,
    opcode: (msg[2] >> 3) & 0x0f,
    tc: (msg[2] & 0x02) !== 0,
    qdcount: u16(msg, 4),
    ancount: u16(msg, 6),
  };
}

/** The first question, read from the bytes. Nothing precedes it, so a compression pointer there is refused. */
function readQuestion(msg: Uint8Array): RawQuestion | null {
  const labels: string[] = [];
  let at = HEADER;
  let plain = true;
  for (;;) {
    if (at >= msg.length) return null;
    const len = msg[at];
    if (len === 0) break;
    if (len > 63 || at + 1 + len > msg.length) return null;
    const label = String.fromCharCode(...msg.subarray(at + 1, at + 1 + len));
    plain &&= PLAIN.test(label);
    labels.push(label);
    at += 1 + len;
  }
  if (at + 1 - HEADER > 255 || at + 5 > msg.length) return null;
  return { name: plain ? canonicalName(labels.join(".")) : null, end: at + 5 };
}

/** Offset just past the (possibly compressed) name at `at`, or -1. */
function skipName(msg: Uint8Array, at: number): number {
  for (let o = at; o < msg.length;) {
    const len = msg[o];
    if (len === 0) return o + 1;
    if ((len & 0xc0) === 0xc0) return o + 2 <= msg.length ? o + 2 : -1;
    if (len > 63) return -1;
    o += 1 + len;
  }
  return -1;
}

/**
 * The answer records that are whole: how many and where the last one ends. Null when one is malformed
 * (an A or AAAA whose RDLENGTH is not 4 or 16). Stops early when the message ends mid-record.
 */
function wholeAnswers(msg: Uint8Array, from: number, count: number): { count: number; end: number } | null {
  let at = from;
  for (let n = 0; n < count; n++) {
    const nameEnd = skipName(msg, at);
    if (nameEnd < 0 || nameEnd + 10 > msg.length) return { count: n, end: at };
    const type = u16(msg, nameEnd);
    const rdlength = u16(msg, nameEnd + 8);
    if ((type === TYPE_A && rdlength !== 4) || (type === TYPE_AAAA && rdlength !== 16)) return null;
    const end = nameEnd + 10 + rdlength;
    if (end > msg.length) return { count: n, end: at };
    at = end;
  }
  return { count, end: at };
}

/** dns-packet's view of the header, the one question and the first `ancount` answers ending at `end`. */
function decodeUpTo(msg: Uint8Array, end: number, ancount: number): packet.DecodedPacket | null {
  const copy = Buffer.from(msg.subarray(0, end));
  copy.writeUInt16BE(1, 4);
  copy.writeUInt16BE(ancount, 6);
  copy.writeUInt32BE(0, 8); // no authority, no additional records
  try {
    return packet.decode(copy);
  } catch {
    return null;
  }
}

/**
 * The question of a standard query (QR 0, opcode QUERY, exactly one question whose labels are printable
 * ASCII without dots). Null for anything else, garbage included; never throws.
 */
export function readQuery(msg: Uint8Array): DnsQuery | null {
  const head = readHeader(msg);
  if (!head || head.qr || head.opcode !== 0 || head.qdcount !== 1) return null;
  const q = readQuestion(msg);
  if (!q || q.name === null) return null;
  const decoded = decodeUpTo(msg, q.end, 0);
  if (!decoded?.questions?.[0]) return null;
  return { id: head.id, qname: q.name, qtype: decoded.questions[0].type };
}

type Rr = packet.Answer & { ttl?: number; class?: string; data?: unknown };

/** The question name and the names its CNAME chain reaches, each with the smallest CNAME TTL on the way. */
function followChain(qname: string, records: Rr[]): Map<string, number> {
  const reached = new Map([[qname, Infinity]]);
  let current = qname;
  let cap = Infinity;
  for (let hop = 0; hop < MAX_CNAME_HOPS; hop++) {
    const link = records.find((r) =>
      r.type === "CNAME" && r.class === "IN" && canonicalName(r.name) === current &&
      typeof r.data === "string"
    );
    if (!link) break;
    const target = canonicalName(link.data as string);
    // A loop ends the chain; so does a target we would not match rules against.
    if (reached.has(target) || !target.split(".").every((l) => PLAIN.test(l))) break;
    cap = Math.min(cap, link.ttl ?? 0);
    reached.set(target, cap);
    current = target;
  }
  return reached;
}

function addressOf(r: Rr): { family: "ipv4" | "ipv6"; address: string } | null {
  if (typeof r.data !== "string") return null;
  if (r.type === "A") return { family: "ipv4", address: r.data };
  const bytes = parseIPv6(r.data);
  return bytes ? { family: "ipv6", address: formatAddress("ipv6", bytes) } : null;
}

function chainAddresses(records: Rr[], reached: Map<string, number>): AnsweredAddress[] {
  const byAddress = new Map<string, AnsweredAddress>();
  for (const r of records) {
    if ((r.type !== "A" && r.type !== "AAAA") || r.class !== "IN") continue;
    const cap = reached.get(canonicalName(r.name));
    if (cap === undefined) continue;
    const found = addressOf(r);
    if (!found) continue;
    const ttl = Math.min(r.ttl ?? 0, cap);
    const seen = byAddress.get(found.address);
    if (!seen) byAddress.set(found.address, { ...found, ttl });
    else seen.ttl = Math.max(seen.ttl, ttl);
  }
  return [...byAddress.values()];
}

/**
 * What a response says about its one question: rcode, the TC bit, and the IN-class A/AAAA records of the
 * answer section whose owner is the question name or a name its CNAME chain reaches (followed
 * case-insensitively, at most {@link MAX_CNAME_HOPS} hops, a loop ends it). Other records are ignored: a
 * resolver may add unrelated ones. A truncated (TC) answer gives the records that arrived whole. Null for
 * anything that is not a readable response to one plain question; never throws.
 */
export function readAnswer(msg: Uint8Array): DnsAnswer | null {
  const head = readHeader(msg);
  if (!head || !head.qr || head.qdcount !== 1) return null;
  const q = readQuestion(msg);
  if (!q || q.name === null) return null;
  const whole = wholeAnswers(msg, q.end, head.ancount);
  if (!whole || (whole.count < head.ancount && !head.tc)) return null;
  const decoded = decodeUpTo(msg, whole.end, whole.count);
  if (!decoded?.questions?.[0]) return null;
  const records = (decoded.answers ?? []) as Rr[];
  const reached = followChain(q.name, records);
  return {
    id: head.id,
    qname: q.name,
    qtype: decoded.questions[0].type,
    // Decoded at run time, missing from @types/dns-packet's DecodedPacket.
    rcode: (decoded as { rcode?: string }).rcode ?? `RCODE_${msg[3] & 0x0f}`,
    truncated: head.tc,
    addresses: chainAddresses(records, reached),
    cnames: [...reached.keys()].slice(1),
  };
}

/**
 * A SERVFAIL response to `query`: its id, opcode and first question byte for byte (so a client checking
 * the question's letter case still accepts it), RD and CD copied, QR and RA set, no records. Null when the
 * query's header or first question cannot be read, or it is a response itself.
 */
export function servfail(query: Uint8Array): Uint8Array | null {
  const head = readHeader(query);
  if (!head || head.qr || head.qdcount < 1) return null;
  const q = readQuestion(query);
  if (!q) return null;
  const out = new Uint8Array(query.subarray(0, q.end)); // a copy, also when `query` is a Buffer
  out[2] = 0x80 | (query[2] & 0x79); // QR; opcode and RD kept; AA and TC cleared
  out[3] = 0x80 | (query[3] & 0x10) | 2; // RA; CD kept; rcode SERVFAIL
  out.set([0, 1, 0, 0, 0, 0, 0, 0], 4);
  return out;
}

/**
 * A copy of `msg` with its id replaced. The forwarder can ask upstream under an id of its own (a container
 * knows the id it chose, which would help it forge an answer) and give the answer back under the
 * container's id. Null when `msg` is shorter than a DNS header.
 */
export function withId(msg: Uint8Array, id: number): Uint8Array | null {
  if (msg.length < HEADER) return null;
  const out = new Uint8Array(msg); // a copy (Buffer#slice would be a view)
  out[0] = (id >> 8) & 0xff;
  out[1] = id & 0xff;
  return out;
}
