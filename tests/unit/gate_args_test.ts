/**
 * The runtime gate's pure parts: runc command lines as containerd's shim sends them, the env file the gate
 * shares with the daemon, and registering the runtime in daemon.json (pure functions and the CLI).
 */
import assert from "node:assert/strict";
import { bundleDir, containerId, parseRuncArgs, type RuncArgs } from "../../src/gate/runc_args.ts";
import { parseEnvFile } from "../../src/gate/env_file.ts";
import { addRuntime, removeRuntime, RUNTIME_NAME } from "../../src/cli/commands/runtime_config.ts";
import { runCli } from "../support/run_cli.ts";

const ID = "3f2a9c1e0b7d4a5f8e6c2b1a0d9f8e7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e";
const ROOT = "/var/run/docker/runtime-runc/moby";
const LOG = `/run/containerd/io.containerd.runtime.v2.task/moby/${ID}/log.json`;
/** The global options containerd's runc shim puts before every command. */
const SHIM = ["--root", ROOT, "--log", LOG, "--log-format", "json"];

const RUNC_CASES: { name: string; argv: string[]; want: RuncArgs; id?: string; bundle?: string }[] = [
  {
    name: "start as the shim sends it",
    argv: [...SHIM, "start", ID],
    want: { globals: SHIM, command: "start", rest: [ID] },
    id: ID,
  },
  {
    name: "start with --systemd-cgroup (a flag without a value)",
    argv: [...SHIM, "--systemd-cgroup", "start", ID],
    want: { globals: [...SHIM, "--systemd-cgroup"], command: "start", rest: [ID] },
    id: ID,
  },
  {
    name: "--root=/x form",
    argv: ["--root=/x", "--log-format=json", "start", ID],
    want: { globals: ["--root=/x", "--log-format=json"], command: "start", rest: [ID] },
    id: ID,
  },
  {
    name: "--rootless and --criu take values",
    argv: ["--debug", "--rootless", "auto", "--criu", "/usr/sbin/criu", "start", ID],
    want: {
      globals: ["--debug", "--rootless", "auto", "--criu", "/usr/sbin/criu"],
      command: "start",
      rest: [ID],
    },
    id: ID,
  },
  {
    name: "create with its own options",
    argv: [...SHIM, "--systemd-cgroup", "create", "--bundle", "/b", "--pid-file", "/p", ID],
    want: {
      globals: [...SHIM, "--systemd-cgroup"],
      command: "create",
      rest: ["--bundle", "/b", "--pid-file", "/p", ID],
    },
    id: ID,
    bundle: "/b",
  },
  {
    name: "create with --bundle=, a console socket and preserved fds",
    argv: [...SHIM, "create", "--bundle=/b", "--console-socket", "/s.sock", "--preserve-fds", "2", ID],
    want: {
      globals: SHIM,
      command: "create",
      rest: ["--bundle=/b", "--console-socket", "/s.sock", "--preserve-fds", "2", ID],
    },
    id: ID,
    bundle: "/b",
  },
  {
    name: "create -b, the id before the options, --no-pivot",
    argv: [...SHIM, "create", ID, "-b", "/b", "--no-pivot", "--pid-file=/p"],
    want: { globals: SHIM, command: "create", rest: [ID, "-b", "/b", "--no-pivot", "--pid-file=/p"] },
    id: ID,
    bundle: "/b",
  },
  {
    name: "create without --bundle (runc's default: the current directory)",
    argv: ["create", "--pid-file", "/p", ID],
    want: { globals: [], command: "create", rest: ["--pid-file", "/p", ID] },
    id: ID,
  },
  {
    name: "delete --force",
    argv: [...SHIM, "delete", "--force", ID],
    want: { globals: SHIM, command: "delete", rest: ["--force", ID] },
    id: ID,
  },
  {
    name: "state",
    argv: [...SHIM, "state", ID],
    want: { globals: SHIM, command: "state", rest: [ID] },
    id: ID,
  },
  {
    name: "exec (docker exec) is not a start",
    argv: [...SHIM, "exec", "--process", "/tmp/p.json", "--detach", "--pid-file", "/p", ID],
    want: {
      globals: SHIM,
      command: "exec",
      rest: ["--process", "/tmp/p.json", "--detach", "--pid-file", "/p", ID],
    },
  },
  {
    name: "kill with a signal",
    argv: [...SHIM, "kill", ID, "9"],
    want: { globals: SHIM, command: "kill", rest: [ID, "9"] },
  },
  {
    name: "--version alone",
    argv: ["--version"],
    want: { globals: ["--version"], command: undefined, rest: [] },
  },
  { name: "nothing", argv: [], want: { globals: [], command: undefined, rest: [] } },
  {
    name: "a value flag at the very end",
    argv: ["--root"],
    want: { globals: ["--root"], command: undefined, rest: [] },
  },
];

