/**
 * The compiled binary's permissions (scripts/compile.sh), through the stand-in (main.ts under `deno run`
 * with exactly those flags): what the daemon needs at start must work with them, not only under `-A` as
 * every other test runs it. Under the least-privilege list this replaced, the default status socket could
 * not be made (Deno.umask needs sys access) and /proc/sys/net/ipv6 read as absent (Deno wants --allow-all
 * for anything under /proc), so the IPv6 table was never written.
 */
import assert from "node:assert/strict";
import { standInScript } from "../support/standin.ts";
import { freePort } from "../support/ports.ts";
import { fetchStatus } from "../../src/daemon/status_server.ts";

Deno.test("stand-in with compile.sh's permissions: the daemon makes its status socket and sees IPv6", async () => {
  const dir = await Deno.makeTempDir({ prefix: "egt-standin-" });
  const cleanups: (() => Promise<unknown>)[] = [() => Deno.remove(dir, { recursive: true })];
  try {
    await Deno.writeTextFile(`${dir}/egresstrator`, await standInScript(), { mode: 0o755 });
    await Deno.mkdir(`${dir}/acl`);
    await Deno.writeTextFile(`${dir}/acl/x`, "10.50.128.0/24:tcp/443\n");
    // Under /run, where the old list allowed writes too: what failed there was the socket itself.
    const run = `/run/egresstrator-test-${crypto.randomUUID().slice(0, 8)}`;
    cleanups.push(() => Deno.remove(run, { recursive: true }).catch(() => {}));
    const listen = `unix://${run}/egt.sock`;
    const child = new Deno.Command(`${dir}/egresstrator`, {
      args: ["--acl-dir", `${dir}/acl`, "--listen", listen, "-H", `tcp://127.0.0.1:${freePort()}`],
      env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" },
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let healthy = false;
    for (let i = 0; i < 100 && !healthy; i++) {
      await new Promise((r) => setTimeout(r, 100));
      healthy = await fetchStatus(listen, "/healthz", 1000).then((r) => r.ok, () => false);
    }
    const mode = healthy ? (await Deno.stat(listen.slice("unix://".length))).mode! & 0o777 : 0;
    try {
      child.kill("SIGTERM");
    } catch { /* it exited by itself: the log says why */ }
    const out = await child.output();
    const log = new TextDecoder().decode(out.stderr);
    assert.ok(healthy, `no status socket:\n${log}`);
    assert.equal(mode, 0o600, "the status socket is private");
    assert.equal(out.code, 0, log);
    assert.match(log, /status server listening/);
    if (await Deno.stat("/proc/sys/net/ipv6/conf").then(() => true, () => false)) {
      assert.doesNotMatch(log, /no IPv6/, "this kernel has IPv6, and the binary must see it");
    }
  } finally {
    for (const c of cleanups) await c();
  }
});
