/**
 * DNS listeners inside containers' network namespaces, opened by one worker thread (ns_worker.ts):
 * per container, one UDP and one TCP listener per upstream resolver on 127.0.0.1 (and ::1 when the
 * namespace has IPv6), on a port the kernel picks there. The steering (steering.ts) sends the container's
 * DNS to them; each query comes here, to the handler, whose answer (or null: no answer) goes back.
 */
import type { FromWorker, ToWorker } from "./ns_worker.ts";

/** One query as the container sent it. */
export interface NsQuery {
  /** Which container (the key it was opened with). */
  key: string;
  /** Which of its resolvers it was addressed to (the listener it reached). */
  index: number;
  tcp: boolean;
  data: Uint8Array;
}

/** Where a container's listeners are. */
export interface OpenedListeners {
  ports: number[];
  /** IPv6 listeners too (on ::1, same ports). */
  v6: boolean;
  /** A netlink socket made in that namespace (for its ipsets), or -1; the caller closes it. */
  netlink?: number;
}

let fdLib: Deno.DynamicLibrary<{ close: { parameters: ["i32"]; result: "i32" } }> | undefined;
function closeFd(fd: number) {
  fdLib ??= Deno.dlopen("libc.so.6", { close: { parameters: ["i32"], result: "i32" } });
  fdLib.symbols.close(fd);
}

/** The listeners of every steered container; the worker starts on first use. */
export class NsListeners {
  private worker?: Worker;
  private readonly waiting = new Map<
    string,
    { seq: number; resolve: (o: OpenedListeners) => void; reject: (e: Error) => void }
  >();
  private seq = 1;
  constructor(
    private readonly handler: (q: NsQuery) => Promise<Uint8Array | null>,
    /** The thread died and every listener with it (steered DNS then gets no answer, fails closed). */
    private readonly onLost: (error: string) => void = () => {},
  ) {}

  private start(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL("./ns_worker.ts", import.meta.url), { type: "module" });
    w.onmessage = (e: MessageEvent<FromWorker>) => this.receive(w, e.data);
    w.onerror = (e) => {
      // A worker that died takes every listener with it: steered DNS then gets no answer (closed).
      e.preventDefault();
      for (const [, p] of this.waiting) p.reject(new Error(`DNS listener thread failed: ${e.message}`));
      this.waiting.clear();
      if (this.worker === w) this.worker = undefined;
      w.terminate();
      this.onLost(e.message);
    };
    this.worker = w;
    return w;
  }

  private receive(w: Worker, m: FromWorker) {
    if (m.op === "query") {
      this.handler({ key: m.key, index: m.index, tcp: m.tcp, data: m.data }).catch(() => null)
        .then((data) => w.postMessage({ op: "answer", key: m.key, req: m.req, data } satisfies ToWorker));
      return;
    }
    const p = this.waiting.get(m.key);
    if (!p || p.seq !== m.seq) {
      // Opened after its caller gave up (a timeout, a newer open): nobody will use these; close them, so
      // they do not keep the container's namespace alive.
      if (m.op === "opened") {
        w.postMessage({ op: "close", key: m.key, seq: m.seq } satisfies ToWorker);
        if (m.netlink >= 0) closeFd(m.netlink);
      }
      return;
    }
    this.waiting.delete(m.key);
    if (m.op === "opened") p.resolve({ ports: m.ports, v6: m.v6, netlink: m.netlink });
    else p.reject(new Error(m.error));
  }

  /** Open (or re-open) `count` listeners in the namespace at `ns` (`/proc/<pid>/ns/net`). */
  open(key: string, ns: string, count: number, timeoutMs = 5000): Promise<OpenedListeners> {
    const w = this.start();
    this.waiting.get(key)?.reject(new Error("superseded"));
    return new Promise<OpenedListeners>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(key);
        reject(new Error(`DNS listeners in ${ns} not open after ${timeoutMs} ms`));
      }, timeoutMs);
      const seq = this.seq++;
      this.waiting.set(key, {
        seq,
        resolve: (o) => (clearTimeout(timer), resolve(o)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      w.postMessage({ op: "open", key, seq, ns, count } satisfies ToWorker);
    });
  }

  close(key: string): void {
    this.worker?.postMessage({ op: "close", key } satisfies ToWorker);
  }

  /** Stop the worker: every listener closes. */
  stop(): void {
    this.worker?.terminate();
    this.worker = undefined;
  }
}