for (const c of RUNC_CASES) {
  Deno.test(`parseRuncArgs: ${c.name}`, () => {
    const got = parseRuncArgs(c.argv);
    assert.deepEqual(got, c.want);
    if (c.id) assert.equal(containerId(got.rest), c.id);
    if (got.command === "create") assert.equal(bundleDir(got.rest), c.bundle);
  });
}

Deno.test("parseRuncArgs does not modify its input", () => {
  const argv = Object.freeze([...SHIM, "start", ID]);
  parseRuncArgs(argv);
  assert.deepEqual(argv, [...SHIM, "start", ID]);
});

Deno.test("containerId: the last argument that is neither an option nor its value", () => {
  const cases: [string[], string | undefined][] = [
    [[ID], ID],
    [["--detach", ID], ID],
    [["--pid-file", "/p", ID], ID],
    [["--bundle", "/b"], undefined],
    [["--console-socket", "/s"], undefined],
    [[], undefined],
    [["--detach"], undefined],
  ];
  for (const [rest, want] of cases) {
    assert.equal(containerId(rest), want, JSON.stringify(rest));
  }
});

Deno.test("bundleDir: --bundle, -b and --bundle=; none or a missing value is undefined", () => {
  const cases: [string[], string | undefined][] = [
    [["--bundle", "/b", ID], "/b"],
    [["-b", "/b", ID], "/b"],
    [["--bundle=/b", ID], "/b"],
    [["--pid-file", "/p", ID], undefined],
    [["--bundle"], undefined],
    [[], undefined],
  ];
  for (const [rest, want] of cases) assert.equal(bundleDir(rest), want, JSON.stringify(rest));
});

Deno.test("parseEnvFile: comments, export, quotes, blanks and bad lines", () => {
  const text = [
    "# egresstrator settings",
    "",
    "CONSUL_HTTP_ADDR=10.0.0.5:8500",
    "export CONSUL_PATH=egress/acl/",
    "export\tEGRESSTRATOR_LISTEN=unix:///run/egresstrator/egresstrator.sock",
    'EGRESSTRATOR_GATE_LOG="/var/log/egresstrator gate.log"',
    "EGRESSTRATOR_GATE_ON_FAILURE='refuse'",
    "   EGRESSTRATOR_GATE_TIMEOUT = 3s",
    "  INDENTED=yes  ",
    "EMPTY=",
    "URL=http://consul?a=b#frag",
    "INLINE=1 # not a comment in an EnvironmentFile",
    "MIXED=\"half'",
    'LONE="',
    "no equals sign",
    "=nokey",
    "1BAD=x",
    "BAD-NAME=x",
    "; semicolon line",
    "export",
    "DUP=first",
    "DUP=second",
  ].join("\n");
  assert.deepEqual(parseEnvFile(text), {
    CONSUL_HTTP_ADDR: "10.0.0.5:8500",
    CONSUL_PATH: "egress/acl/",
    EGRESSTRATOR_LISTEN: "unix:///run/egresstrator/egresstrator.sock",
    EGRESSTRATOR_GATE_LOG: "/var/log/egresstrator gate.log",
    EGRESSTRATOR_GATE_ON_FAILURE: "refuse",
    INDENTED: "yes",
    EMPTY: "",
    URL: "http://consul?a=b#frag",
    INLINE: "1 # not a comment in an EnvironmentFile",
    MIXED: "\"half'",
    LONE: '"',
    DUP: "second",
  });
});

Deno.test("parseEnvFile: CRLF line ends and an empty file", () => {
  assert.deepEqual(parseEnvFile('A=1\r\nB="two"\r\n'), { A: "1", B: "two" });
  assert.deepEqual(parseEnvFile(""), {});
  assert.deepEqual(parseEnvFile("\n\n# only comments\n"), {});
});

const BIN = "/usr/local/bin/egresstrator-runtime";
const OURS = { path: BIN };

