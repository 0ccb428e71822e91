/**
 * The OCI runtime gate: dockerd runs this instead of runc. Every call passes straight to the real runc,
 * except `start <id>` of an opted-in container: its rules go into the (already created) network
 * namespace first. Kept free of heavy imports so pass-through costs as little as possible.
 */
import { parseRuncArgs, startId } from "./runc_args.ts";
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

/** `runc state <id>`: the created container's init pid and bundle. */
async function runcState(
  runc: string,
  globals: string[],
  id: string,
): Promise<{ pid: number; bundle: string }> {
  const out = await new Deno.Command(runc, {
    args: [...globals, "state", id],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (out.code !== 0) throw new Error(`runc state ${id}: ${new TextDecoder().decode(out.stderr).trim()}`);
  const s = JSON.parse(new TextDecoder().decode(out.stdout)) as { pid?: number; bundle?: string };
  if (!s.pid || !s.bundle) throw new Error(`runc state ${id}: no pid or bundle`);
  return { pid: s.pid, bundle: s.bundle };
}

/** The container's env from its bundle's config.json. */
function bundleEnv(bundle: string): string[] {
  const config = JSON.parse(Deno.readTextFileSync(`${bundle}/config.json`)) as {
    process?: { env?: unknown };
  };
  const env = config.process?.env;
  return Array.isArray(env) ? env.filter((e): e is string => typeof e === "string") : [];
}

/** Run as the runtime. Returns the exit code for main.ts. */
export async function runGate(
  argv: string[],
  processEnv: Record<string, string | undefined>,
): Promise<number> {
  const env = gateEnv(processEnv);
  const runc = findRunc(env);
  const args = parseRuncArgs(argv);
  const id = args.command === "start" ? startId(args.rest) : undefined;
  if (id) {
    try {
      const { pid, bundle } = await runcState(runc, args.globals, id);
      const containerEnv = bundleEnv(bundle);
      if (containerEnv.includes("EGRESSTRATOR_ENABLE=1")) {
        // Only opted-in starts pay for loading the rule machinery.
        const { gateStart } = await import("./start.ts");
        const ok = await gateStart({ id, pid, containerEnv, env });
        if (!ok) return 1;
      }
    } catch (err) {
      // Could not even tell whether it opted in: refuse rather than risk an unfiltered start.
      const msg = err instanceof Error ? err.message : String(err);
      Deno.stderr.writeSync(new TextEncoder().encode(`egresstrator gate: refusing to start ${id}: ${msg}\n`));
      return 1;
    }
  }
  return await passThrough(runc, argv);
}
