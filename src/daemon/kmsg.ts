/**
 * The kernel log as the deny log reads it: one `/dev/kmsg` reader (records `PRI,SEQ,USEC,FLAGS;MESSAGE`),
 * and a strict parser for the lines our LOG rules write (`egt:<id12>:<tag>:<D|A> IN= OUT=eth0 SRC=...
 * DST=... PROTO=TCP SPT=... DPT=...`). Every other namespace's LOG rules write here too, and a container
 * holding NET_ADMIN can write lines of its own: nothing is taken from a line but our prefix's hex, an
 * address that parses as one, a protocol name and a port number.
 */
import type { Logger } from "../log.ts";
import { parsePrefix } from "../render/deny_log.ts";
import { formatAddress, parseAddress } from "../rules/ip.ts";
import type { Family } from "../rules/grammar.ts";
import { describeError } from "../errors.ts";
import { abortableSleep } from "../util/async.ts";

/** The longest record looked at; the kernel's own are under 1 KiB. */
export const MAX_RECORD = 4096;

/** One `/dev/kmsg` record: sequence number, microseconds since boot, and the message's first line. */
export interface KmsgRecord {
  seq: number;
  usec: number;
  message: string;
}

/** Parse one record; undefined for anything that is not `PRI,SEQ,USEC,FLAGS[,...];MESSAGE`. */
export function parseKmsgRecord(raw: string): KmsgRecord | undefined {
  if (raw.length > MAX_RECORD) return undefined;
  const semi = raw.indexOf(";");
  if (semi < 0) return undefined;
  const head = raw.slice(0, semi).split(",");
  if (head.length < 4 || !head.slice(0, 3).every((f) => /^\d{1,20}$/.test(f))) return undefined;
  const nl = raw.indexOf("\n", semi);
  const message = raw.slice(semi + 1, nl < 0 ? undefined : nl);
  return { seq: Number(head[1]), usec: Number(head[2]), message };
}

/** A refused (or audited) NEW connection, as one of our LOG lines reports it. */
export interface DenyEvent {
  /** The container's short id, from our prefix. */
  id12: string;
  /** The label's tag, from our prefix. */
  tag: string;
  audit: boolean;
  family: Family;
  /** Lower case: tcp, udp, icmp, ... */
  proto: string;
  /** The destination, canonical (parsed and printed again). */
  dst: string;
  /** tcp and udp only. */
  dport?: number;
}

/** Parse the message of one of our LOG lines; undefined when it is not ours or not well formed. */
export function parseDenyMessage(message: string): DenyEvent | undefined {
  const prefix = parsePrefix(message);
  if (!prefix) return undefined;
  const fields = new Map<string, string>();
  for (const token of prefix.rest.split(" ")) {
    // An ICMP error quotes the packet it is about in [brackets]: only the outer header counts.
    if (token.startsWith("[")) break;
    const eq = token.indexOf("=");
    if (eq > 0 && !fields.has(token.slice(0, eq))) fields.set(token.slice(0, eq), token.slice(eq + 1));
  }
  const addr = parseAddress(fields.get("DST") ?? "");
  const proto = fields.get("PROTO") ?? "";
  if (!addr || !/^[A-Za-z0-9]{1,12}$/.test(proto)) return undefined;
  const ev: DenyEvent = {
    id12: prefix.id12,
    tag: prefix.tag,
    audit: prefix.audit,
    family: addr.family,
    proto: proto.toLowerCase(),
    dst: formatAddress(addr.family, addr.bytes),
  };
  if (ev.proto === "tcp" || ev.proto === "udp") {
    const dpt = fields.get("DPT") ?? "";
    if (!/^\d{1,5}$/.test(dpt) || Number(dpt) > 65535) return undefined;
    ev.dport = Number(dpt);
  }
  return ev;
}

/** Options of {@link followKmsg}. */
export interface FollowKmsgOptions {
  /** Default /dev/kmsg. */
  path?: string;
  signal: AbortSignal;
  log: Logger;
  /** Called with each record's message, in order; must not throw. */
  onMessage(message: string): void;
  /** Called when records were lost (the ring buffer wrapped before we read them). */
  onLost?(): void;
}

