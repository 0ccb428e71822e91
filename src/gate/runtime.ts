/**
 * The OCI runtime gate: dockerd runs this instead of runc. Every call passes straight to the real runc;
 * after a successful `create` of an opted-in container (namespace made, process not started) its rules
 * go in before `create` returns, so they are in place before `start`. Kept free of heavy imports so
 * pass-through costs as little as possible.
 */
import { bundleDir, containerId, parseRuncArgs, processFile } from "./runc_args.ts";
import { parseEnvFile } from "./env_file.ts";

const RUNC_CANDIDATES = ["/usr/bin/runc", "/usr/sbin/runc", "/usr/local/bin/runc", "/usr/local/sbin/runc"];

/** Settings from the process env over the env file (EGRESSTRATOR_ENV_FILE, default /etc/default/egresstrator). */
export function gateEnv(processEnv: Record<string, string | undefined>): Record<string, string | undefined> {
  const path = processEnv.EGRESSTRATOR_ENV_FILE ?? "/etc/default/egresstrator";
  let fileEnv: Record<string, string> = {};
  try {
    fileEnv = parseEnvFile(Deno.readTextFileSync(path));
  } catch { /* no env file: process env and defaults only */ }
  return { ...fileEnv, ...processEnv };
}

/** The real runc: EGRESSTRATOR_RUNC, else the first one found in the usual places. */
export function findRunc(env: Record<string, string | undefined>): string {
  if (env.EGRESSTRATOR_RUNC) return env.EGRESSTRATOR_RUNC;
  for (const p of RUNC_CANDIDATES) {
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch { /* next */ }
  }
  return "runc";
}

async function passThrough(runc: string, argv: string[]): Promise<number> {
  const child = new Deno.Command(runc, { args: argv, stdin: "inherit", stdout: "inherit", stderr: "inherit" })
    .spawn();
  // containerd may signal the runtime; hand the usual ones on to runc.
  const forward = (sig: Deno.Signal) => () => child.kill(sig);
  const handlers = (["SIGTERM", "SIGINT", "SIGHUP"] as const).map((s) => [s, forward(s)] as const);
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);
  try {
    return (await child.status).code;
  } finally {
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  }
}

/** `runc state <id>`: the created container's init pid. */
async function runcPid(runc: string, globals: string[], id: string): Promise<number> {
  const out = await new Deno.Command(runc, {
    args: [...globals, "state", id],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (out.code !== 0) throw new Error(`runc state ${id}: ${new TextDecoder().decode(out.stderr).trim()}`);
  const s = JSON.parse(new TextDecoder().decode(out.stdout)) as { pid?: number };
  if (!s.pid) throw new Error(`runc state ${id}: no pid`);
  return s.pid;
}

/**
 * Tell whoever called runc why: stderr, and runc's `--log` file, which is where containerd looks for
 * the message of a failed create (it shows in `docker run`'s error).
 */
export function say(text: string, globals: string[] = []): void {
  const msg = `egresstrator gate: ${text}`;
  Deno.stderr.writeSync(new TextEncoder().encode(msg + "\n"));
  const i = globals.findIndex((g) => g === "--log" || g.startsWith("--log="));
  const log = i < 0 ? undefined : globals[i].startsWith("--log=") ? globals[i].slice(6) : globals[i + 1];
  if (!log) return;
  const json = globals.includes("json") || globals.includes("--log-format=json");
  const line = json ? JSON.stringify({ level: "error", msg, time: new Date().toISOString() }) : msg;
  try {
    Deno.writeTextFileSync(log, line + "\n", { append: true });
  } catch { /* the stderr copy is all there is */ }
}

/**
 * After `runc create` the namespace exists and the process waits for `runc start`: the moment to put
 * rules in place. Refusing here (delete the created container, fail the create) lets containerd clean
 * up; a failed `start` would leave a task it cannot delete. Returns false when the create must fail.
 */
async function gateCreated(
  runc: string,
  globals: string[],
  id: string,
  containerEnv: string[],
  env: Record<string, string | undefined>,
) {
  try {
    const pid = await runcPid(runc, globals, id);
    // Only opted-in containers pay for loading the rule machinery.
    const { gateStart } = await import("./start.ts");
    const refusal = await gateStart({ id, pid, containerEnv, env });
    if (refusal === undefined) return true;
    say(refusal, globals);
  } catch (err) {
    // Could not even tell whether it opted in: refuse rather than risk an unfiltered start.
    say(`refusing ${id}: ${err instanceof Error ? err.message : String(err)}`, globals);
  }
  await new Deno.Command(runc, {
    args: [...globals, "delete", "--force", id],
    stdout: "null",
    stderr: "null",
  })
    .output().catch(() => {});
  return false;
}

/**
 * Before `runc create` of an opted-in bundle: refuse what cannot be filtered, drop CAP_NET_RAW from the
 * spec. Returns the container's env when its rules must go in after create, `undefined` when the create
 * passes through untouched, or an exit code when it was refused.
 */
async function beforeCreate(
  rest: string[],
  globals: string[],
  env: Record<string, string | undefined>,
): Promise<string[] | undefined | number> {
  const id = containerId(rest);
  if (!id) return undefined;
  const path = `${bundleDir(rest) ?? Deno.cwd()}/config.json`;
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (err) {
    say(`refusing ${id}: cannot read ${path}: ${err instanceof Error ? err.message : String(err)}`, globals);
    return 1;
  }
  // The cheap test first: a bundle without the opt-in anywhere in it passes untouched.
  if (!text.includes("EGRESSTRATOR_ENABLE=1")) return undefined;
  const { decideBundle } = await import("./bundle.ts");
  const d = decideBundle(path, text, env);
  if (d.refuse) {
    say(`refusing to start ${id.slice(0, 12)}: ${d.refuse}`, globals);
    return 1;
  }
  if (d.note) say(`${id.slice(0, 12)}: ${d.note}`);
  return d.enforceEnv;
}

/** `runc exec` of a process that opted in (its env is the container's): the same capability rules. */
async function beforeExec(rest: string[], globals: string[], env: Record<string, string | undefined>) {
  const path = processFile(rest);
  if (!path) return 0;
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch {
    return 0; // runc reports a missing process file itself
  }
  if (!text.includes("EGRESSTRATOR_ENABLE=1")) return 0;
  const { decideExec } = await import("./bundle.ts");
  const refusal = decideExec(path, text, env);
  if (!refusal) return 0;
  say(`refusing exec in ${containerId(rest)?.slice(0, 12) ?? "?"}: ${refusal}`, globals);
  return 1;
}

/** Run as the runtime. Returns the exit code for main.ts. */
export async function runGate(
  argv: string[],
  processEnv: Record<string, string | undefined>,
): Promise<number> {
  const env = gateEnv(processEnv);
  const runc = findRunc(env);
  const args = parseRuncArgs(argv);
  if (args.command === "exec" && (await beforeExec(args.rest, args.globals, env)) !== 0) return 1;
  const before = args.command === "create" ? await beforeCreate(args.rest, args.globals, env) : undefined;
  if (typeof before === "number") return before;
  const code = await passThrough(runc, argv);
  if (code !== 0 || before === undefined) return code;
  return (await gateCreated(runc, args.globals, containerId(args.rest)!, before, env)) ? 0 : 1;
}
