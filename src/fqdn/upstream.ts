/**
 * Asking an upstream resolver one question from the daemon (the host's network namespace), over UDP or
 * TCP. The query goes out as given and the answer comes back byte for byte: reading it is answers.ts's
 * job. Each query has a socket of its own, closed whatever happens.
 *
 * Only a reply that is a response (QR set) with the query's id is taken; over UDP it must also come from
 * the server's own address and port. Anything else is dropped and the wait goes on, so a stray or forged
 * datagram cannot end the query early.
 */
import dgram from "node:dgram";
import net from "node:net";
import { Buffer } from "node:buffer";
import { formatAddress, parseAddress } from "../rules/ip.ts";

/** An upstream resolver. */
export interface DnsServer {
  /** An IPv4 or IPv6 address (no host names: resolving one would need DNS). */
  address: string;
  /** Port; 53 when left out. */
  port?: number;
}

const DNS_PORT = 53;
const HEADER = 12;
const MAX_TCP_MESSAGE = 0xffff;

interface Target {
  family: "ipv4" | "ipv6";
  /** Canonical address text, as compared with a datagram's source. */
  address: string;
  port: number;
  /** `udp 192.0.2.1:53`, `tcp [2001:db8::1]:53`: for error messages. */
  label: string;
}

function target(server: DnsServer, proto: "udp" | "tcp"): Target {
  const parsed = parseAddress(server.address);
  if (!parsed) throw new Error(`DNS server "${server.address}" is not an IPv4 or IPv6 address`);
  const port = server.port ?? DNS_PORT;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`DNS server ${server.address}: port ${port} is not from 1 to 65535`);
  }
  const address = formatAddress(parsed.family, parsed.bytes);
  const host = parsed.family === "ipv6" ? `[${address}]` : address;
  return { family: parsed.family, address, port, label: `${proto} ${host}:${port}` };
}

function canonical(text: string): string | undefined {
  const parsed = parseAddress(text);
  return parsed ? formatAddress(parsed.family, parsed.bytes) : undefined;
}

/** A response (QR set) carrying `id`. */
function answers(reply: Uint8Array, id: number): boolean {
  return reply.length >= HEADER && ((reply[0] << 8) | reply[1]) === id && (reply[2] & 0x80) !== 0;
}

/**
 * Run `start` until it calls `done`, the timeout passes or `signal` aborts. `start` hands its socket's
 * closer to `own` first thing; it runs exactly once in every case (also when `start` throws), before the
 * promise settles.
 */
function settle(
  t: Target,
  msg: Uint8Array,
  opts: { timeoutMs: number; signal?: AbortSignal },
  start: (done: (err: Error | null, reply?: Uint8Array) => void, own: (close: () => void) => void) => void,
): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    if (msg.length < HEADER) {
      return reject(new Error(`DNS query to ${t.label}: ${msg.length} bytes is shorter than a DNS header`));
    }
    if (opts.signal?.aborted) {
      return reject(new Error(`DNS query to ${t.label}: cancelled`, { cause: opts.signal.reason }));
    }
    let close: (() => void) | undefined;
    let finished = false;
    const shut = () => {
      try {
        close?.();
      } catch { /* already closed */ }
      close = undefined;
    };
    const done = (err: Error | null, reply?: Uint8Array) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
      shut();
      if (err) reject(err);
      else resolve(reply!);
    };
    const own = (c: () => void) => {
      close = c;
      if (finished) shut();
    };
    const onAbort = () =>
      done(new Error(`DNS query to ${t.label}: cancelled`, { cause: opts.signal?.reason }));
    const timer = setTimeout(
      () => done(new Error(`DNS query to ${t.label}: no answer within ${opts.timeoutMs} ms`)),
      opts.timeoutMs,
    );
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      start(done, own);
    } catch (err) {
      done(new Error(`DNS query to ${t.label}: ${err instanceof Error ? err.message : err}`, { cause: err }));
    }
  });
}

/**
 * Send `msg` to `server` over UDP from a fresh socket (udp4 or udp6 by the server's address) and resolve
 * with the first datagram from the server's address and port that is a response with the query's id,
 * unchanged. Rejects, naming the server, on timeout, cancel or a socket error.
 */
export function queryUdp(
  server: DnsServer,
  msg: Uint8Array,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<Uint8Array> {
  let t: Target;
  try {
    t = target(server, "udp");
  } catch (err) {
    return Promise.reject(err);
  }
  const id = msg.length >= 2 ? (msg[0] << 8) | msg[1] : -1;
  return settle(t, msg, { timeoutMs, signal }, (done, own) => {
    const socket = dgram.createSocket(t.family === "ipv4" ? "udp4" : "udp6");
    own(() => socket.close());
    socket.on("error", (err) => done(new Error(`DNS query to ${t.label}: ${err.message}`, { cause: err })));
    socket.on("message", (reply, from) => {
      if (from.port !== t.port || canonical(from.address) !== t.address || !answers(reply, id)) return;
      done(null, new Uint8Array(reply)); // a copy: the receive buffer may be reused
    });
    socket.send(msg, t.port, t.address, (err) => {
      if (err) done(new Error(`DNS query to ${t.label}: send failed: ${err.message}`, { cause: err }));
    });
  });
}

/**
 * Send `msg` to `server` over TCP (one connection per query, 2-byte big-endian length in front of each
 * message) and resolve with the first framed reply that is a response with the query's id, unchanged
 * (without its length prefix). Rejects, naming the server, on timeout, cancel, a refused or dropped
 * connection, or a query longer than 65535 bytes.
 */
export function queryTcp(
  server: DnsServer,
  msg: Uint8Array,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<Uint8Array> {
  let t: Target;
  try {
    t = target(server, "tcp");
  } catch (err) {
    return Promise.reject(err);
  }
  if (msg.length > MAX_TCP_MESSAGE) {
    return Promise.reject(new Error(`DNS query to ${t.label}: ${msg.length} bytes is longer than 65535`));
  }
  const id = msg.length >= 2 ? (msg[0] << 8) | msg[1] : -1;
  return settle(t, msg, { timeoutMs, signal }, (done, own) => {
    const socket = net.connect({ host: t.address, port: t.port });
    own(() => socket.destroy());
    let pending = Buffer.alloc(0);
    socket.on("connect", () => {
      const frame = Buffer.alloc(2 + msg.length);
      frame.writeUInt16BE(msg.length, 0);
      frame.set(msg, 2);
      socket.write(frame);
    });
    socket.on("data", (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
        const len = pending.readUInt16BE(0);
        const reply = new Uint8Array(pending.subarray(2, 2 + len)); // a copy of just this message
        pending = pending.subarray(2 + len);
        if (answers(reply, id)) return done(null, reply);
      }
    });
    socket.on("error", (err) => done(new Error(`DNS query to ${t.label}: ${err.message}`, { cause: err })));
    socket.on("close", () => done(new Error(`DNS query to ${t.label}: connection closed before an answer`)));
  });
}
