/**
 * Seeing what is refused, with traffic between test containers on a PRIVATE dockerd (withLive): a refused
 * connect gives a `denied` line naming the container and the key within 2 s, after a daemon restart too;
 * an audit-mode allowlist container reaches a server its list does not name and an `audit` line appears;
 * 1000 refused connects give a bounded number of lines while the counter stays within a few percent of
 * 1000; and `suggest`'s output, put into KV, lets the same traffic through under allowlist.
 *
 * The daemon sets the host's net.netfilter.nf_log_all_netns while it runs: every test checks it is back to
 * what it was once the daemon has stopped. Traffic only flows between containers a test started, on a
 * network it created; 10.50.x.x addresses are only rendered, never dialed.
 */
import assert from "node:assert/strict";
import { canConnect, type DaemonProc, type LogEntry, runCli, waitFor } from "../support/egresstrator.ts";
import { getMetrics, getStatus, type LiveEnv, metricValue, optIn, withLive } from "../support/live.ts";
import { containerIp, execIn } from "../support/docker.ts";
import { NF_LOG_ALL_NETNS } from "../../src/daemon/nf_log_sysctl.ts";
import { REPO_ROOT } from "../support/run_cli.ts";

/** What "within 2 s" means: from the start of the connect attempt to the daemon's line. */
const LINE_MS = 2000;

const sysctl = async () => (await Deno.readTextFile(NF_LOG_ALL_NETNS)).trim();

/** A server (busybox httpd) per port list on a fresh network, and its address. */
async function servers(env: LiveEnv, ports: number[][]) {
  const net = await env.d.createNetwork();
  const out = [];
  for (const list of ports) {
    const script = list.map((p, i) => `httpd ${i === list.length - 1 ? "-f " : ""}-p ${p}`).join("; ");
    const c = await env.d.run({ cmd: ["sh", "-c", script], network: net.name });
    out.push({ ...c, ip: await containerIp(c.id, net.name, env.d.host) });
  }
  return { net, servers: out };
}

async function applied(p: DaemonProc, name: string): Promise<void> {
  await p.waitForLog((e) => e.msg === "applied" && e.container === name, 60_000, `applied for ${name}`);
}

const lineFor = (name: string, msg = "denied") => (e: LogEntry) => e.msg === msg && e.container === name;

/** Stop the daemon cleanly, and check it put the sysctl back. */
async function stopped(p: DaemonProc, before: string): Promise<void> {
  assert.equal((await p.stop()).code, 0);
  assert.equal(await sysctl(), before, "the daemon did not put net.netfilter.nf_log_all_netns back");
}

Deno.test("deny log: a refused connect is a `denied` line naming the container and the key within 2 s, after a restart too", async () => {
  const before = await sysctl();
  await withLive({}, async (env) => {
    const { net, servers: [srv] } = await servers(env, [[8080]]);
    await env.put("srv", `${srv.ip}/32:tcp/8080\n`);
    await env.put("other", "10.50.1.0/24:tcp/443\n");
    const [prot, allow] = await env.runMany([
      { env: optIn(["other"], "protect"), network: net.name },
      { env: optIn(["other"], "allowlist"), network: net.name },
    ]);
    let p = await env.daemon();
    await applied(p, prot.name);
    await applied(p, allow.name);
    assert.equal(await sysctl(), "1", "the daemon sets net.netfilter.nf_log_all_netns while it runs");

    for (const [c, acl] of [[prot, "srv"], [allow, "allowlist"]] as const) {
      const t0 = performance.now();
      const r = await canConnect(c.id, srv.ip, 8080, env.d.host);
      assert.equal(r.ok, false, `${c.name} reached the server: ${r.detail}`);
      const line = await p.waitForLog(lineFor(c.name), 10_000, `a denied line for ${c.name}`);
      const ms = performance.now() - t0;
      console.log(`  ${acl}: denied line after ${ms.toFixed(0)} ms`);
      assert.ok(ms <= LINE_MS, `the line took ${ms.toFixed(0)} ms`);
      const { time: _t, ...fields } = line;
      assert.deepEqual(fields, {
        level: "info",
        msg: "denied",
        container: c.name,
        id: c.id.slice(0, 12),
        acl,
        proto: "tcp",
        dst: srv.ip,
        dport: 8080,
      });
    }
    const metrics = await getMetrics(env.listen);
    assert.equal(metricValue(metrics, "egresstrator_denied_total", { container: prot.name, acl: "srv" }), 1);
    const s = (await getStatus(env.listen)).containers.find((x) => x.id === allow.id);
    assert.equal(s?.deniedCount, 1);

    // A new daemon maps the prefixes in place back the same way: the prefix is the container's id and the
    // key's tag, nothing this daemon had to remember.
    await stopped(p, before);
    p = await env.daemon();
    await applied(p, prot.name);
    const t0 = performance.now();
    assert.equal((await canConnect(prot.id, srv.ip, 8080, env.d.host)).ok, false);
    const again = await p.waitForLog(lineFor(prot.name), 10_000, "a denied line after the restart");
    assert.ok(performance.now() - t0 <= LINE_MS);
    assert.equal(again.acl, "srv");
    await stopped(p, before);
  });
});