Deno.test("addRuntime: adds ours, keeps every other setting and runtime, and does not mutate", () => {
  const doc = {
    "log-driver": "journald",
    "default-runtime": "nvidia",
    runtimes: { nvidia: { path: "nvidia-container-runtime", runtimeArgs: [] } },
    "insecure-registries": ["r.local:5000"],
  };
  const before = structuredClone(doc);
  const added = addRuntime(doc, BIN, false);
  assert.deepEqual(doc, before, "input mutated");
  assert.deepEqual(added, { ...doc, runtimes: { ...doc.runtimes, [RUNTIME_NAME]: OURS } });
  assert.equal(added["default-runtime"], "nvidia", "someone else's default-runtime is kept");
  assert.equal(addRuntime(doc, BIN, true)["default-runtime"], RUNTIME_NAME);
  assert.deepEqual(addRuntime({}, BIN, false), { runtimes: { [RUNTIME_NAME]: OURS } });
  // Re-adding updates our entry in place.
  const moved = addRuntime(addRuntime({}, "/old/egresstrator-runtime", false), BIN, false);
  assert.deepEqual(moved, { runtimes: { [RUNTIME_NAME]: OURS } });
});

Deno.test("removeRuntime: removes ours; others and someone else's default-runtime stay", () => {
  const doc = {
    debug: true,
    "default-runtime": "nvidia",
    runtimes: { nvidia: { path: "nvidia-container-runtime" }, [RUNTIME_NAME]: OURS },
  };
  const before = structuredClone(doc);
  assert.deepEqual(removeRuntime(doc), {
    debug: true,
    "default-runtime": "nvidia",
    runtimes: { nvidia: { path: "nvidia-container-runtime" } },
  });
  assert.deepEqual(doc, before, "input mutated");
  // Ours was the default and the only runtime: both keys go.
  assert.deepEqual(
    removeRuntime({ debug: true, "default-runtime": RUNTIME_NAME, runtimes: { [RUNTIME_NAME]: OURS } }),
    {
      debug: true,
    },
  );
  assert.deepEqual(removeRuntime({ debug: true }), { debug: true });
  // Round trip.
  const plain = { "log-level": "warn", runtimes: { crun: { path: "/usr/bin/crun" } } };
  assert.deepEqual(removeRuntime(addRuntime(plain, BIN, true)), plain);
});

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "egt-runtime-config-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

/** A binary's directory with the shim installed beside it, as install.sh leaves it. */
async function installed(dir: string): Promise<{ bin: string; ours: { path: string } }> {
  await Deno.mkdir(`${dir}/bin`, { recursive: true });
  const shim = `${dir}/bin/egresstrator-runtime`;
  const printed = await runCli(["runtime-shim"]);
  assert.equal(printed.code, 0, printed.stderr);
  await Deno.writeTextFile(shim, printed.stdout, { mode: 0o755 });
  return { bin: `${dir}/bin/egresstrator`, ours: { path: shim } };
}
const readJson = async (p: string) => JSON.parse(await Deno.readTextFile(p));

Deno.test("runtime-config CLI: creates a missing daemon.json, then says already up to date", async () => {
  await withTemp(async (dir) => {
    const path = `${dir}/etc/docker/daemon.json`;
    const { bin, ours } = await installed(dir);
    const args = ["runtime-config", "--daemon-json", path, "--binary", bin];
    const first = await runCli(args);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /registered runtime "egresstrator" in .*daemon\.json; restart dockerd/);
    assert.match(first.stdout, /docker run --runtime egresstrator -e EGRESSTRATOR_ENABLE=1/);
    assert.deepEqual(await readJson(path), { runtimes: { [RUNTIME_NAME]: ours } });
    assert.equal(await exists(`${path}.bak`), false, "no .bak for a file that did not exist");
    const text = await Deno.readTextFile(path);
    const second = await runCli(args);
    assert.equal(second.code, 0, second.stderr);
    assert.equal(second.stdout, `${path}: already up to date\n`);
    assert.equal(await Deno.readTextFile(path), text);
    assert.equal(await exists(`${path}.bak`), false);
    assert.deepEqual([...Deno.readDirSync(`${dir}/etc/docker`)].map((e) => e.name), ["daemon.json"]);
  });
});

