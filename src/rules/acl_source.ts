/**
 * Where ACLs come from: Consul KV under a prefix, or a directory of files (one file per key).
 * Both give an AclSnapshot: every key with its parsed rules and problems. Bad keys or lines are
 * reported, never fatal, so one broken key cannot take the others down.
 */
import { join, relative, sep } from "node:path";
import { parseAcl, type Rule, type RuleProblem } from "./grammar.ts";
import { ValidationError } from "../errors.ts";
import { displayText } from "../util/text.ts";
import { watch as blockingWatch } from "../consul/watch.ts";
import type { Logger } from "../log.ts";

/** One ACL key and what it holds. */
export interface AclEntry {
  key: string;
  rules: Rule[];
  problems: RuleProblem[];
}

/** All keys at one moment. `index` is Consul's X-Consul-Index where there is one. */
export interface AclSnapshot {
  entries: AclEntry[];
  /** Problems with keys as a whole (bad names, oversized values). */
  problems: RuleProblem[];
  index?: number;
}

/** Anything that can produce a snapshot. */
export interface AclSource {
  /** For messages: `consul kv egress/acl/` or `directory /etc/egresstrator/acl`. */
  readonly description: string;
  /** True when `<tag>.<service>` rules can be resolved (Consul); false for a directory. */
  readonly hasCatalog: boolean;
  read(signal?: AbortSignal): Promise<AclSnapshot>;
  /**
   * Follow the source until `signal` aborts: `onSnapshot` with the first snapshot and each one after a
   * change, `onError` for each failed read (retried by the source). Never rejects.
   */
  watch(w: AclWatch): Promise<void>;
}

/** Where a watch delivers, and how it blocks. */
export interface AclWatch {
  onSnapshot(snapshot: AclSnapshot): void;
  /** `attempt` counts consecutive failures from 1. */
  onError(err: unknown, attempt: number): void;
  signal: AbortSignal;
  /** Consul's blocking wait ("55s" by default). */
  wait?: string;
  /** Let any Consul server answer. */
  stale?: boolean;
  log?: Logger;
}

/** Keys are limited to what is safe in a comment or a log line. */
const KEY = /^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/;
/** Values over this are refused whole (Consul's own limit is 512 KiB). */
export const MAX_VALUE_BYTES = 1024 * 1024;

/** Why a key name is unusable, or undefined when it is fine. */
export function keyProblem(key: string): string | undefined {
  if (key.length > 256) return "key name is longer than 256 characters";
  if (!KEY.test(key) || key.split("/").some((s) => s === "." || s === "..")) {
    return 'key name may only use letters, digits, "_", "-", "." and "/"';
  }
  return undefined;
}

/** Parse one key's raw bytes (pure). */
export function parseEntry(
  key: string,
  bytes: Uint8Array | null,
  size = bytes?.length ?? 0,
): AclEntry | RuleProblem {
  const bad = keyProblem(key);
  if (bad) {
    return { key: displayText(key), line: 0, text: "", reason: bad + "; key ignored", severity: "error" };
  }
  if (size > MAX_VALUE_BYTES) {
    const reason = `value is larger than 1 MiB (${size} bytes); key ignored`;
    return { key, line: 0, text: "", reason, severity: "error" };
  }
  const text = bytes ? new TextDecoder().decode(bytes).replace(/^\ufeff/, "") : "";
  const { rules, problems } = parseAcl(key, text);
  return { key, rules, problems };
}

/** A key as read; `size` is set instead of `value` when the value was too large to read. */
export interface RawPair {
  key: string;
  value: Uint8Array | null;
  size?: number;
}

/** Build a snapshot from (key, bytes) pairs, sorted by key (pure). */
export function snapshotFrom(pairs: RawPair[], index?: number): AclSnapshot {
  const entries: AclEntry[] = [];
  const problems: RuleProblem[] = [];
  for (const p of [...pairs].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))) {
    const res = parseEntry(p.key, p.value, p.size);
    if ("rules" in res) entries.push(res);
    else problems.push(res);
  }
  return { entries, problems, index };
}

/** The part of the Consul client this source needs. */
export interface KvReader {
  kvTree(
    prefix: string,
    q?: { signal?: AbortSignal; index?: number; wait?: string; stale?: boolean },
  ): Promise<{
    data: { key: string; value: Uint8Array | null }[];
    index: number;
  }>;
}