Deno.test("deny log: an audit-mode allowlist container reaches a server its list does not name; the audit line appears", async () => {
  const before = await sysctl();
  await withLive({}, async (env) => {
    const { net, servers: [srv] } = await servers(env, [[8080]]);
    await env.put("other", "10.50.1.0/24:tcp/443\n");
    const [audited, enforced] = await env.runMany([
      { env: [...optIn(["other"], "allowlist"), "EGRESSTRATOR_AUDIT=1"], network: net.name },
      { env: optIn(["other"], "allowlist"), network: net.name },
    ]);
    const p = await env.daemon();
    await applied(p, audited.name);
    await applied(p, enforced.name);

    const t0 = performance.now();
    const r = await canConnect(audited.id, srv.ip, 8080, env.d.host);
    assert.equal(r.ok, true, `the audit container was refused: ${r.detail}`);
    const line = await p.waitForLog(lineFor(audited.name, "audit"), 10_000, "an audit line");
    assert.ok(performance.now() - t0 <= LINE_MS);
    assert.deepEqual(
      [line.acl, line.proto, line.dst, line.dport, line.id],
      ["allowlist", "tcp", srv.ip, 8080, audited.id.slice(0, 12)],
    );
    assert.equal(p.logs().filter(lineFor(audited.name)).length, 0, "no denied line for the audit container");
    // The same list, enforced, is refused: the audit container has the same rules, refusing nothing.
    assert.equal((await canConnect(enforced.id, srv.ip, 8080, env.d.host)).ok, false);

    const table = await runCli(["status", "--listen", env.listen], { timeoutMs: 30_000 });
    assert.equal(table.code, 0, table.stderr);
    assert.match(
      table.stdout,
      new RegExp(`^${audited.id.slice(0, 12)}\\s+${audited.name}\\s+allowlist \\(audit\\)\\s`, "m"),
    );
    assert.match(
      table.stdout,
      new RegExp(`^${enforced.id.slice(0, 12)}\\s+${enforced.name}\\s+allowlist\\s+other`, "m"),
    );
    const report = await getStatus(env.listen);
    assert.equal(report.containers.find((c) => c.id === audited.id)?.audit, true);
    assert.equal(report.containers.find((c) => c.id === enforced.id)?.audit, false);
    const metrics = await getMetrics(env.listen);
    assert.equal(metricValue(metrics, "egresstrator_audited_total", { container: audited.name }), 1);
    assert.equal(metricValue(metrics, "egresstrator_denied_total", { container: audited.name }), 0);

    // `set` honours the mode too: it applies the audit rules and says so.
    const set = await runCli([...env.globals, "set", audited.name], { timeoutMs: 60_000 });
    assert.equal(set.code, 0, set.stderr);
    assert.match(set.stdout, /policy allowlist \(audit: nothing refused\)/);
    assert.equal((await canConnect(audited.id, srv.ip, 8080, env.d.host)).ok, true);
    await stopped(p, before);
  });
});

