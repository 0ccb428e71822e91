/**
 * The DNS forwarder behind rules by DNS name. Each steered container's queries reach it through its
 * listeners (listeners.ts); it sends each on, unchanged, to the resolver it was addressed to, reads the
 * answer, and before releasing it puts the answered addresses into the container's sets for every
 * pattern the question name matches (the CNAME chain's addresses count for the question name). The
 * answer is held until the sets are updated; when that cannot be done within `holdMs`, the container gets
 * SERVFAIL instead (fail closed). Under protect, what any answer (or the daemon's own lookup of a
 * protected name, repeated as its TTL runs out) says about a protected name goes into every protecting
 * container's sets. See README, "Rules by DNS name".
 */
import type { Policy } from "../config/config.ts";
import { patternMatches, setName } from "./names.ts";
import { readAnswer, readQuery, servfail, withId } from "./answers.ts";
import type { SetEntry } from "./steering.ts";
import type { SetSink } from "./sets.ts";
import type { NsQuery, OpenedListeners } from "./listeners.ts";
import { ipsetText, steeringText } from "./steering.ts";
import { encodeQuery } from "./query.ts";
import { containerResolvers, readContainerResolvConf } from "./resolvers.ts";
import { EntryRefused } from "./netlink_sets.ts";

/** A container to steer. */
export interface FqdnTarget {
  id: string;
  name: string;
  pid: number;
  policy: Policy;
  /** The patterns its rules use (allowed ones under allowlist, protected ones under protect). */
  patterns: string[];
  /** Where its queries go on: listener i forwards to resolvers[i]; anything else to resolvers[0]. */
  resolvers: string[];
}

/** What the forwarder talks through; injected so it can be tested without namespaces. */
export interface ForwarderIo {
  listeners: {
    open(key: string, ns: string, count: number): Promise<OpenedListeners>;
    close(key: string): void;
  };
  sets: SetSink;
  /** A namespace's own netlink channel to its ipsets (the fd the listener thread made there), if any. */
  netlink?: (fd: number) => { add(entries: SetEntry[]): Promise<void>; close(): void };
  upstream: {
    udp(server: { address: string }, msg: Uint8Array, timeoutMs: number): Promise<Uint8Array>;
    tcp(server: { address: string }, msg: Uint8Array, timeoutMs: number): Promise<Uint8Array>;
  };
  now(): number;
  log: { warn(msg: string, fields: Record<string, unknown>): void };
}

/** Timing rules. */
export interface ForwarderOptions {
  /** Lowest TTL an answer's addresses are kept for (seconds). */
  minTtl: number;
  /** Kept this much longer than the TTL (seconds). */
  grace: number;
  /** Longest an answer is held for its set update (ms); then SERVFAIL. */
  holdMs: number;
  upstreamTimeoutMs: number;
  /** Where the daemon's own lookups of protected names go. */
  ownResolvers: string[];
  /** Where Docker's embedded DNS forwards when the container was given no `--dns`. */
  fallbackResolvers: string[];
  /** Whether the DNS guard lets DNS go to this resolver (`--dns`): others are not forwarded to. */
  resolverAllowed(address: string): boolean;
  /** False on a kernel without IPv6: there are no IPv6 sets, so AAAA answers add nothing. */
  ipv6?: boolean;
}

/** Queries of one container waiting for their answers, at most; more get SERVFAIL at once. */
export const MAX_PENDING = 256;
/** Addresses kept per protected name (the sets' maxelem). */
const MAX_BOOK = 65536;

/** A TTL as a count of seconds to keep an address: RFC 2181's top bit means 0; at most a day. */
export function clampTtl(ttl: number): number {
  if (!Number.isFinite(ttl) || ttl < 0 || ttl > 0x7fffffff) return 0;
  return Math.min(ttl, 86400);
}

