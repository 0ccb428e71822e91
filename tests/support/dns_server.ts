/**
 * A test DNS server in a container, for the rules-by-DNS-name tests: it answers only the names of its zone
 * (REFUSED for anything else) and never forwards, recurses or sends anything but answers to whoever asked.
 *
 * It runs in a labelled container of {@link HELPER_IMAGE} on the test's network, as a small Deno program:
 * the host's deno binary ({@link Deno.execPath}) and the server's code are bind-mounted read-only, and a
 * temp dir is mounted read-write for the zone (written by the host) and the server's status (written by the
 * server). The code is {@link dnsServerMain} itself, written out as JavaScript: it must stay self-contained
 * (no imports, nothing from this module's scope) since its source text is all the container gets.
 *
 * Behaviour, on UDP and TCP port 53 (IPv4 and, on a network with IPv6, IPv6):
 * - A and AAAA: one address per answer, the next of the record's in round-robin order, with its TTL (1 s by
 *   default). A CNAME record answers the CNAME and then the target's records (whose rotation advances), as a
 *   recursive resolver would; a target outside the zone ends the chain (NOERROR, CNAMEs only).
 * - A known name without records of the asked type: NOERROR with no answer (NODATA). An unknown name, or a
 *   class other than IN: REFUSED. Any other opcode: NOTIMP; not exactly one question: FORMERR.
 * - A record with `fail` answers SERVFAIL or NXDOMAIN, or not at all (`"drop"`: the client times out).
 */
import { containerAddresses, dockerCli, HELPER_IMAGE, runContainer, testName, withDocker } from "./docker.ts";

/** What one name answers. */
export interface ZoneRecord {
  /** IPv4 addresses, one per answer in round-robin order. */
  a?: string[];
  /** IPv6 addresses, one per answer in round-robin order. */
  aaaa?: string[];
  /** An alias (a name, with or without the trailing dot); `a` and `aaaa` are then ignored. */
  cname?: string;
  /** TTL of this name's answers, in seconds; 1 when unset. */
  ttl?: number;
  /** Answer every query for this name with SERVFAIL or NXDOMAIN, or drop it unanswered. */
  fail?: "servfail" | "nxdomain" | "drop";
}

/** Names (lower-case, without the trailing dot) to their records. */
export type Zone = Record<string, ZoneRecord>;

/** A running test DNS server. */
export interface TestDns {
  /** Its IPv4 address on the network. */
  ip: string;
  /** Its IPv6 address on the network, when the network has IPv6. */
  ip6?: string;
  /** The container's name. */
  container: string;
  /** The container's id. */
  id: string;
  /** Replace the zone; resolves once the server answers from the new one (rotation starts over). */
  setZone(z: Zone): Promise<void>;
  /**
   * Queries received since the start: all, for one name (any case, trailing dot or not), or for one name
   * and type (`"A"`, `"AAAA"`, `"CNAME"`, ..., `"TYPE<n>"`). Refused and dropped ones count too; a CNAME's
   * target is not counted as queried. Counted before the answer goes out, so an answer seen means counted.
   */
  queries(name?: string, type?: string): Promise<number>;
  /** Remove the container and the temp dir (again: nothing happens). */
  stop(): Promise<void>;
}

/** Options of {@link startTestDns}. */
export interface TestDnsOptions {
  /** The network to run on (a user-defined one the test made). */
  network: string;
  zone: Zone;
  /** Container name; a fresh {@link testName} when unset. */
  name?: string;
  /** The dockerd to run it on (`unix:///…/docker.sock`); the main one when unset. */
  host?: string;
}

/** What the server writes to status.json. */
interface ServerStatus {
  ready: boolean;
  generation: number;
  /** Why the zone of `generation` was not loaded (the previous one is still served). */
  error?: string;
  total: number;
  /** `name` and `name/TYPE` to counts. */
  counts: Record<string, number>;
}

/** Inside the container. */
const MNT = { deno: "/opt/egt-dns/deno", code: "/opt/egt-dns/code", state: "/egt-dns" };