/** Normalise a KV prefix to end with exactly one "/" (an empty prefix means the root). */
export function normalizePrefix(prefix: string): string {
  const p = prefix.replace(/^\/+/, "");
  return p === "" || p.endsWith("/") ? p : p + "/";
}

/** ACLs from Consul KV under a prefix. */
export class ConsulAclSource implements AclSource {
  readonly hasCatalog = true;
  readonly prefix: string;
  constructor(private readonly kv: KvReader, prefix: string) {
    this.prefix = normalizePrefix(prefix);
  }
  get description(): string {
    return `consul kv ${this.prefix}`;
  }
  async read(signal?: AbortSignal): Promise<AclSnapshot> {
    const res = await this.kv.kvTree(this.prefix, { signal });
    return this.fromKv(res.data, res.index);
  }
  /** One blocking query on the prefix at a time; a snapshot per change of Consul's index. */
  watch(w: AclWatch): Promise<void> {
    return blockingWatch({
      name: this.description,
      query: (index, signal, wait) => this.kv.kvTree(this.prefix, { index, wait, signal, stale: w.stale }),
      onChange: (data, index) => w.onSnapshot(this.fromKv(data, index)),
      onError: w.onError,
      signal: w.signal,
      wait: w.wait,
      log: w.log,
    });
  }
  /** Turn a KV listing into a snapshot. */
  fromKv(data: { key: string; value: Uint8Array | null }[], index?: number): AclSnapshot {
    const pairs = data
      .filter((p) => p.key.startsWith(this.prefix) && !p.key.endsWith("/"))
      .map((p) => ({ key: p.key.slice(this.prefix.length), value: p.value }));
    return snapshotFrom(pairs, index);
  }
}

/** ACLs from files: key = path relative to the directory, "/"-separated. Hidden files are skipped. */
export class DirAclSource implements AclSource {
  readonly hasCatalog = false;
  constructor(readonly dir: string) {}
  get description(): string {
    return `directory ${this.dir}`;
  }
  async read(signal?: AbortSignal): Promise<AclSnapshot> {
    const pairs: RawPair[] = [];
    try {
      const st = await Deno.stat(this.dir);
      if (!st.isDirectory) throw new ValidationError(`--acl-dir ${this.dir} is not a directory`);
    } catch (err) {
      if (err instanceof ValidationError) throw err;
      throw new ValidationError(`--acl-dir ${this.dir} cannot be read: ${(err as Error).message}`, {
        cause: err,
      });
    }
    await this.walk(this.dir, pairs, signal, 0);
    return snapshotFrom(pairs);
  }
  /** Read now, then again 100 ms after the last file event. */
  async watch(w: AclWatch): Promise<void> {
    let failures = 0;
    const reread = async () => {
      try {
        w.onSnapshot(await this.read(w.signal));
        failures = 0;
      } catch (err) {
        if (!w.signal.aborted) w.onError(err, ++failures);
      }
    };
    await reread();
    let debounce: ReturnType<typeof setTimeout> | undefined;
    try {
      const watcher = Deno.watchFs(this.dir, { recursive: true });
      w.signal.addEventListener("abort", () => watcher.close(), { once: true });
      for await (const _ev of watcher) {
        clearTimeout(debounce);
        debounce = setTimeout(reread, 100);
      }
    } catch (err) {
      if (!w.signal.aborted) w.onError(err, ++failures);
    } finally {
      clearTimeout(debounce);
    }
  }
  private async walk(dir: string, out: RawPair[], signal?: AbortSignal, depth = 0) {
    if (depth > 16) return;
    for await (const ent of Deno.readDir(dir)) {
      signal?.throwIfAborted();
      if (ent.name.startsWith(".") || ent.name.endsWith("~")) continue;
      const path = join(dir, ent.name);
      const st = await Deno.stat(path).catch(() => undefined);
      if (!st) continue;
      if (st.isDirectory) await this.walk(path, out, signal, depth + 1);
      else if (st.isFile) {
        const key = relative(this.dir, path).split(sep).join("/");
        if (st.size > MAX_VALUE_BYTES) out.push({ key, value: null, size: st.size });
        else out.push({ key, value: await Deno.readFile(path) });
      }
    }
  }
}
