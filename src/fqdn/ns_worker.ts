/**
 * A worker thread that opens DNS listeners inside containers' network namespaces (see listeners.ts).
 *
 * A socket belongs to the network namespace of the thread that creates it, whatever thread uses it
 * afterwards. This worker has a thread of its own: it switches that thread into a container's namespace
 * (setns(2), through FFI), binds UDP and TCP listeners on the namespace's loopback, and switches straight
 * back before doing anything else. The listeners then relay queries to the main thread and answers back.
 * Nothing else runs on this thread, and every open is done start to finish before the next, so no other
 * socket is ever made in a container's namespace.
 */
/// <reference lib="deno.worker" />
import dgram from "node:dgram";
import net from "node:net";

const CLONE_NEWNET = 0x40000000;
const O_RDONLY = 0, O_CLOEXEC = 0x80000;

const libc = Deno.dlopen("libc.so.6", {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  setns: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
});
const AF_NETLINK = 16, SOCK_RAW = 3, SOCK_CLOEXEC = 0x80000, NETLINK_NETFILTER = 12;
const SOL_SOCKET = 1, SO_RCVTIMEO = 20;

/** A netlink socket to this thread's current namespace's netfilter (ipset), or -1; 1 s receive timeout. */
function netlinkSocket(): number {
  const fd = libc.symbols.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) return -1;
  const tv = new BigInt64Array([1n, 0n]); // struct timeval: 1 s
  libc.symbols.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, new Uint8Array(tv.buffer), 16);
  return fd;
}
const cstr = (s: string) => new TextEncoder().encode(s + "\0");
const home = libc.symbols.open(cstr("/proc/thread-self/ns/net"), O_RDONLY | O_CLOEXEC);

/** Messages from the main thread. */
export type ToWorker =
  | { op: "open"; key: string; seq: number; ns: string; count: number }
  /** `seq`: only the group that open made (a late reply's), not a newer one under the same key. */
  | { op: "close"; key: string; seq?: number }
  | { op: "answer"; key: string; req: number; data: Uint8Array | null };

/** Messages to the main thread. */
export type FromWorker =
  | { op: "opened"; key: string; seq: number; ports: number[]; v6: boolean; netlink: number }
  | { op: "failed"; key: string; seq: number; error: string }
  | { op: "query"; key: string; req: number; index: number; tcp: boolean; data: Uint8Array };

interface Group {
  seq: number;
  udp: dgram.Socket[];
  tcp: net.Server[];
  conns: Set<net.Socket>;
}

const groups = new Map<string, Group>();
const pending = new Map<number, (data: Uint8Array | null) => void>();
let nextReq = 1;

function post(m: FromWorker) {
  self.postMessage(m);
}

function ask(key: string, index: number, tcp: boolean, data: Uint8Array): Promise<Uint8Array | null> {
  const req = nextReq++;
  return new Promise((resolve) => {
    pending.set(req, resolve);
    post({ op: "query", key, req, index, tcp, data });
  });
}

/** Ports tried per listener when the one the kernel gave for UDP is taken for TCP or on ::1. */
const PORT_TRIES = 8;
const inUse = (err: Error) => (err as { code?: string }).code === "EADDRINUSE";

function bindUdp(type: "udp4" | "udp6", address: string, port: number): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket({ type, reuseAddr: false });
    s.once("error", reject);
    s.bind({ address, port, exclusive: true }, () => {
      s.off("error", reject);
      resolve(s);
    });
  });
}

function listenTcp(address: string, port: number): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    // Half-open allowed: a client may shut down its sending side right after its query (`printf ... | nc`
    // does) and still wait for the answer, which is written after the query has gone upstream and back.
    const srv = net.createServer({ allowHalfOpen: true });
    srv.once("error", reject);
    srv.listen({ host: address, port, exclusive: true }, () => {
      srv.off("error", reject);
      resolve(srv);
    });
  });
}

function serveUdp(key: string, index: number, s: dgram.Socket) {
  s.on("error", () => {});
  s.on("message", async (msg, rinfo) => {
    if (msg.length < 12 || msg.length > 4096) return;
    const answer = await ask(key, index, false, new Uint8Array(msg));
    // The listener may have been closed meanwhile (the container stopped): a throw here would end the
    // whole thread, and every other container's listeners with it.
    try {
      if (answer) s.send(answer, rinfo.port, rinfo.address);
    } catch { /* closed */ }
  });
}

