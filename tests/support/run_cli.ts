/**
 * Run the CLI as users do: `deno run -A --quiet main.ts …` in a child process, from the repo root.
 * The child does not inherit the parent's CONSUL_*, EGRESSTRATOR_* or DOCKER_* variables (so a developer's
 * shell cannot change a test's outcome); everything else (PATH, HOME, DENO_DIR…) is kept, then opts.env added.
 */
import { fileURLToPath } from "node:url";

/** Absolute path of the repository root. */
export const REPO_ROOT: string = fileURLToPath(new URL("../../", import.meta.url)).replace(/\/$/, "");

/** What a CLI run produced. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options of {@link runCli}. */
export interface RunCliOptions {
  env?: Record<string, string>;
  stdin?: string;
  /** Kill the child after this long (default 15 s) and fail. */
  timeoutMs?: number;
}

const SCRUBBED = /^(CONSUL_|EGRESSTRATOR_|DOCKER_)/;

/**
 * The environment of an egresstrator child process: this process's, without CONSUL_*, EGRESSTRATOR_* and
 * DOCKER_* variables, then `extra`. Spawn with `clearEnv: true`.
 */
export function cliEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(Deno.env.toObject())) if (!SCRUBBED.test(k)) env[k] = v;
  return Object.assign(env, extra);
}

/** Spawn `deno run -A --quiet main.ts ...args` and collect its exit code and output. */
export async function runCli(args: string[], opts: RunCliOptions = {}): Promise<CliResult> {
  const env = cliEnv(opts.env);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", `${REPO_ROOT}/main.ts`, ...args],
    cwd: REPO_ROOT,
    env,
    clearEnv: true,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timeoutMs = opts.timeoutMs ?? 15_000;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, timeoutMs);
  try {
    if (opts.stdin !== undefined) {
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode(opts.stdin));
      await w.close();
    }
    const out = await child.output();
    if (timedOut) {
      throw new Error(`egresstrator ${args.join(" ")} did not finish within ${timeoutMs} ms (killed)`);
    }
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } finally {
    clearTimeout(timer);
  }
}