Deno.test("runtime-config CLI: keeps other settings, writes a .bak, --default and --remove", async () => {
  await withTemp(async (dir) => {
    const path = `${dir}/daemon.json`;
    const original = { "log-driver": "journald", runtimes: { crun: { path: "/usr/bin/crun" } } };
    const originalText = JSON.stringify(original, null, 4);
    await Deno.writeTextFile(path, originalText);
    const { bin, ours } = await installed(dir);
    const add = await runCli(["runtime-config", "--daemon-json", path, "--binary", bin, "--default"]);
    assert.equal(add.code, 0, add.stderr);
    assert.match(add.stdout, /every container now starts through the gate \(default-runtime\)/);
    assert.deepEqual(await readJson(path), {
      ...original,
      runtimes: { ...original.runtimes, [RUNTIME_NAME]: ours },
      "default-runtime": RUNTIME_NAME,
    });
    assert.equal(await Deno.readTextFile(`${path}.bak`), originalText, ".bak holds the previous file");
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o644);

    const remove = await runCli(["runtime-config", "--daemon-json", path, "--remove"]);
    assert.equal(remove.code, 0, remove.stderr);
    assert.match(remove.stdout, /removed the egresstrator runtime from/);
    assert.deepEqual(await readJson(path), original);
    assert.deepEqual((await readJson(`${path}.bak`))["default-runtime"], RUNTIME_NAME);
    const again = await runCli(["runtime-config", "--daemon-json", path, "--remove"]);
    assert.equal(again.stdout, `${path}: already up to date\n`);
  });
});

Deno.test("runtime-config CLI: no shim beside the binary is a usage error that says how to install it", async () => {
  await withTemp(async (dir) => {
    const path = `${dir}/daemon.json`;
    const r = await runCli(["runtime-config", "--daemon-json", path, "--binary", `${dir}/egresstrator`]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(
      r.stderr,
      /no executable shim at .*egresstrator-runtime: install it: egresstrator runtime-shim >/,
    );
    assert.equal(await exists(path), false, "nothing written");
    const printed = await runCli(["runtime-shim"]);
    assert.equal(
      printed.stdout,
      await Deno.readTextFile(new URL("../../packaging/egresstrator-runtime", import.meta.url)),
    );
  });
});

Deno.test("runtime-config CLI: --remove keeps someone else's default-runtime", async () => {
  await withTemp(async (dir) => {
    const path = `${dir}/daemon.json`;
    const doc = {
      "default-runtime": "crun",
      runtimes: { crun: { path: "/usr/bin/crun" }, [RUNTIME_NAME]: OURS },
    };
    await Deno.writeTextFile(path, JSON.stringify(doc));
    const r = await runCli(["runtime-config", "--daemon-json", path, "--remove"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await readJson(path), {
      "default-runtime": "crun",
      runtimes: { crun: { path: "/usr/bin/crun" } },
    });
  });
});

Deno.test("runtime-config CLI: invalid JSON and a non-object are refused, the file unchanged", async () => {
  await withTemp(async (dir) => {
    const path = `${dir}/daemon.json`;
    const { bin } = await installed(dir);
    for (const text of ['{"log-driver": "journald",', "[]", '"text"', "null"]) {
      await Deno.writeTextFile(path, text);
      const r = await runCli(["runtime-config", "--daemon-json", path, "--binary", bin]);
      assert.equal(r.code, 2, `${text}: ${r.stdout} ${r.stderr}`);
      assert.match(r.stderr, /is not a JSON object; fix it first \(nothing was changed\)/);
      assert.equal(r.stdout, "");
      assert.equal(await Deno.readTextFile(path), text);
      assert.equal(await exists(`${path}.bak`), false);
    }
  });
});

Deno.test("runtime-config CLI: an empty file counts as {}; a relative --binary is refused", async () => {
  await withTemp(async (dir) => {
    const path = `${dir}/daemon.json`;
    await Deno.writeTextFile(path, "  \n");
    const rel = await runCli(["runtime-config", "--daemon-json", path, "--binary", "egresstrator"]);
    assert.equal(rel.code, 2);
    assert.match(rel.stderr, /--binary must be an absolute path, not "egresstrator"/);
    assert.equal(await Deno.readTextFile(path), "  \n");
    const { bin, ours } = await installed(dir);
    const ok = await runCli(["runtime-config", "--daemon-json", path, "--binary", bin]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(await readJson(path), { runtimes: { [RUNTIME_NAME]: ours } });
  });
});