/** DNS over TCP: 2-byte length, then the message; answered in order, one at a time per connection. */
function serveTcp(key: string, index: number, srv: net.Server, conns: Set<net.Socket>) {
  srv.on("error", () => {});
  // Each connection is a descriptor of the daemon's: a container gets a few at a time, for a while each.
  srv.maxConnections = 32;
  srv.on("connection", (c) => {
    conns.add(c);
    c.setTimeout(10_000, () => c.destroy());
    const life = setTimeout(() => c.destroy(), 60_000);
    c.on("close", () => clearTimeout(life));
    let buf = new Uint8Array(0);
    let busy = false;
    /** The client sent everything it will: close once the answers to what it sent are written. */
    let ended = false;
    const pump = async () => {
      if (busy) return;
      busy = true;
      while (buf.length >= 2) {
        const len = (buf[0] << 8) | buf[1];
        if (len < 12) return c.destroy();
        if (buf.length < 2 + len) break;
        const msg = buf.slice(2, 2 + len);
        buf = buf.slice(2 + len);
        const answer = await ask(key, index, true, msg);
        if (!answer) return c.destroy();
        const out = new Uint8Array(2 + answer.length);
        out[0] = answer.length >> 8;
        out[1] = answer.length & 0xff;
        out.set(answer, 2);
        c.write(out);
      }
      busy = false;
      if (ended) c.end();
    };
    c.on("data", (d: Uint8Array) => {
      if (buf.length + d.length > 70_000) return c.destroy();
      const next = new Uint8Array(buf.length + d.length);
      next.set(buf);
      next.set(d, buf.length);
      buf = next;
      pump();
    });
    c.on("end", () => {
      ended = true;
      if (!busy) c.end();
    });
    c.on("error", () => {});
    c.on("close", () => conns.delete(c));
  });
}

async function open(key: string, seq: number, ns: string, count: number): Promise<FromWorker> {
  if (home < 0) return { op: "failed", key, seq, error: "cannot open this thread's own network namespace" };
  const fd = libc.symbols.open(cstr(ns), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return { op: "failed", key, seq, error: `cannot open ${ns}` };
  const g: Group = { seq, udp: [], tcp: [], conns: new Set() };
  const ports: number[] = [];
  let v6 = true;
  let netlink = -1;
  let error: string | undefined;
  let stranded = false;
  if (libc.symbols.setns(fd, CLONE_NEWNET) !== 0) {
    libc.symbols.close(fd);
    return { op: "failed", key, seq, error: `cannot enter ${ns}` };
  }
  // UDP sockets whose port something in the namespace holds for TCP or on ::1: kept open until every
  // listener is bound, so the kernel picks another port next time, then closed.
  const held: dgram.Socket[] = [];
  try {
    for (let i = 0; i < count; i++) {
      let port = 0;
      for (let attempt = 1;; attempt++) {
        // Port 0: the kernel picks a free port in that namespace; TCP and IPv6 take the same number.
        const u4 = await bindUdp("udp4", "127.0.0.1", 0);
        port = u4.address().port;
        const t4 = await listenTcp("127.0.0.1", port).catch((err: Error) => err);
        if (t4 instanceof Error) {
          held.push(u4);
          if (inUse(t4) && attempt < PORT_TRIES) continue;
          throw t4;
        }
        let six: [dgram.Socket, net.Server] | undefined;
        if (v6) {
          const u6 = await bindUdp("udp6", "::1", port).catch((err: Error) => err);
          const t6 = u6 instanceof Error ? u6 : await listenTcp("::1", port).catch((err: Error) => err);
          if (!(u6 instanceof Error) && !(t6 instanceof Error)) six = [u6, t6 as net.Server];
          else {
            if (!(u6 instanceof Error)) u6.close();
            const err = t6 as Error;
            if (inUse(err) && attempt < PORT_TRIES) {
              held.push(u4);
              t4.close();
              continue;
            }
            if (inUse(err)) throw err;
            v6 = false; // no IPv6 loopback there (IPv6 switched off): the steering leaves IPv6 DNS alone
          }
        }
        g.udp.push(u4);
        g.tcp.push(t4);
        serveUdp(key, i, u4);
        serveTcp(key, i, t4, g.conns);
        if (six) {
          g.udp.push(six[0]);
          g.tcp.push(six[1]);
          serveUdp(key, i, six[0]);
          serveTcp(key, i, six[1], g.conns);
        }
        break;
      }
      ports.push(port);
    }
    // For the set updates (netlink_sets.ts): made here, so it talks to this namespace's ipsets.
    netlink = netlinkSocket();
  } catch (err) {
    error = (err as Error).message;
  } finally {
    for (const s of held) s.close();
    // Back home before anything else can run on this thread.
    stranded = libc.symbols.setns(home, CLONE_NEWNET) !== 0;
    libc.symbols.close(fd);
  }
  if (stranded) {
    // Never keep running in a container's namespace: end the thread (the main thread sees it fail, and
    // steers every container again). Nothing ran between the failed setns and this.
    self.close();
    throw new Error("cannot return to the daemon's own network namespace");
  }
  if (error !== undefined) {
    shut(g);
    if (netlink >= 0) libc.symbols.close(netlink);
    return { op: "failed", key, seq, error };
  }
  groups.set(key, g);
  return { op: "opened", key, seq, ports, v6, netlink };
}

function shut(g: Group) {
  for (const s of g.udp) s.close();
  for (const s of g.tcp) s.close();
  for (const c of g.conns) c.destroy();
}

let queue = Promise.resolve();
self.onmessage = (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  if (m.op === "answer") {
    const r = pending.get(m.req);
    pending.delete(m.req);
    r?.(m.data);
  } else if (m.op === "open") {
    // One open at a time, start to finish: see the module comment.
    queue = queue.then(async () => {
      const old = groups.get(m.key);
      if (old) shut(old), groups.delete(m.key);
      post(await open(m.key, m.seq, m.ns, m.count));
    });
  } else if (m.op === "close") {
    queue = queue.then(() => {
      const g = groups.get(m.key);
      if (g && (m.seq === undefined || g.seq === m.seq)) shut(g), groups.delete(m.key);
    });
  }
};
