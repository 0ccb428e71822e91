/**
 * Never open by accident, with traffic: IPv6 under allowlist after the neighbour cache is emptied (so
 * neighbour discovery itself must get through the rules), and a kernel without IPv6 (IPv4 rules only,
 * where ip6tables cannot work at all).
 *
 * Traffic only flows between containers these tests started, on networks they created.
 */
import assert from "node:assert/strict";
import { canConnect, containerPid, waitFor } from "../support/egresstrator.ts";
import { createDualStackNetwork, getStatus, optIn, withLive } from "../support/live.ts";
import { containerAddresses } from "../support/docker.ts";

async function inNetns(pid: number, args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command("nsenter", { args: [`--net=/proc/${pid}/ns/net`, "--", ...args] })
    .output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

/** Wait until IPv6 duplicate address detection is over in a namespace (no address is tentative). */
async function settled(pid: number): Promise<void> {
  await waitFor(
    async () => (await inNetns(pid, ["ip", "-6", "addr", "show", "tentative"])).out.trim() === "",
    20_000,
    `IPv6 addresses of pid ${pid} leave the tentative state`,
  );
}

Deno.test("fail closed: allowlist reaches an allowed IPv6 server after `ip -6 neigh flush all` (ND accepted)", async () => {
  await withLive({}, async (env) => {
    const net = await createDualStackNetwork(env.d);
    const server = await env.d.run({ cmd: ["httpd", "-f", "-p", "8080"], network: net.name });
    const { v6 } = await containerAddresses(server.id, net.name, env.d.host);
    assert.ok(v6, `server has no IPv6 address on ${net.name}`);
    await env.put("srv6", `[${v6}]/128:tcp/8080\n`);
    const [client] = await env.runMany([{ env: optIn(["srv6"], "allowlist"), network: net.name }]);
    const pids = [await containerPid(client.id, env.d.host), await containerPid(server.id, env.d.host)];
    // No connect before the rules: it would fill the neighbour cache this test must find empty.
    await Promise.all(pids.map(settled));

    const p = await env.daemon();
    await p.waitForLog((e) => e.msg === "applied" && e.container === client.name, 60_000, "applied");
    let ok = 0;
    const details: string[] = [];
    for (let i = 0; i < 3; i++) {
      for (const pid of pids) {
        assert.equal((await inNetns(pid, ["ip", "-6", "neigh", "flush", "all"])).code, 0);
      }
      const r = await canConnect(client.id, v6, 8080, env.d.host);
      if (r.ok) ok++;
      else details.push(r.detail);
    }
    assert.equal(ok, 3, `connects after a neighbour flush: ${ok}/3 (${details.join("; ")})`);
    assert.equal((await p.stop()).code, 0);
  });
});

Deno.test("fail closed: on a kernel without IPv6 only IPv4 rules are written, and /status says so", async () => {
  await withLive({}, async (env) => {
    await env.put("other", "10.50.128.0/24:tcp/443\n");
    const [c] = await env.runMany([{ env: optIn([], "protect") }]);
    // The daemon runs in a mount namespace where the kernel looks IPv6-less: /proc/sys/net/ipv6 is empty,
    // and an ip6tables-restore first on the applier's PATH fails the way it does on such a kernel.
    const fake = await Deno.makeTempDir({ prefix: "egt-noipv6-" });
    try {
      for (const tool of ["ip6tables-restore", "ip6tables-save"]) {
        await Deno.writeTextFile(
          `${fake}/${tool}`,
          "#!/bin/sh\necho \"ip6tables: can't initialize ip6tables table 'filter': Address family not supported by protocol\" >&2\nexit 3\n",
          { mode: 0o755 },
        );
      }
      const p = await env.daemon([], {
        wrap: [
          "unshare",
          "-m",
          "sh",
          "-c",
          `mount --make-rprivate / && mount -t tmpfs none /proc/sys/net/ipv6 && ` +
          `mount --bind ${fake} /usr/local/sbin && exec "$@"`,
          "sh",
        ],
      });
      await p.waitForLog((e) => e.msg.startsWith("this kernel has no IPv6"), 30_000, "the IPv4-only warning");
      await p.waitForLog((e) => e.msg === "applied" && e.container === c.name, 60_000, "applied");
      const status = await getStatus(env.listen);
      assert.equal(status.ipv6, false);
      assert.equal(status.unfiltered, 0);
      const row = status.containers.find((r) => r.name === c.name);
      assert.ok(row && !row.unfiltered && !row.denied && row.ruleCount > 0, JSON.stringify(row));
      assert.equal((await p.stop()).code, 0);
    } finally {
      await Deno.remove(fake, { recursive: true });
    }
  });
});

Deno.test("fail closed: a restart-policy container that dockerd restarts gets its rules in its new namespace", async () => {
  await withLive({}, async (env) => {
    const net = await env.d.createNetwork();
    const always = { RestartPolicy: { Name: "always" } };
    const server = await env.d.run({
      cmd: ["httpd", "-f", "-p", "8080"],
      network: net.name,
      hostConfig: always,
    });
    // The whole subnet is protected, so the server's address after the restart needs no KV change (a
    // change would re-apply anyway and hide what this test is about).
    await env.put("srv", `${net.subnet}:tcp/8080\n`);
    const client = await env.d.run({
      cmd: ["sleep", "3600"],
      network: net.name,
      env: optIn([], "protect"),
      hostConfig: always,
    });
    const p = await env.daemon();
    const applies = () => p.logs().filter((e) => e.msg === "applied" && e.container === client.name).length;
    await waitFor(() => applies() === 1, 60_000, "the first apply");
    const pidBefore = await containerPid(client.id, env.d.host);

    await env.d.restart(); // the containers die with it and come back in new namespaces
    const pidAfter = await waitFor(
      async () => {
        const pid = await containerPid(client.id, env.d.host).catch(() => 0);
        return pid && pid !== pidBefore ? pid : undefined;
      },
      60_000,
      "the client running again with a new pid",
    );
    await waitFor(() => applies() === 2, 60_000, "an apply into the new namespace");
    const { v4 } = await containerAddresses(server.id, net.name, env.d.host);
    const r = await canConnect(client.id, v4, 8080, env.d.host);
    assert.equal(
      r.ok,
      false,
      `the restarted client (pid ${pidAfter}) reaches the protected server: ${r.detail}`,
    );
    const status = await getStatus(env.listen);
    assert.equal(status.containers.find((c) => c.name === client.name)?.unfiltered, false);
    assert.equal((await p.stop()).code, 0);
  });
});
