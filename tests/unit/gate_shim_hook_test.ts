/**
 * The runtime shim (packaging/egresstrator-runtime) as runc's prestart hook: it passes the container's
 * state on to the daemon's socket, with perl or else curl, and never fails or holds up the create.
 * The daemon's end is a small unix-socket server here; the real one is in tests/integration/gate_test.ts.
 */
import assert from "node:assert/strict";
import { REPO_ROOT } from "../support/run_cli.ts";

const SHIM = `${REPO_ROOT}/packaging/egresstrator-runtime`;
const STATE = JSON.stringify({
  ociVersion: "1.0.2",
  id: "b".repeat(64),
  status: "creating",
  pid: 4242,
  bundle: "/run/containerd/io.containerd.runtime.v2.task/moby/a bundle",
});

/** A PATH of links to `tools` only (so perl or curl can be taken away). */
async function pathWith(dir: string, tools: string[]): Promise<string> {
  const bin = `${dir}/bin-${tools.join("-") || "none"}`;
  await Deno.mkdir(bin);
  for (const t of tools) await Deno.symlink(`/usr/bin/${t}`, `${bin}/${t}`);
  return bin;
}

async function hook(sock: string, path?: string): Promise<{ code: number; out: string; ms: number }> {
  const t0 = performance.now();
  const child = new Deno.Command("/bin/sh", {
    args: [SHIM, "--egresstrator-hook", sock],
    env: path ? { PATH: path } : undefined,
    clearEnv: path !== undefined,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(STATE));
  await w.close();
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, out: text, ms: performance.now() - t0 };
}

async function withServer(
  handler: (req: Request) => Response | Promise<Response>,
  fn: (sock: string, dir: string) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "egt-hook-" });
  const ac = new AbortController();
  const server = Deno.serve({ path: `${dir}/s.sock`, signal: ac.signal, onListen() {} }, handler);
  try {
    await fn(`${dir}/s.sock`, dir);
  } finally {
    ac.abort();
    await server.finished;
    await Deno.remove(dir, { recursive: true });
  }
}

for (const client of ["perl", "curl"]) {
  Deno.test(`shim hook (${client}): the container's state goes to /v1/shim/created as it came, exit 0`, async () => {
    const got: { path: string; method: string; body: string }[] = [];
    await withServer(async (req) => {
      got.push({ path: new URL(req.url).pathname, method: req.method, body: await req.text() });
      return new Response("started", { status: 202 });
    }, async (sock, dir) => {
      const r = await hook(sock, await pathWith(dir, [client]));
      assert.deepEqual([r.code, r.out], [0, ""]);
    });
    assert.deepEqual(got, [{ path: "/v1/shim/created", method: "POST", body: STATE }]);
  });
}

Deno.test("shim hook: a refusal, no daemon, no client: exit 0, silent; a daemon that never answers is left after 2 s", async () => {
  await withServer(() => new Response("nope", { status: 400 }), async (sock, dir) => {
    assert.deepEqual([(await hook(sock)).code, (await hook(sock)).out], [0, ""]);
    assert.deepEqual((await hook(`${dir}/none.sock`)).code, 0);
    const none = await hook(sock, await pathWith(dir, []));
    assert.deepEqual([none.code, none.out], [0, ""]);
  });
  const never = Promise.withResolvers<void>();
  await withServer(async () => {
    await never.promise;
    return new Response("late");
  }, async (sock) => {
    const r = await hook(sock);
    never.resolve();
    assert.deepEqual([r.code, r.out], [0, ""]);
    assert.ok(r.ms < 4000, `${r.ms} ms`);
  });
});