Deno.test("deny log: 1000 refused connects give a bounded number of lines; the counter is within a few percent of 1000", async () => {
  const before = await sysctl();
  await withLive({}, async (env) => {
    const { net, servers: [srv] } = await servers(env, [[8080]]);
    await env.put("other", "10.50.1.0/24:tcp/443\n");
    const [c] = await env.runMany([{ env: optIn(["other"], "allowlist"), network: net.name }]);
    const p = await env.daemon();
    await applied(p, c.name);
    const t0 = performance.now();
    const loop = `i=0; while [ $i -lt 1000 ]; do nc -w 1 "$0" 8080 </dev/null 2>/dev/null; i=$((i+1)); done`;
    const r = await execIn(c.id, ["sh", "-c", loop, srv.ip], { host: env.d.host, timeoutMs: 120_000 });
    const secs = (performance.now() - t0) / 1000;
    assert.equal(r.code, 0, r.stderr);
    console.log(`  1000 refused connects in ${secs.toFixed(1)} s`);

    const counted = () =>
      getMetrics(env.listen).then((m) =>
        metricValue(m, "egresstrator_denied_total", { container: c.name, acl: "allowlist" })
      );
    const total = await waitFor(
      async () => {
        const n = await counted();
        return n >= 970 ? n : undefined;
      },
      20_000,
      "egresstrator_denied_total to reach 970",
    );
    // Settled: a few more seconds change nothing.
    await new Promise((r) => setTimeout(r, 3000));
    const settled = await counted();
    console.log(`  counted ${total}, settled at ${settled}`);
    assert.ok(settled >= 970 && settled <= 1030, `counted ${settled}, not within 3% of 1000`);
    const lines = p.logs().filter(lineFor(c.name)).length;
    // The daemon's bound (10 a second per container, 10 at once) and the kernel's (5 a second, burst 10).
    const bound = 10 + Math.ceil(secs + 2) * 5;
    console.log(`  ${lines} denied lines (bound ${bound})`);
    assert.ok(lines >= 1 && lines <= bound, `${lines} denied lines for 1000 refusals (bound ${bound})`);
    // What was counted but not logged is said, every 5 s at most: in the end, lines + suppressed = count.
    const suppressed = () =>
      p.logs().filter(lineFor(c.name, "more suppressed")).reduce((n, e) => n + Number(e.count), 0);
    await waitFor(
      () => lines + suppressed() === settled,
      15_000,
      `${settled - lines} reported as suppressed`,
    );
    assert.ok(
      p.logs().filter(lineFor(c.name, "more suppressed")).length <= 4,
      "a few summary lines, no more",
    );
    const s = (await getStatus(env.listen)).containers.find((x) => x.id === c.id);
    assert.equal(s?.deniedCount, settled);
    await stopped(p, before);
  });
});

Deno.test("deny log: `suggest` prints ACL lines for what was refused; put into KV, the same traffic passes under allowlist", async () => {
  const before = await sysctl();
  await withLive({}, async (env) => {
    const { net, servers: [web, api] } = await servers(env, [[8080], [9090, 9091]]);
    await env.consul.registerService({
      id: "web-1",
      name: "web",
      address: web.ip,
      port: 8080,
      tags: ["prod"],
    });
    await env.put("app", "10.50.1.0/24:tcp/443\n");
    const [c] = await env.runMany([{ env: optIn(["app"], "allowlist"), network: net.name }]);
    const p = await env.daemon();
    await applied(p, c.name);
    const targets = [[web.ip, 8080], [api.ip, 9090], [api.ip, 9091]] as const;
    for (const [ip, port] of targets) {
      assert.equal((await canConnect(c.id, ip, port, env.d.host)).ok, false, `${ip}:${port} before`);
    }
    await waitFor(
      () => p.logs().filter(lineFor(c.name)).length >= targets.length,
      10_000,
      "a denied line per destination",
    );

    const s = await runCli([...env.globals, "--listen", env.listen, "suggest", c.name], {
      timeoutMs: 30_000,
    });
    assert.equal(s.code, 0, s.stderr);
    console.log(
      `  suggest:\n${s.stdout.trimEnd().replace(/^/gm, "    ")}\n${
        s.stderr.trimEnd().replace(/^/gm, "    ")
      }`,
    );
    assert.equal(s.stdout, `${api.ip}/32:tcp/9090-9091\nprod.web\n`);
    assert.match(s.stderr, /3 destinations, 3 refusals seen; 2 lines/);
    // By id prefix too, and without the catalog.
    const plain = await runCli([
      ...env.globals,
      "--listen",
      env.listen,
      "suggest",
      c.id.slice(0, 8),
      "--no-services",
    ]);
    const byAddress = [[web.ip, `${web.ip}/32:tcp/8080`], [api.ip, `${api.ip}/32:tcp/9090-9091`]]
      .sort(([a], [b]) => Number(a.split(".")[3]) - Number(b.split(".")[3])).map(([, line]) => line);
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(plain.stdout, byAddress.join("\n") + "\n");

    await env.put("app", `10.50.1.0/24:tcp/443\n${s.stdout}`);
    for (const [ip, port] of targets) {
      await waitFor(
        async () => (await canConnect(c.id, ip, port, env.d.host)).ok,
        15_000,
        `${ip}:${port} reachable once suggest's lines are in KV`,
      );
    }
    const unknown = await runCli([...env.globals, "--listen", env.listen, "suggest", "no-such-container"]);
    assert.equal(unknown.code, 2, unknown.stderr);
    await stopped(p, before);
  });
});

/** A directive's values in the packaged unit (every line of it, space separated). */
async function unitValues(name: string): Promise<string[]> {
  const unit = await Deno.readTextFile(`${REPO_ROOT}/packaging/egresstrator.service`);
  return unit.split("\n").filter((l) => l.startsWith(`${name}=`)).flatMap((l) =>
    l.slice(name.length + 1).split(/\s+/)
  )
    .filter(Boolean);
}