/** Deno refuses /dev and /proc without --allow-all (the compiled binary has --allow-run instead). */
export function isNotCapable(err: unknown): boolean {
  return err instanceof Error && err.name === "NotCapable";
}

/**
 * Read new kernel log records until `signal` aborts (from the end: what was logged before the start is
 * not read again): from `/dev/kmsg` itself, or, where Deno's permissions keep /dev out of reach (the
 * compiled binary), from `dmesg --follow-new`, which reads the same records. Resolves false when the
 * log cannot be read at all, true when stopped.
 */
export async function followKmsg(opts: FollowKmsgOptions): Promise<boolean> {
  const path = opts.path ?? "/dev/kmsg";
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
    await file.seek(0, Deno.SeekMode.End);
  } catch (err) {
    if (isNotCapable(err) && path === "/dev/kmsg") return await followDmesg(opts);
    opts.log.warn("cannot read the kernel log: refused connections are counted but not logged", {
      path,
      error: describeError(err),
    });
    return false;
  }
  // Closing interrupts a read in progress, which is how the loop learns of the abort.
  const close = () => {
    try {
      file.close();
    } catch { /* closed */ }
  };
  opts.signal.addEventListener("abort", close, { once: true });
  const buf = new Uint8Array(8192);
  const dec = new TextDecoder();
  let errors = 0;
  try {
    while (!opts.signal.aborted) {
      let n: number | null;
      try {
        n = await file.read(buf);
      } catch (err) {
        if (opts.signal.aborted) break;
        // EPIPE: records were overwritten before we read them; the next read goes on from the oldest.
        if (err instanceof Deno.errors.BrokenPipe) {
          opts.onLost?.();
          continue;
        }
        if (++errors > 5) throw err;
        await abortableSleep(200 * errors, opts.signal);
        continue;
      }
      if (n === null) break;
      errors = 0;
      const rec = parseKmsgRecord(dec.decode(buf.subarray(0, n)));
      if (rec) opts.onMessage(rec.message);
    }
  } catch (err) {
    opts.log.error("kernel log reader stopped: refused connections are counted but no longer logged", {
      path,
      error: describeError(err),
    });
  } finally {
    opts.signal.removeEventListener("abort", close);
    close();
  }
  return true;
}

/** How often `dmesg` may end before the reader gives up (it is restarted after a second each time). */
const DMESG_RESTARTS = 5;

/**
 * `dmesg --follow-new --notime`: one message per line, only those logged from its start. Its output is as
 * untrusted as the records themselves: lines go to the same strict parser, over-long ones are dropped.
 */
async function followDmesg(opts: FollowKmsgOptions): Promise<boolean> {
  for (let run = 0; run <= DMESG_RESTARTS && !opts.signal.aborted; run++) {
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command("dmesg", {
        args: ["--follow-new", "--notime"],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        signal: opts.signal,
      }).spawn();
    } catch (err) {
      opts.log.warn("cannot read the kernel log: refused connections are counted but not logged", {
        via: "dmesg --follow-new",
        error: describeError(err),
      });
      return false;
    }
    const stderr = new Response(child.stderr).text().catch(() => "");
    let buf = "";
    const dec = new TextDecoder();
    try {
      for await (const chunk of child.stdout) {
        buf += dec.decode(chunk, { stream: true });
        for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.length <= MAX_RECORD) opts.onMessage(line);
        }
        if (buf.length > MAX_RECORD) buf = "";
      }
    } catch { /* killed on abort */ }
    const status = await child.status;
    if (opts.signal.aborted) break;
    opts.log.warn("dmesg --follow-new ended; restarting it", {
      code: status.code,
      error: (await stderr).trim().slice(0, 300),
    });
    await abortableSleep(1000, opts.signal);
  }
  if (!opts.signal.aborted) {
    opts.log.error("kernel log reader stopped: refused connections are counted but no longer logged", {
      via: "dmesg --follow-new",
    });
  }
  return true;
}