/** A container to steer, before its resolvers are known. */
export type SteerRequest = Omit<FqdnTarget, "resolvers"> & { dockerDns?: string[]; resolvConfPath?: string };

interface Steered {
  target: FqdnTarget;
  key: string;
  listeners: OpenedListeners;
  /** set -> address -> expiry (ms) as written. */
  written: Map<string, Map<string, number>>;
  /** Question names seen, with counts (at most 200 kept). */
  seen: Map<string, number>;
  /** Its rules (and so its sets) are in: answers for other containers may be written into it. */
  ready: boolean;
  /** Its ipsets over netlink: no process per update (else `ipset restore` through nsenter). */
  nl?: { add(entries: SetEntry[]): Promise<void>; close(): void };
  /** Writes under way, by `<set> <address>`. */
  inflight: Map<string, Promise<void>>;
  /**
   * What its rules in place match (set at {@link DnsForwarder.activate}): answers fill these sets only, not
   * those of a prepared apply that may not have created its sets yet.
   */
  active: { policy: Policy; patterns: string[] };
  /** Set entries known before the apply (protect), recorded once it is done. */
  prefill: SetEntry[];
  /** Queries sent on and not answered yet. */
  pending: number;
  /** When a SERVFAIL was last logged, and how many since went unlogged. */
  warned: { at: number; quiet: number };
}

const inflightKey = (set: string, address: string) => `${set} ${address}`;
const familyOf = (address: string) => (address.includes(":") ? "ipv6" as const : "ipv4" as const);

