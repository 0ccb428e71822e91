/**
 * The runtime gate as dockerd runs it, for the gate tests and benchmark: a wrapper script registered with
 * `--add-runtime`, which runs egresstrator from source as the OCI runtime.
 */
import { REPO_ROOT } from "./run_cli.ts";

/** Deno's cache dir (`deno info --json`), which a wrapper run with a clean env must be told. */
export async function denoDir(): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stdout: "piped" }).output();
  return (JSON.parse(new TextDecoder().decode(out.stdout)) as { denoDir: string }).denoDir;
}

/**
 * Write `<dir>/<name>.sh` (name `runtime` by default), the runtime dockerd runs: a clean env (nothing leaks
 * from the test's), the env file `<dir>/gate.env`, then `deno run -A main.ts runtime "$@"`. With `trace`,
 * each call's arguments are first appended to that file. Returns the script's path.
 */
export async function writeGateWrapper(
  dir: string,
  opts: { name?: string; trace?: string } = {},
): Promise<string> {
  const path = `${dir}/${opts.name ?? "runtime"}.sh`;
  const script = [
    "#!/bin/sh",
    ...(opts.trace ? [`echo "$*" >> '${opts.trace}'`] : []),
    `exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \\`,
    `  DENO_DIR='${await denoDir()}' EGRESSTRATOR_ENV_FILE='${dir}/gate.env' \\`,
    `  '${Deno.execPath()}' run -A --quiet '${REPO_ROOT}/main.ts' runtime "$@"`,
    "",
  ].join("\n");
  await Deno.writeTextFile(path, script, { mode: 0o755 });
  return path;
}