/**
 * Not systemd itself (the platforms tests run the unit under a real systemd), but the same kernel limits
 * the unit sets, taken from the unit file: only its capability bounding set, no new privileges, /proc/sys
 * read-only but for its ReadWritePaths= under /proc/sys (bind mounts, as systemd makes them), /proc/kmsg
 * hidden. The daemon must still set the sysctl, read /dev/kmsg (CAP_SYSLOG where dmesg_restrict=1) and
 * log a refusal.
 */
Deno.test("deny log: within the packaged unit's limits (capabilities, read-only /proc/sys but the one sysctl) lines still come", async () => {
  const before = await sysctl();
  const caps = (await unitValues("CapabilityBoundingSet")).map((c) =>
    `+${c.replace(/^CAP_/, "").toLowerCase()}`
  );
  // A leading "-" (systemd: ignore the path where it does not exist) is not part of the path.
  const writable = (await unitValues("ReadWritePaths")).map((p) => p.replace(/^-/, ""))
    .filter((p) => p.startsWith("/proc/sys/"));
  assert.ok(caps.includes("+syslog"), `the unit's capabilities: ${caps.join(" ")}`);
  assert.deepEqual(writable, [NF_LOG_ALL_NETNS]);
  assert.deepEqual(await unitValues("ProtectKernelTunables"), ["yes"]);
  const binds = writable.map((p) => `mount --bind ${p} ${p}`).join(" && ");
  const rw = writable.map((p) => `mount -o remount,bind,rw ${p}`).join(" && ");
  const script =
    `set -e; mount --bind /proc/sys /proc/sys; ${binds}; mount -o remount,bind,ro /proc/sys; ${rw}; ` +
    "mount --bind /dev/null /proc/kmsg; " +
    `exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all,${caps.join(",")} -- "$@"`;
  const wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"];
  await withLive({}, async (env) => {
    const { net, servers: [srv] } = await servers(env, [[8080]]);
    await env.put("other", "10.50.1.0/24:tcp/443\n");
    const [c] = await env.runMany([{ env: optIn(["other"], "allowlist"), network: net.name }]);
    const p = await env.daemon([], { wrap });
    await applied(p, c.name);
    assert.equal(await sysctl(), "1");
    assert.equal(p.logs().filter((e) => /cannot (set|read)/.test(e.msg)).length, 0, JSON.stringify(p.logs()));
    const t0 = performance.now();
    assert.equal((await canConnect(c.id, srv.ip, 8080, env.d.host)).ok, false);
    const line = await p.waitForLog(lineFor(c.name), 10_000, "a denied line");
    assert.ok(performance.now() - t0 <= LINE_MS);
    assert.equal(line.acl, "allowlist");
    await stopped(p, before);
  });
});

/** The permission flags of `deno task start`, which scripts/compile.sh bakes into the binary (install_test). */
async function taskPermissions(): Promise<string[]> {
  const deno = JSON.parse(await Deno.readTextFile(`${REPO_ROOT}/deno.json`)) as { tasks: { start: string } };
  return deno.tasks.start.split(/\s+/).filter((t) => t.startsWith("--allow-") || t === "--no-prompt");
}

Deno.test("deny log: with exactly the compiled binary's permission flags, lines still come", async () => {
  const before = await sysctl();
  const permissions = await taskPermissions();
  // Whatever the compile task grants (today --allow-all: Deno keeps /proc and /dev out of reach of anything
  // less, and the netns, capability and IPv6 checks read /proc), the daemon runs with exactly that.
  assert.ok(permissions.some((f) => f.startsWith("--allow-")), permissions.join(" "));
  await withLive({}, async (env) => {
    const { net, servers: [srv] } = await servers(env, [[8080]]);
    await env.put("other", "10.50.1.0/24:tcp/443\n");
    const [c] = await env.runMany([{ env: optIn(["other"], "allowlist"), network: net.name }]);
    // Plus the private dockerd's socket, which lives under /tmp. No status server: under these permissions
    // eb00942's cannot start (Deno.umask needs --allow-sys), a matter of its own.
    const withSocket = permissions.map((f) => (f.startsWith("--allow-write=") ? `${f},${env.d.dir}` : f));
    const p = await env.daemon(["--listen", "none"], { permissions: withSocket });
    await applied(p, c.name);
    assert.equal(await sysctl(), "1");
    assert.equal(p.logs().filter((e) => /cannot (set|read)/.test(e.msg)).length, 0, JSON.stringify(p.logs()));
    const t0 = performance.now();
    assert.equal((await canConnect(c.id, srv.ip, 8080, env.d.host)).ok, false);
    const line = await p.waitForLog(lineFor(c.name), 10_000, "a denied line");
    assert.ok(performance.now() - t0 <= LINE_MS);
    assert.deepEqual([line.acl, line.dst, line.dport], ["allowlist", srv.ip, 8080]);
    await stopped(p, before);
  });
});
