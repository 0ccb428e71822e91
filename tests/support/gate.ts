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
 * (and with `trace`, a line that appends every runtime call's arguments to that file), and the PATH it
 * searches taken from `<dir>/shim.path` while that file exists (see shimPath).
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
  const head = [
    `EGRESSTRATOR_ENV_FILE='${dir}/gate.env'; export EGRESSTRATOR_ENV_FILE`,
    `if [ -r '${dir}/shim.path' ]; then read -r PATH <'${dir}/shim.path'; export PATH; fi`,
  ];
  if (opts.trace) head.push(`echo "$*" >> '${opts.trace}'`);
  const shipped = await Deno.readTextFile(`${REPO_ROOT}/packaging/egresstrator-runtime`);
  const text = shipped.replace("\n", `\n${head.join("\n")}\n`);
  await Deno.writeTextFile(shim, text, { mode: 0o755 });
  return shim;
}

/**
 * Make the shims of `writeGateWrapper(dir)` search only a directory holding links to `tools` (plus `grep`
 * and `env`, which the shim and the stand-in binary need): the host's perl or curl can be taken away from
 * the shim without touching the host. `undefined` gives the shim dockerd's PATH back.
 */
export async function shimPath(dir: string, tools: string[] | undefined): Promise<void> {
  if (!tools) {
    await Deno.remove(`${dir}/shim.path`).catch(() => {});
    return;
  }
  const bin = `${dir}/shim-bin-${tools.join("-") || "none"}`;
  await Deno.mkdir(bin, { recursive: true });
  for (const tool of ["grep", "env", ...tools]) {
    const found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map((d) => `${d}/${tool}`).find((p) => {
      try {
        return Deno.statSync(p).isFile;
      } catch {
        return false;
      }
    });
    if (!found) throw new Error(`shimPath: no ${tool} on this host`);
    await Deno.symlink(found, `${bin}/${tool}`).catch((err) => {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
    });
  }
  await Deno.writeTextFile(`${dir}/shim.path`, bin + "\n");
}