/** `p`, or a rejection once `ms` have passed. */
async function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`not done within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Counters for metrics. */
export interface ForwarderStats {
  queries: number;
  held: number;
  servfails: number;
  setUpdates: number;
  upstreamErrors: number;
  /** Hold times (ms) since the last read. */
  holds: number[];
}

/** Per container, for status. */
export interface SteeredStatus {
  id: string;
  name: string;
  policy: Policy;
  patterns: string[];
  resolvers: string[];
  names: { name: string; count: number }[];
  sets: { set: string; entries: number }[];
  /** The addresses each set holds now (as written; at most 256 per set): what `render --json` shows. */
  known: Record<string, string[]>;
}

export class DnsForwarder {
  private readonly byKey = new Map<string, Steered>();
  private readonly byId = new Map<string, Steered>();
  /** Protected patterns: what is known of their addresses (address -> {expiry ms, ttl s}). */
  private readonly book = new Map<string, Map<string, { expiry: number; ttl: number }>>();
  private readonly refresh = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly looking = new Map<string, Promise<void>>();
  readonly stats: ForwarderStats = {
    queries: 0,
    held: 0,
    servfails: 0,
    setUpdates: 0,
    upstreamErrors: 0,
    holds: [],
  };

  constructor(private readonly io: ForwarderIo, private readonly opts: ForwarderOptions) {}

  /** {@link prepare}, finding the container's resolvers first (its resolv.conf, Docker's `--dns`). */
  async steer(r: SteerRequest): Promise<{ nft: string; ipset: string }> {
    const conf = await readContainerResolvConf(r.pid, r.resolvConfPath);
    const resolvers = containerResolvers(conf, r.dockerDns, this.opts.fallbackResolvers)
      .filter((a) => this.opts.resolverAllowed(a));
    if (resolvers.length === 0) {
      this.io.log.warn("no resolver the DNS guard allows: its DNS answers will all be SERVFAIL", {
        container: r.name,
      });
    }
    const { dockerDns: _, resolvConfPath: _path, ...rest } = r;
    return await this.prepare({ ...rest, resolvers });
  }

  /**
   * Before its rules go in: open (or keep) the container's listeners and work out what goes into its
   * namespace with the rules: the steering (nft) and the set entries already known (ipset).
   */
  async prepare(t: FqdnTarget): Promise<{ nft: string; ipset: string }> {
    let s = this.byId.get(t.id);
    if (s && (s.target.pid !== t.pid || s.target.resolvers.length !== t.resolvers.length)) {
      this.release(t.id);
      s = undefined;
    }
    if (!s) {
      const key = `${t.id.slice(0, 12)}-${t.pid}`;
      const listeners = await this.io.listeners.open(
        key,
        `/proc/${t.pid}/ns/net`,
        Math.max(1, t.resolvers.length),
      );
      const nl = listeners.netlink !== undefined && listeners.netlink >= 0 && this.io.netlink
        ? this.io.netlink(listeners.netlink)
        : undefined;
      s = {
        target: t,
        key,
        listeners,
        written: new Map(),
        seen: new Map(),
        ready: false,
        nl,
        inflight: new Map(),
        active: { policy: t.policy, patterns: [] },
        prefill: [],
        pending: 0,
        warned: { at: 0, quiet: 0 },
      };
      this.byKey.set(key, s);
      this.byId.set(t.id, s);
    }
    s.target = t;
    let entries: SetEntry[] = [];
    if (t.policy === "protect") {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        Promise.all(t.patterns.filter((p) => !p.startsWith("*.")).map((p) => this.lookUp(p))),
        new Promise((r) => timer = setTimeout(r, this.opts.holdMs)),
      ]);
      clearTimeout(timer);
      entries = this.fromBook(s, t.policy, t.patterns);
    }
    s.prefill = entries;
    return {
      nft: steeringText(t.resolvers, s.listeners.ports, s.listeners.v6),
      ipset: ipsetText([], entries),
    };
  }

  /** Its rules (with the sets) are in place: answers now fill them. */
  activate(id: string): void {
    const s = this.byId.get(id);
    if (!s) return;
    s.active = { policy: s.target.policy, patterns: s.target.patterns };
    s.ready = true;
    this.record(s, s.prefill);
    s.prefill = [];
    // Under protect, what was learnt while the apply ran (after the book was read for it) goes in too.
    if (s.active.policy === "protect") {
      const late = this.fromBook(s, s.active.policy, s.active.patterns);
      if (late.length) {
        within(this.write(s, late), 5000).catch((err) => {
          this.unwrite(s, late);
          this.io.log.warn("protected names' addresses not written", {
            container: s.target.name,
            error: (err as Error).message,
          });
        });
      }
    }
  }

  /** Entries the book has for these protected patterns and the container's sets still need. */
  private fromBook(s: Steered, policy: Policy, patterns: string[]): SetEntry[] {
    const now = this.io.now();
    const out: SetEntry[] = [];
    for (const p of patterns) {
      for (const [addr, v] of this.book.get(p) ?? []) {
        if (v.expiry <= now) continue;
        out.push(...this.entry(s, policy, p, addr, (v.expiry - now) / 1000 - this.opts.grace, now));
      }
    }
    return out;
  }

  /** The container is gone (or no longer has names): close its listeners. */
  release(id: string): boolean {
    const s = this.byId.get(id);
    if (!s) return false;
    this.io.listeners.close(s.key);
    s.nl?.close();
    this.byId.delete(id);
    this.byKey.delete(s.key);
    this.forgetUnused();
    return true;
  }

  /** The listeners are all gone (their thread died): forget every container; their ids, to steer again. */
  dropAll(): string[] {
    const ids = [...this.byId.keys()];
    for (const s of this.byId.values()) s.nl?.close();
    this.byId.clear();
    this.byKey.clear();
    this.forgetUnused();
    return ids;
  }

  has(id: string): boolean {
    return this.byId.has(id);
  }

  /** One query from a container's namespace: its answer, held until the sets hold the addresses. */
  async handle(q: NsQuery): Promise<Uint8Array | null> {
    const s = this.byKey.get(q.key);
    const query = readQuery(q.data);
    if (!query) return null;
    this.stats.queries++;
    if (!s) return servfail(q.data);
    if (s.seen.size < 200 || s.seen.has(query.qname)) {
      s.seen.set(query.qname, (s.seen.get(query.qname) ?? 0) + 1);
    }
    const server = s.target.resolvers[q.index] ?? s.target.resolvers[0];
    if (!server) return this.fail(s, q, "no resolver to send it to");
    // A container flooding queries gets SERVFAIL, not the daemon's sockets.
    if (s.pending >= MAX_PENDING) return this.fail(s, q, `more than ${MAX_PENDING} queries waiting`);
    let resp: Uint8Array;
    s.pending++;
    try {
      // Sent on with an id of ours, not the container's (which it knows, and could forge a reply with);
      // the answer gets the container's id back, and is otherwise passed on as it came.
      const ours = withId(q.data, crypto.getRandomValues(new Uint16Array(1))[0]) ?? q.data;
      const got = q.tcp
        ? await this.io.upstream.tcp({ address: server }, ours, this.opts.upstreamTimeoutMs)
        : await this.io.upstream.udp({ address: server }, ours, this.opts.upstreamTimeoutMs);
      resp = withId(got, query.id) ?? got;
    } catch (err) {
      this.stats.upstreamErrors++;
      return this.fail(s, q, `resolver ${server}: ${(err as Error).message}`);
    } finally {
      s.pending--;
    }
    const { policy, patterns } = s.active;
    const ans = readAnswer(resp);
    if (!ans) {
      // An answer this forwarder cannot read may still be read by the container's resolver library:
      // for a name its protect rules are about, that could be an address they never see.
      const about = patterns.some((p) => patternMatches(p, query.qname));
      return policy === "protect" && about ? this.fail(s, q, "answer not readable") : resp;
    }
    if (ans.addresses.length === 0) return resp;
    const addresses = ans.addresses
      .filter((a) => this.opts.ipv6 !== false || a.family === "ipv4")
      .map((a) => ({ ...a, ttl: clampTtl(a.ttl) }));
    this.learn([ans.qname, ...ans.cnames], addresses, s);
    const now = this.io.now();
    const entries: SetEntry[] = [];
    // An address another answer is being written for right now: this answer waits for that write too.
    const waits = new Set<Promise<void>>();
    // Allowlist: the question name only (a CNAME target is not thereby allowed). Protect: any name of the
    // chain, so an alias of a protected name does not get its addresses through.
    const names = policy === "protect" ? [ans.qname, ...ans.cnames] : [ans.qname];
    for (const p of patterns) {
      if (!names.some((n) => patternMatches(p, n))) continue;
      for (const a of addresses) {
        const need = this.entry(s, policy, p, a.address, a.ttl, now);
        if (need.length) entries.push(...need);
        else {
          const w = s.inflight.get(inflightKey(setName(p, familyOf(a.address), policy), a.address));
          if (w) waits.add(w);
        }
      }
    }
    if (entries.length === 0 && waits.size === 0) return resp;
    this.stats.held++;
    const t0 = performance.now();
    try {
      await within(
        Promise.all([...(entries.length ? [this.write(s, entries)] : []), ...waits]),
        this.opts.holdMs,
      );
    } catch (err) {
      this.unwrite(s, entries);
      return this.fail(s, q, `sets not updated: ${(err as Error).message}`);
    }
    this.stats.holds.push(performance.now() - t0);
    if (this.stats.holds.length > 10_000) this.stats.holds.splice(0, 5_000);
    return resp;
  }

  /** Per container: names seen and set sizes (entries not yet expired, as written). */
  status(): SteeredStatus[] {
    const now = this.io.now();
    return [...this.byId.values()].map((s) => ({
      id: s.target.id,
      name: s.target.name,
      policy: s.target.policy,
      patterns: s.target.patterns,
      resolvers: s.target.resolvers,
      names: [...s.seen].map(([name, count]) => ({ name, count })),
      sets: [...s.written].map(([set, m]) => ({
        set,
        entries: [...m.values()].filter((e) => e > now).length,
      })),
      known: Object.fromEntries(
        [...s.written].map((
          [set, m],
        ) => [set, [...m].filter(([, e]) => e > now).map(([a]) => a).slice(0, 256)]),
      ),
    }));
  }

  /** The set entries an address needs for a pattern in one container: none if what is there lasts. */
  private entry(
    s: Steered,
    policy: Policy,
    pattern: string,
    address: string,
    ttl: number,
    now: number,
  ): SetEntry[] {
    const family = familyOf(address);
    if (family === "ipv6" && this.opts.ipv6 === false) return [];
    const set = setName(pattern, family, policy);
    const keep = Math.max(ttl, this.opts.minTtl);
    const have = s.written.get(set)?.get(address) ?? 0;
    if (have >= now + keep * 1000) return [];
    return [{ set, address, timeout: keep + this.opts.grace }];
  }

  /** Count entries as written (the apply that put them in is done). */
  private record(s: Steered, entries: SetEntry[]) {
    const now = this.io.now();
    for (const e of entries) {
      let m = s.written.get(e.set);
      if (!m) s.written.set(e.set, m = new Map());
      m.set(e.address, Math.max(m.get(e.address) ?? 0, now + e.timeout * 1000));
    }
  }

  /**
   * Write entries; the bookkeeping counts them at once, and until the write is done an answer that finds
   * them there waits for it (see {@link handle}) rather than being released before they are in.
   */
  private write(s: Steered, entries: SetEntry[]): Promise<void> {
    const now = this.io.now();
    for (const e of entries) {
      const m = s.written.get(e.set);
      // What the kernel has let expire is forgotten here too, so the bookkeeping stays as small as the set.
      if (m && m.size >= 1024) { for (const [a, exp] of m) if (exp <= now) m.delete(a); }
    }
    this.record(s, entries);
    this.stats.setUpdates++;
    const done = this.setAdd(s, entries);
    const keys = entries.map((e) => inflightKey(e.set, e.address));
    for (const k of keys) s.inflight.set(k, done);
    const clear = () => {
      for (const k of keys) if (s.inflight.get(k) === done) s.inflight.delete(k);
    };
    done.then(clear, clear);
    return done;
  }

  /** Over the namespace's netlink channel; through a process if there is none, or it failed. */
  private async setAdd(s: Steered, entries: SetEntry[]): Promise<void> {
    if (s.nl) {
      try {
        return await s.nl.add(entries);
      } catch (err) {
        // The kernel refusing an entry (a full set) says nothing about the channel: only a broken socket
        // sends the rest through processes.
        if (err instanceof EntryRefused) throw err;
        this.io.log.warn("set update over netlink failed; using ipset restore", {
          container: s.target.name,
          error: (err as Error).message,
        });
        s.nl.close();
        s.nl = undefined;
      }
    }
    await this.io.sets.add(s.target.pid, entries);
  }

  private unwrite(s: Steered, entries: SetEntry[]) {
    for (const e of entries) s.written.get(e.set)?.delete(e.address);
  }

  private fail(s: Steered, q: NsQuery, why: string): Uint8Array | null {
    this.stats.servfails++;
    // Logged at most every 10 s per container (with how many went unlogged): a flood is not a log flood.
    const now = this.io.now();
    if (now - s.warned.at >= 10_000) {
      const more = s.warned.quiet ? { unlogged: s.warned.quiet } : {};
      this.io.log.warn("dns answer refused (SERVFAIL)", { container: s.target.name, reason: why, ...more });
      s.warned = { at: now, quiet: 0 };
    } else s.warned.quiet++;
    return servfail(q.data);
  }

  /**
   * What an answer says about protected names goes to every container protecting them (not awaited: only
   * the asking container's own answer is held).
   */
  private learn(names: string[], addresses: { address: string; ttl: number }[], from?: Steered) {
    const now = this.io.now();
    const qname = names[0];
    for (const p of this.protectedPatterns()) {
      if (!names.some((n) => patternMatches(p, n))) continue;
      let m = this.book.get(p);
      if (!m) this.book.set(p, m = new Map());
      if (m.size >= 1024) { for (const [a, v] of m) if (v.expiry <= now) m.delete(a); }
      for (const a of addresses) {
        if (m.size >= MAX_BOOK && !m.has(a.address)) break;
        const keep = Math.max(a.ttl, this.opts.minTtl) + this.opts.grace;
        m.set(a.address, { expiry: Math.max(m.get(a.address)?.expiry ?? 0, now + keep * 1000), ttl: a.ttl });
      }
      for (const s of this.byId.values()) {
        if (s === from || !s.ready || s.active.policy !== "protect" || !s.active.patterns.includes(p)) {
          continue;
        }
        const entries = addresses.flatMap((a) => this.entry(s, "protect", p, a.address, a.ttl, now));
        if (entries.length) {
          within(this.write(s, entries), 5000).catch((err) => {
            this.unwrite(s, entries);
            this.io.log.warn("protected name's addresses not written", {
              container: s.target.name,
              name: qname,
              error: (err as Error).message,
            });
          });
        }
      }
    }
  }

  /** Every protected pattern of a steered container, in place or about to be. */
  private protectedPatterns(): Set<string> {
    const out = new Set<string>();
    for (const s of this.byId.values()) {
      for (const x of [s.target, s.active]) {
        if (x.policy === "protect") { for (const p of x.patterns) out.add(p); }
      }
    }
    return out;
  }

  /** The daemon's own lookup of a protected name (A and AAAA), repeated as the TTL runs out. */
  private lookUp(pattern: string): Promise<void> {
    const going = this.looking.get(pattern);
    if (going) return going;
    if (!this.opts.ownResolvers[0] || this.refresh.has(pattern)) return Promise.resolve();
    const p = this.lookUpNow(pattern).finally(() => this.looking.delete(pattern));
    this.looking.set(pattern, p);
    return p;
  }

  private async lookUpNow(pattern: string): Promise<void> {
    const server = this.opts.ownResolvers[0];
    let ttl = this.opts.minTtl;
    const types = this.opts.ipv6 === false ? (["A"] as const) : (["A", "AAAA"] as const);
    for (const type of types) {
      try {
        const resp = await this.io.upstream.udp(
          { address: server },
          encodeQuery(pattern, type),
          this.opts.upstreamTimeoutMs,
        );
        const ans = readAnswer(resp);
        if (!ans || ans.addresses.length === 0) continue;
        const addresses = ans.addresses.map((a) => ({ ...a, ttl: clampTtl(a.ttl) }));
        ttl = Math.max(this.opts.minTtl, Math.min(...addresses.map((a) => a.ttl)));
        this.learn([ans.qname, ...ans.cnames], addresses);
      } catch (err) {
        this.io.log.warn("own lookup of a protected name failed", {
          name: pattern,
          error: (err as Error).message,
        });
      }
    }
    if (!this.protectedPatterns().has(pattern) || this.refresh.has(pattern)) return;
    const timer = setTimeout(() => {
      this.refresh.delete(pattern);
      if (this.protectedPatterns().has(pattern)) this.lookUp(pattern);
    }, ttl * 1000);
    Deno.unrefTimer(timer as unknown as number);
    this.refresh.set(pattern, timer);
  }

  private forgetUnused() {
    const used = this.protectedPatterns();
    for (const [p, t] of this.refresh) if (!used.has(p)) clearTimeout(t), this.refresh.delete(p);
    for (const p of [...this.book.keys()]) if (!used.has(p)) this.book.delete(p);
  }

  /** Stop refreshing; listeners are the caller's. */
  stop() {
    for (const t of this.refresh.values()) clearTimeout(t);
    this.refresh.clear();
  }
}
