/**
 * The runtime gate as dockerd runs it, for the gate tests and benchmark: the shim registered with
 * `--add-runtime`, beside a stand-in binary that runs egresstrator from source.
 */
import { REPO_ROOT } from "./run_cli.ts";

/** Deno's cache dir (`deno info --json`), which a wrapper run with a clean env must be told. */
export async function denoDir(): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stdout: "piped" }).output();
  return (JSON.parse(new TextDecoder().decode(out.stdout)) as { denoDir: string }).denoDir;
}

/**
 * The gate installed as install.sh leaves it, in `<dir>/<name>/`: `egresstrator` (a stand-in for the
 * binary: a clean env, the env file `<dir>/gate.env`, then `deno run -A main.ts "$@"`) and beside it the
 * shim `egresstrator-runtime`, exactly as `egresstrator runtime-shim` prints it. Returns the shim's path,
 * which dockerd is given as the runtime: the shipped file with the env file's path set in its first lines
 * (and with `trace`, a line that appends every runtime call's arguments to that file).
 */
export async function writeGateWrapper(
  dir: string,
  opts: { name?: string; trace?: string } = {},
): Promise<string> {
  const bin = `${dir}/${opts.name ?? "gate"}`;
  await Deno.mkdir(bin, { recursive: true });
  const script = [
    "#!/bin/sh",
    `exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \\`,
    `  DENO_DIR='${await denoDir()}' EGRESSTRATOR_ENV_FILE='${dir}/gate.env' \\`,
    `  '${Deno.execPath()}' run -A --quiet '${REPO_ROOT}/main.ts' "$@"`,
    "",
  ].join("\n");
  await Deno.writeTextFile(`${bin}/egresstrator`, script, { mode: 0o755 });
  const shim = `${bin}/egresstrator-runtime`;
  // dockerd's env does not name the test's env file: the copy sets it, as /etc/default/egresstrator is for
  // an installed shim. Nothing else differs from the shipped file.
  const head = [`EGRESSTRATOR_ENV_FILE='${dir}/gate.env'; export EGRESSTRATOR_ENV_FILE`];
  if (opts.trace) head.push(`echo "$*" >> '${opts.trace}'`);
  const shipped = await Deno.readTextFile(`${REPO_ROOT}/packaging/egresstrator-runtime`);
  const text = shipped.replace("\n", `\n${head.join("\n")}\n`);
  await Deno.writeTextFile(shim, text, { mode: 0o755 });
  return shim;
}
