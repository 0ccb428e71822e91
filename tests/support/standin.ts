/**
 * A stand-in for the compiled binary, which cannot be built here (no denort): a shell script that runs
 * main.ts under `deno run` with exactly the permission flags scripts/compile.sh bakes into the binary, laid
 * out as a release directory (`egresstrator-linux-<arch>`, the packaging files, install.sh, sha256sums) so
 * install.sh installs it as it would a download. Tests that install it see what the shipped binary may do.
 */
import { REPO_ROOT } from "./run_cli.ts";
import { denoDir } from "./gate.ts";

/** The release binary name for this machine, as install.sh computes it. */
export const PLATFORM_BIN = `egresstrator-linux-${Deno.build.arch === "aarch64" ? "arm64" : "x64"}`;

/** The `permissions=( ... )` flags of scripts/compile.sh. */
export async function compilePermissions(): Promise<string[]> {
  const script = await Deno.readTextFile(`${REPO_ROOT}/scripts/compile.sh`);
  const block = /^permissions=\(\n([\s\S]*?)\n\)$/m.exec(script);
  if (!block) throw new Error("scripts/compile.sh has no permissions=( ... ) block");
  return block[1].split("\n").map((l) => l.trim()).filter(Boolean);
}

/** Where the stand-in finds deno, the repository and Deno's cache (their paths where it runs). */
export interface StandInPaths {
  deno: string;
  repo: string;
  denoDir: string;
}

/** The stand-in script: `deno run --cached-only --frozen <compile.sh's permissions> main.ts "$@"`. */
export async function standInScript(paths?: StandInPaths): Promise<string> {
  const p = paths ?? { deno: Deno.execPath(), repo: REPO_ROOT, denoDir: await denoDir() };
  const flags = (await compilePermissions()).join(" ");
  return [
    "#!/bin/sh",
    "# Stand-in for the compiled egresstrator (tests/support/standin.ts): main.ts with compile.sh's permissions.",
    `exec env DENO_DIR='${p.denoDir}' '${p.deno}' run --quiet --no-prompt --cached-only --frozen ${flags} \\`,
    `  '${p.repo}/main.ts' "$@"`,
    "",
  ].join("\n");
}

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Write a release directory at `dir` with the stand-in as the binary (see {@link standInScript}), as
 * scripts/compile.sh lays one out; returns the binary's path.
 */
export async function standInRelease(dir: string, paths?: StandInPaths): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/${PLATFORM_BIN}`, await standInScript(paths), { mode: 0o755 });
  await Deno.copyFile(`${REPO_ROOT}/packaging/egresstrator.service`, `${dir}/egresstrator.service`);
  await Deno.copyFile(`${REPO_ROOT}/packaging/egresstrator.env`, `${dir}/egresstrator.env`);
  await Deno.copyFile(`${REPO_ROOT}/install.sh`, `${dir}/install.sh`);
  let sums = "";
  for (const f of [PLATFORM_BIN, "egresstrator.service", "egresstrator.env", "install.sh"]) {
    sums += `${await sha256(`${dir}/${f}`)}  ${f}\n`;
  }
  await Deno.writeTextFile(`${dir}/sha256sums`, sums);
  return `${dir}/${PLATFORM_BIN}`;
}