/**
 * `deno run` as test containers run a bind-mounted script with the host's deno binary: no config, lock,
 * remote or npm modules (nothing is fetched), no prompt, and the network (UDP needs --unstable-net). Any
 * address: a server answers whoever asked.
 */
export const CONTAINER_DENO_RUN = [
  "run",
  "--no-config",
  "--no-lock",
  "--no-remote",
  "--no-npm",
  "--no-prompt",
  "--unstable-net",
  "--allow-net",
];

/** A name as zone keys spell it. */
function normName(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

/** The zone with lower-case names and targets, checked for what the server would refuse to load. */
function normZone(z: Zone): Zone {
  const out: Zone = {};
  for (const [k, r] of Object.entries(z)) {
    const name = normName(k);
    if (!/^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/.test(name) || name.length > 253) {
      throw new Error(`test DNS zone: bad name ${JSON.stringify(k)}`);
    }
    if (out[name]) throw new Error(`test DNS zone: ${name} twice`);
    out[name] = { ...r, ...(r.cname === undefined ? {} : { cname: normName(r.cname) }) };
  }
  return out;
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await Deno.writeTextFile(tmp, text);
  await Deno.rename(tmp, path);
}

/**
 * The test DNS server for a dockerd the test reaches only through a shell (the systemd machine): the files
 * to put in one directory (`server.js`, and `zone.json` in its state directory), and the `docker run`
 * command words after the image, for that directory mounted at `code` and a writable one at `state`.
 */
export function testDnsFiles(zone: Zone, mnt: { deno: string; code: string; state: string }) {
  return {
    serverJs: `${dnsServerMain.toString()}\n\ndnsServerMain();\n`,
    zoneJson: JSON.stringify({ generation: 1, zone: normZone(zone) }),
    cmd: [
      mnt.deno,
      ...CONTAINER_DENO_RUN,
      `--allow-read=${mnt.state}`,
      `--allow-write=${mnt.state}`,
      `${mnt.code}/server.js`,
      mnt.state,
    ],
  };
}

/**
 * Start a test DNS server on `opts.network` and wait until it answers on UDP and TCP (it queries itself over
 * loopback before it says it is ready). Call stop() when done, in a finally.
 */
export async function startTestDns(opts: TestDnsOptions): Promise<TestDns> {
  const present = await withDocker(opts.host, (c) => c.imageExists(HELPER_IMAGE));
  if (!present) throw new Error(`test image ${HELPER_IMAGE} is missing: run scripts/test_env.sh`);
  const tmp = await Deno.makeTempDir({ prefix: "egt-dns-" });
  const state = `${tmp}/state`;
  const statusPath = `${state}/status.json`;
  const zonePath = `${state}/zone.json`;
  let generation = 1;
  let id = "";
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    if (id) await withDocker(opts.host, (c) => c.removeContainer(id, { force: true }));
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    stopped = true;
  };
  const readStatus = async (): Promise<ServerStatus | undefined> => {
    try {
      return JSON.parse(await Deno.readTextFile(statusPath)) as ServerStatus;
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return undefined;
      throw err;
    }
  };
  const logs = async () => {
    const r = await dockerCli(["logs", "--tail", "30", id], { host: opts.host }).catch(() => undefined);
    return r ? `${r.stdout}${r.stderr}`.trim() : "";
  };
  /** Poll status.json (every 20 ms) until `want`; the container dying or `timeoutMs` passing throws. */
  const waitStatus = async (want: (s: ServerStatus) => boolean, what: string, timeoutMs: number) => {
    const deadline = Date.now() + timeoutMs;
    let lastAlive = Date.now();
    while (true) {
      const s = await readStatus();
      if (s && want(s)) return s;
      if (Date.now() - lastAlive > 500) {
        lastAlive = Date.now();
        const running = await withDocker(opts.host, (c) => c.inspectContainer(id)).then(
          (i) => i.running,
          () => false,
        );
        if (!running) throw new Error(`test DNS server ${name} exited before ${what}:\n${await logs()}`);
      }
      if (Date.now() > deadline) {
        throw new Error(
          `test DNS server ${name}: no ${what} after ${timeoutMs} ms (status ${JSON.stringify(s)}):\n` +
            await logs(),
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const name = opts.name ?? testName("dns");
  try {
    await Deno.mkdir(`${tmp}/code`);
    await Deno.mkdir(state);
    const files = testDnsFiles(opts.zone, MNT);
    await Deno.writeTextFile(`${tmp}/code/server.js`, files.serverJs);
    await writeAtomic(zonePath, files.zoneJson);
    const created = await runContainer({
      image: HELPER_IMAGE,
      name,
      network: opts.network,
      host: opts.host,
      stopTimeout: 1,
      env: ["DENO_DIR=/tmp/deno", "DENO_NO_UPDATE_CHECK=1", "NO_COLOR=1"],
      cmd: files.cmd,
      hostConfig: {
        Binds: [`${Deno.execPath()}:${MNT.deno}:ro`, `${tmp}/code:${MNT.code}:ro`, `${state}:${MNT.state}`],
      },
    });
    id = created.id;
    const s = await waitStatus((s) => s.ready || !!s.error, "answer to its own queries", 30_000);
    if (s.error) throw new Error(`test DNS server ${name}: ${s.error}`);
    const { v4, v6 } = await containerAddresses(id, opts.network, opts.host);
    return {
      ip: v4,
      ...(v6 ? { ip6: v6 } : {}),
      container: name,
      id,
      setZone: async (z) => {
        const gen = ++generation;
        await writeAtomic(zonePath, JSON.stringify({ generation: gen, zone: normZone(z) }));
        const st = await waitStatus((s) => s.generation === gen, `zone generation ${gen}`, 10_000);
        if (st.error) throw new Error(`test DNS server ${name} did not load the zone: ${st.error}`);
      },
      queries: async (qname, type) => {
        const st = await readStatus();
        if (!st) throw new Error(`test DNS server ${name}: no status file`);
        if (qname === undefined) return st.total;
        const key = type === undefined ? normName(qname) : `${normName(qname)}/${type.toUpperCase()}`;
        return st.counts[key] ?? 0;
      },
      stop,
    };
  } catch (err) {
    await stop().catch(() => {});
    throw err;
  }
}

/**
 * The server, run as `deno run --unstable-net ... server.js <state dir>`. Its source text is written out and
 * run in the container: it must use nothing from outside its own body.
 */
async function dnsServerMain(): Promise<void> {
  type Rec = { a: Uint8Array[]; aaaa: Uint8Array[]; cname?: string; ttl: number; fail?: string };
  type Answer = { owner: Uint8Array; type: number; ttl: number; rdata: Uint8Array };
  const dir = Deno.args[0];
  const zonePath = `${dir}/zone.json`;
  const statusPath = `${dir}/status.json`;
  const TYPES: Record<number, string> = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    64: "SVCB",
    65: "HTTPS",
    255: "ANY",
  };
  const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 };
  let zone = new Map<string, Rec>();
  let generation = 0;
  let loadError: string | undefined;
  let ready = false;
  let total = 0;
  let counts: Record<string, number> = {};
  const rotation = new Map<string, number>();

  const log = (msg: string) => console.log(`${new Date().toISOString()} ${msg}`);

  function writeStatus(): void {
    const st = { ready, generation, ...(loadError ? { error: loadError } : {}), total, counts };
    Deno.writeTextFileSync(`${statusPath}.tmp`, JSON.stringify(st));
    Deno.renameSync(`${statusPath}.tmp`, statusPath);
  }

  function ip4(s: string): Uint8Array {
    const parts = s.split(".");
    if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
      throw new Error(`bad IPv4 address ${JSON.stringify(s)}`);
    }
    return new Uint8Array(parts.map(Number));
  }

  function ip6(s: string): Uint8Array {
    const halves = s.split("::");
    const groups = (h: string) => h === "" ? [] : h.split(":");
    const head = groups(halves[0]);
    const tail = halves.length === 2 ? groups(halves[1]) : [];
    const n = head.length + tail.length;
    const all = halves.length === 2 ? [...head, ...Array(8 - n).fill("0"), ...tail] : head;
    if (
      halves.length > 2 || (halves.length === 2 ? n > 7 : n !== 8) ||
      all.some((g) => !/^[0-9a-f]{1,4}$/i.test(g))
    ) {
      throw new Error(`bad IPv6 address ${JSON.stringify(s)}`);
    }
    const out = new Uint8Array(16);
    all.forEach((g, i) => (out[2 * i] = parseInt(g, 16) >> 8, out[2 * i + 1] = parseInt(g, 16) & 0xff));
    return out;
  }

  /** A name in wire format (no compression). */
  function wireName(name: string): Uint8Array {
    const bytes: number[] = [];
    for (const label of name.split(".").filter((l) => l !== "")) {
      const l = new TextEncoder().encode(label);
      if (l.length > 63) throw new Error(`label too long in ${name}`);
      bytes.push(l.length, ...l);
    }
    bytes.push(0);
    if (bytes.length > 255) throw new Error(`name too long: ${name}`);
    return new Uint8Array(bytes);
  }

  function loadZone(): void {
    const file = JSON.parse(Deno.readTextFileSync(zonePath)) as {
      generation: number;
      zone: Record<string, { a?: string[]; aaaa?: string[]; cname?: string; ttl?: number; fail?: string }>;
    };
    if (file.generation === generation) return;
    try {
      const next = new Map<string, Rec>();
      for (const [name, r] of Object.entries(file.zone)) {
        wireName(name);
        if (r.cname !== undefined) wireName(r.cname);
        const ttl = r.ttl ?? 1;
        if (!Number.isInteger(ttl) || ttl < 0 || ttl > 0x7fffffff) throw new Error(`${name}: bad ttl ${ttl}`);
        if (r.fail !== undefined && !["servfail", "nxdomain", "drop"].includes(r.fail)) {
          throw new Error(`${name}: bad fail ${r.fail}`);
        }
        next.set(name, {
          a: (r.a ?? []).map(ip4),
          aaaa: (r.aaaa ?? []).map(ip6),
          cname: r.cname,
          ttl,
          fail: r.fail,
        });
      }
      zone = next;
      rotation.clear();
      loadError = undefined;
      log(`zone generation ${file.generation}: ${[...next.keys()].join(" ")}`);
    } catch (err) {
      loadError = `zone generation ${file.generation}: ${(err as Error).message}`;
      log(loadError);
    }
    generation = file.generation;
    writeStatus();
  }

  /** The next address of a rotating set. */
  function next(name: string, type: number, addrs: Uint8Array[]): Uint8Array {
    const key = `${name}/${type}`;
    const i = rotation.get(key) ?? 0;
    rotation.set(key, i + 1);
    return addrs[i % addrs.length];
  }

  /** Answers for (name, type) following CNAMEs, or an rcode; null: drop. */
  function resolve(qname: string, qtype: number): { rcode: number; answers: Answer[] } | null {
    if (!zone.has(qname)) return { rcode: RCODE.REFUSED, answers: [] };
    const answers: Answer[] = [];
    let owner: Uint8Array = new Uint8Array([0xc0, 0x0c]); // the question's name
    let cur = qname;
    for (let depth = 0; depth < 8; depth++) {
      const r = zone.get(cur);
      if (!r) break; // a CNAME out of the zone: the chain ends here
      if (r.fail === "drop") return null;
      if (r.fail) return { rcode: r.fail === "servfail" ? RCODE.SERVFAIL : RCODE.NXDOMAIN, answers };
      if (r.cname !== undefined) {
        answers.push({ owner, type: 5, ttl: r.ttl, rdata: wireName(r.cname) });
        if (qtype === 5) break;
        owner = wireName(r.cname);
        cur = r.cname;
        continue;
      }
      if ((qtype === 1 || qtype === 255) && r.a.length > 0) {
        answers.push({ owner, type: 1, ttl: r.ttl, rdata: next(cur, 1, r.a) });
      }
      if ((qtype === 28 || qtype === 255) && r.aaaa.length > 0) {
        answers.push({ owner, type: 28, ttl: r.ttl, rdata: next(cur, 28, r.aaaa) });
      }
      break;
    }
    return { rcode: RCODE.NOERROR, answers };
  }

  function u16(out: number[], n: number): void {
    out.push((n >> 8) & 0xff, n & 0xff);
  }

  /** The answer to one query message; null: none (not a query, or dropped). */
  function handle(msg: Uint8Array, transport: "udp" | "tcp"): Uint8Array | null {
    if (msg.length < 12) return null;
    const flags = (msg[2] << 8) | msg[3];
    if (flags & 0x8000) return null; // a response
    const id = (msg[0] << 8) | msg[1];
    const opcode = (flags >> 11) & 0xf;
    const rd = flags & 0x0100;
    const qdcount = (msg[4] << 8) | msg[5];
    const reply = (rcode: number, question?: Uint8Array, answers: Answer[] = [], tc = false) => {
      const out: number[] = [];
      u16(out, id);
      const aa = question && (rcode === RCODE.NOERROR || rcode === RCODE.NXDOMAIN) ? 0x0400 : 0;
      u16(out, 0x8000 | (opcode << 11) | aa | (tc ? 0x0200 : 0) | rd | 0x0080 | rcode);
      u16(out, question ? 1 : 0);
      u16(out, answers.length);
      u16(out, 0);
      u16(out, 0);
      if (question) out.push(...question);
      for (const a of answers) {
        out.push(...a.owner);
        u16(out, a.type);
        u16(out, 1);
        u16(out, a.ttl >>> 16);
        u16(out, a.ttl & 0xffff);
        u16(out, a.rdata.length);
        out.push(...a.rdata);
      }
      return new Uint8Array(out);
    };
    total++;
    if (opcode !== 0) return (writeStatus(), reply(RCODE.NOTIMP));
    if (qdcount !== 1) return (writeStatus(), reply(RCODE.FORMERR));
    // The question: labels without compression pointers, then type and class.
    const labels: string[] = [];
    let p = 12;
    while (p < msg.length && msg[p] !== 0) {
      const len = msg[p];
      if (len > 63 || p + 1 + len > msg.length) return (writeStatus(), reply(RCODE.FORMERR));
      labels.push(new TextDecoder().decode(msg.subarray(p + 1, p + 1 + len)));
      p += 1 + len;
    }
    if (p + 5 > msg.length) return (writeStatus(), reply(RCODE.FORMERR));
    const question = msg.slice(12, p + 5);
    const qtype = (msg[p + 1] << 8) | msg[p + 2];
    const qclass = (msg[p + 3] << 8) | msg[p + 4];
    const qname = labels.join(".").toLowerCase();
    const typeName = TYPES[qtype] ?? `TYPE${qtype}`;
    counts[qname] = (counts[qname] ?? 0) + 1;
    counts[`${qname}/${typeName}`] = (counts[`${qname}/${typeName}`] ?? 0) + 1;
    const res = qclass === 1 || qclass === 255
      ? resolve(qname, qtype)
      : { rcode: RCODE.REFUSED, answers: [] };
    writeStatus(); // before the answer leaves: whoever saw the answer sees the count
    const rcodeName = (Object.entries(RCODE).find(([, v]) => v === res?.rcode) ?? ["dropped"])[0];
    const shown = (res?.answers ?? []).map((a) =>
      a.type === 1
        ? [...a.rdata].join(".")
        : a.type === 28
        ? [0, 2, 4, 6, 8, 10, 12, 14].map((i) => ((a.rdata[i] << 8) | a.rdata[i + 1]).toString(16)).join(":")
        : "CNAME"
    );
    log(`${transport} ${qname || "."} ${typeName} -> ${rcodeName} ${shown.join(" ")}`.trim());
    if (!res) return null;
    const out = reply(res.rcode, question, res.answers);
    return transport === "udp" && out.length > 512 ? reply(res.rcode, question, [], true) : out;
  }

  async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
    for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
  }

  async function serveConn(conn: Deno.Conn): Promise<void> {
    let buf = new Uint8Array(0);
    const close = () => {
      try {
        conn.close();
      } catch { /* closed already */ }
    };
    let idle = setTimeout(close, 10_000);
    try {
      for await (const chunk of conn.readable) {
        clearTimeout(idle);
        idle = setTimeout(close, 10_000);
        const joined = new Uint8Array(buf.length + chunk.length);
        joined.set(buf);
        joined.set(chunk, buf.length);
        buf = joined;
        while (buf.length >= 2 && buf.length >= 2 + ((buf[0] << 8) | buf[1])) {
          const n = (buf[0] << 8) | buf[1];
          const out = handle(buf.slice(2, 2 + n), "tcp");
          buf = buf.slice(2 + n);
          if (out) await writeAll(conn, new Uint8Array([out.length >> 8, out.length & 0xff, ...out]));
        }
      }
    } catch { /* reset, or closed when idle */ }
    clearTimeout(idle);
    close();
  }

  async function serveUdp(sock: Deno.DatagramConn): Promise<void> {
    while (true) {
      const [msg, addr] = await sock.receive();
      try {
        const out = handle(msg, "udp");
        if (out) await sock.send(out, addr);
      } catch (err) {
        log(`udp: ${(err as Error).message}`);
      }
    }
  }

  async function serveTcp(l: Deno.Listener): Promise<void> {
    for await (const conn of l) serveConn(conn);
  }

  /** `[::]:53` (dual-stack where the kernel allows), and `0.0.0.0:53` too when that is a separate socket. */
  function bindBoth<T>(bind: (hostname: string) => T): T[] {
    const out: T[] = [];
    const errors: string[] = [];
    for (const hostname of ["::", "0.0.0.0"]) {
      try {
        out.push(bind(hostname));
      } catch (err) {
        errors.push(`${hostname}: ${(err as Error).message}`);
      }
    }
    if (out.length === 0) throw new Error(`cannot bind port 53: ${errors.join("; ")}`);
    return out;
  }

  /** One query for `.` to ourselves over loopback, on UDP and on TCP; throws when either goes unanswered. */
  async function selfCheck(): Promise<void> {
    const query = new Uint8Array([0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
    const timeout = (what: string) =>
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error(`no ${what} answer from 127.0.0.1:53`)), 5000)
      );
    const udp = Deno.listenDatagram({ hostname: "127.0.0.1", port: 0, transport: "udp" });
    try {
      await udp.send(query, { transport: "udp", hostname: "127.0.0.1", port: 53 });
      const [got] = await Promise.race([udp.receive(), timeout("UDP")]);
      if (got[0] !== 0x12 || got[1] !== 0x34) throw new Error("wrong UDP answer to the self-check");
    } finally {
      udp.close();
    }
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: 53 });
    try {
      await writeAll(conn, new Uint8Array([0, query.length, ...query]));
      const reader = conn.readable.getReader();
      const { value } = await Promise.race([reader.read(), timeout("TCP")]);
      if (!value || value.length < 4 || value[2] !== 0x12 || value[3] !== 0x34) {
        throw new Error("wrong TCP answer to the self-check");
      }
      reader.releaseLock();
    } finally {
      try {
        conn.close();
      } catch { /* closed */ }
    }
  }

  try {
    loadZone();
    for (
      const sock of bindBoth((hostname) => Deno.listenDatagram({ hostname, port: 53, transport: "udp" }))
    ) {
      serveUdp(sock).catch((err) => (log(`udp socket: ${err.message}`), Deno.exit(1)));
    }
    for (const l of bindBoth((hostname) => Deno.listen({ hostname, port: 53 }))) {
      serveTcp(l).catch((err) => (log(`tcp listener: ${err.message}`), Deno.exit(1)));
    }
    await selfCheck();
  } catch (err) {
    loadError = `start: ${(err as Error).message}`;
    log(loadError);
    writeStatus();
    Deno.exit(1);
  }
  total = 0;
  counts = {};
  ready = true;
  writeStatus();
  log("ready");
  // Reload the zone when the host replaces the file; stop once it is gone (the host removed the temp dir).
  let seen = "";
  setInterval(() => {
    try {
      const st = Deno.statSync(zonePath);
      const key = `${st.ino}/${st.mtime?.getTime()}/${st.size}`;
      if (key === seen) return;
      seen = key;
      loadZone();
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) (log("zone file gone: exiting"), Deno.exit(0));
      log(`zone: ${(err as Error).message}`);
    }
  }, 20);
}
