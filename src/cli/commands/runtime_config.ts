/**
 * `runtime-config`: register (or remove) the runtime gate in dockerd's daemon.json without touching any
 * other setting; `runtime-shim`: print the pass-through shim that is registered. install.sh --runtime
 * writes the shim beside the binary and calls runtime-config. Changes take effect after dockerd restarts.
 */
import { ConfigError } from "../../errors.ts";
import type { Out } from "./io.ts";

/** The name containers use: `docker run --runtime egresstrator`. */
export const RUNTIME_NAME = "egresstrator";

type Json = Record<string, unknown>;

/** The shim's file name, beside the binary. */
export const SHIM_NAME = "egresstrator-runtime";

/** The shim's text (packaging/egresstrator-runtime, embedded in the compiled binary). */
export function shimText(): Promise<string> {
  return Deno.readTextFile(new URL("../../../packaging/egresstrator-runtime", import.meta.url));
}

/** Add the runtime (the shim; optionally the default) to a parsed daemon.json (pure). */
export function addRuntime(doc: Json, shim: string, makeDefault: boolean): Json {
  const runtimes = { ...(doc.runtimes as Json | undefined ?? {}) };
  runtimes[RUNTIME_NAME] = { path: shim };
  const out: Json = { ...doc, runtimes };
  if (makeDefault) out["default-runtime"] = RUNTIME_NAME;
  return out;
}

/** Remove the runtime, and the default-runtime setting when it points at it (pure). */
export function removeRuntime(doc: Json): Json {
  const out: Json = { ...doc };
  if (out.runtimes && typeof out.runtimes === "object") {
    const runtimes = { ...(out.runtimes as Json) };
    delete runtimes[RUNTIME_NAME];
    if (Object.keys(runtimes).length) out.runtimes = runtimes;
    else delete out.runtimes;
  }
  if (out["default-runtime"] === RUNTIME_NAME) delete out["default-runtime"];
  return out;
}

/** Options of `runtime-config`. */
export interface RuntimeConfigOptions {
  daemonJson: string;
  binary: string;
  /** The shim to register; default: egresstrator-runtime beside `binary`. */
  shim?: string;
  makeDefault?: boolean;
  remove?: boolean;
}

async function readDoc(path: string): Promise<Json> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return {};
    throw new ConfigError(`cannot read ${path}: ${(err as Error).message}`);
  }
  if (!text.trim()) return {};
  try {
    const doc = JSON.parse(text);
    if (doc && typeof doc === "object" && !Array.isArray(doc)) return doc as Json;
  } catch { /* reported below */ }
  throw new ConfigError(`${path} is not a JSON object; fix it first (nothing was changed)`);
}

/** The shim must be there, executable, and beside the binary it runs (it execs `<its dir>/egresstrator`). */
async function checkShim(shim: string, binary: string): Promise<void> {
  const fix =
    `install it: egresstrator runtime-shim > ${shim} && chmod 755 ${shim} (install.sh --runtime does this)`;
  const st = await Deno.stat(shim).catch(() => undefined);
  if (!st?.isFile || ((st.mode ?? 0) & 0o111) === 0) {
    throw new ConfigError(`no executable shim at ${shim}: ${fix}`);
  }
  if (shim.replace(/\/[^/]*$/, "") !== binary.replace(/\/[^/]*$/, "")) {
    throw new ConfigError(
      `the shim ${shim} runs the egresstrator beside it, not ${binary}: put them in one directory`,
    );
  }
}

/** Run `runtime-config`: rewrite daemon.json atomically, keeping a .bak of the previous one. */
export async function runtimeConfigCommand(opts: RuntimeConfigOptions, out: Out): Promise<number> {
  if (!opts.remove && !opts.binary.startsWith("/")) {
    throw new ConfigError(`--binary must be an absolute path, not "${opts.binary}"`);
  }
  const shim = opts.shim ?? `${opts.binary.replace(/\/[^/]*$/, "")}/${SHIM_NAME}`;
  if (!opts.remove) await checkShim(shim, opts.binary);
  const before = await readDoc(opts.daemonJson);
  const after = opts.remove ? removeRuntime(before) : addRuntime(before, shim, opts.makeDefault ?? false);
  if (JSON.stringify(before) === JSON.stringify(after)) {
    out.stdout(`${opts.daemonJson}: already up to date\n`);
    return 0;
  }
  const dir = opts.daemonJson.replace(/\/[^/]*$/, "") || "/";
  await Deno.mkdir(dir, { recursive: true });
  if (Object.keys(before).length) {
    await Deno.copyFile(opts.daemonJson, `${opts.daemonJson}.bak`).catch(() => {});
  }
  const tmp = `${opts.daemonJson}.egresstrator-tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(after, null, 2) + "\n", { mode: 0o644 });
  await Deno.rename(tmp, opts.daemonJson);
  const what = opts.remove
    ? "removed the egresstrator runtime from"
    : `registered runtime "${RUNTIME_NAME}" in`;
  out.stdout(`${what} ${opts.daemonJson}; restart dockerd to apply: systemctl restart docker\n`);
  if (!opts.remove) {
    out.stdout(
      opts.makeDefault
        ? "every container now starts through the gate (default-runtime)\n"
        : `use it per container: docker run --runtime ${RUNTIME_NAME} -e EGRESSTRATOR_ENABLE=1 ...\n`,
    );
  }
  return 0;
}
