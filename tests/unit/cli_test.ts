/**
 * The CLI as users call it: `deno run -A main.ts …` in a child process; stdout, stderr and exit code.
 * set/clear/daemon are not covered here (they need Docker; see the integration tests).
 */
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { freePort } from "../support/ports.ts";
import { runCli } from "../support/run_cli.ts";

const FIXTURES: Record<string, string> = {
  web: "10.0.0.0/8:tcp/80\n[2001:db8::]/32:tcp/443\n",
  "team/db": "# the databases\n192.168.1.0/24:udp/1000-2000\n[fd00::]/8:tcp/5432\n",
};

async function withAclDir<T>(files: Record<string, string>, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "egt-cli-" });
  try {
    for (const [key, text] of Object.entries(files)) {
      await Deno.mkdir(dirname(join(dir, key)), { recursive: true });
      await Deno.writeTextFile(join(dir, key), text);
    }
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const lines = (s: string) => s.split("\n").filter((l) => l !== "");
const STACK = /^\s+at /m;

Deno.test("cli: --help lists every global option of the original tool and the commands", async () => {
  const [long, short] = await Promise.all([runCli(["--help"]), runCli(["-h"])]);
  assert.equal(long.code, 0, long.stderr);
  assert.equal(long.stderr, "");
  assert.equal(short.stdout, long.stdout);
  const help = long.stdout;
  const options = [
    "-c, --consul <address>",
    "-t, --consul-token <token>",
    "-k, --kv-path <path>",
    "-f, --template <file>",
    "-i, --image <image>",
    "--ssl",
    "--ssl-ca-cert <file>",
    "-h, --help",
    "-v, --version",
  ];
  for (const o of options) {
    const re = new RegExp(`^  ${o.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}(\\s|$)`, "m");
    assert.match(help, re, `--help does not list ${o}`);
  }
  const commands = help.slice(help.indexOf("\nCommands:"));
  assert.ok(commands.length > 10, "no Commands: section");
  for (const c of ["set", "clear", "render", "validate"]) {
    assert.match(commands, new RegExp(`^  ${c} `, "m"), `--help does not list the ${c} command`);
  }
});

Deno.test("cli: -v and --version print the version", async () => {
  for (const r of await Promise.all([runCli(["-v"]), runCli(["--version"])])) {
    assert.equal(r.code, 0);
    assert.equal(r.stdout, "0.3.0\n");
    assert.equal(r.stderr, "");
  }
});

Deno.test("cli: an unknown option or bad choice exits 2 with one clear error line", async () => {
  const [top, sub, choice] = await Promise.all([
    runCli(["--bogus"]),
    runCli(["render", "--bogus", "-r", "web"]),
    runCli(["--policy", "nope", "render", "-r", "web"]),
  ]);
  for (
    const [r, want] of [
      [top, /^error: unknown option '--bogus'$/],
      [sub, /^error: unknown option '--bogus'$/],
      [
        choice,
        /^error: option '--policy <policy>' argument 'nope' is invalid\. Allowed choices are protect, allowlist\.$/,
      ],
    ] as const
  ) {
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stdout, "");
    const errs = lines(r.stderr).filter((l) => /error/i.test(l));
    assert.equal(errs.length, 1, r.stderr);
    assert.match(errs[0], want);
    assert.ok(lines(r.stderr).length <= 2, `too much on stderr:\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, STACK);
  }
});

Deno.test("cli: global options work before and after the subcommand", async () => {
  await withAclDir(FIXTURES, async (dir) => {
    const runs = await Promise.all([
      runCli(["render", "-r", "web", "--acl-dir", dir]),
      runCli(["--acl-dir", dir, "render", "-r", "web"]),
      runCli(["--acl-dir", dir, "--policy", "allowlist", "render", "-r", "web"]),
      runCli(["render", "--policy", "allowlist", "-r", "web", "--acl-dir", dir]),
      runCli(["--policy", "allowlist", "render", "--acl-dir", dir, "-r", "web"]),
    ]);
    for (const r of runs) assert.equal(r.code, 0, r.stderr);
    assert.equal(runs[1].stdout, runs[0].stdout);
    assert.match(runs[0].stdout, /^# egresstrator 0\.3\.0: policy protect, ipv4$/m);
    assert.match(runs[2].stdout, /^# egresstrator 0\.3\.0: policy allowlist, ipv4$/m);
    assert.equal(runs[3].stdout, runs[2].stdout);
    assert.equal(runs[4].stdout, runs[2].stdout);
  });
});

Deno.test("cli: env vars map to options, flags win over env", async () => {
  await withAclDir(FIXTURES, async (dir) => {
    const [flag, env, envPolicy, flagsOverEnv, badEnvDir] = await Promise.all([
      runCli(["render", "-r", "web", "--acl-dir", dir]),
      runCli(["render", "-r", "web"], { env: { EGRESSTRATOR_ACL_DIR: dir } }),
      runCli(["render", "-r", "web"], {
        env: { EGRESSTRATOR_ACL_DIR: dir, EGRESSTRATOR_DEFAULT_POLICY: "allowlist" },
      }),
      runCli(["--policy", "protect", "render", "-r", "web", "--acl-dir", dir], {
        env: { EGRESSTRATOR_ACL_DIR: "/nonexistent", EGRESSTRATOR_DEFAULT_POLICY: "allowlist" },
      }),
      runCli(["render", "-r", "web"], { env: { EGRESSTRATOR_ACL_DIR: "/nonexistent" } }),
    ]);
    assert.equal(env.code, 0, env.stderr);
    assert.equal(env.stdout, flag.stdout);
    assert.equal(envPolicy.code, 0, envPolicy.stderr);
    assert.match(envPolicy.stdout, /^# egresstrator 0\.3\.0: policy allowlist, ipv4$/m);
    assert.equal(flagsOverEnv.code, 0, flagsOverEnv.stderr);
    assert.equal(flagsOverEnv.stdout, flag.stdout);
    assert.equal(badEnvDir.code, 2);
    assert.match(badEnvDir.stderr, /^egresstrator: --acl-dir \/nonexistent cannot be read: /);
  });
});

Deno.test("cli: CONSUL_HTTP_ADDR, CONSUL_PATH and CONSUL_HTTP_TOKEN reach Consul; -k beats CONSUL_PATH", async () => {
  const seen: { path: string; token: string | null }[] = [];
  const b64 = (s: string) => btoa(s);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const url = new URL(req.url);
    seen.push({ path: url.pathname, token: req.headers.get("X-Consul-Token") });
    const prefix = url.pathname.replace(/^\/v1\/kv\//, "");
    const body = [
      { Key: prefix, Value: null, Flags: 0, CreateIndex: 1, ModifyIndex: 1, LockIndex: 0 },
      { Key: prefix + "web", Value: b64("10.0.0.0/8:tcp/80"), Flags: 0, CreateIndex: 2, ModifyIndex: 2 },
      { Key: prefix + "db", Value: b64("192.168.1.0/24:tcp/5432"), Flags: 0, CreateIndex: 3, ModifyIndex: 3 },
    ];
    return Response.json(body, { headers: { "X-Consul-Index": "7", "X-Consul-KnownLeader": "true" } });
  });
  try {
    const addr = `127.0.0.1:${server.addr.port}`;
    const env = { CONSUL_HTTP_ADDR: addr, CONSUL_PATH: "custom/acls", CONSUL_HTTP_TOKEN: "s3cret" };
    const viaEnv = await runCli(["render", "-r", "web"], { env });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
    assert.match(
      viaEnv.stdout,
      /^# protected: db\n-A OUTPUT -d 192\.168\.1\.0\/24 -p tcp -m tcp --dport 5432 /m,
    );
    assert.match(viaEnv.stdout, /^# allowed: web$/m);
    assert.deepEqual(seen, [{ path: "/v1/kv/custom/acls/", token: "s3cret" }]);
    assert.ok(
      !viaEnv.stdout.includes("s3cret") && !viaEnv.stderr.includes("s3cret"),
      "the token was printed",
    );

    seen.length = 0;
    const viaFlag = await runCli(["render", "-r", "web", "-k", "other/prefix/", "-t", "flagtoken"], { env });
    assert.equal(viaFlag.code, 0, viaFlag.stderr);
    assert.deepEqual(seen, [{ path: "/v1/kv/other/prefix/", token: "flagtoken" }]);
  } finally {
    await server.shutdown();
  }
});

Deno.test("cli: render --acl-dir prints the rules for a list", async () => {
  await withAclDir(FIXTURES, async (dir) => {
    const r = await runCli(["render", "--acl-dir", dir, "-r", "web"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "");
    assert.ok(
      r.stdout.startsWith("# egresstrator 0.3.0: policy protect, ipv4\n# container: (none)\n# acls: web\n"),
      r.stdout,
    );
    assert.ok(
      r.stdout.includes(
        "# protected: team/db\n" +
          "-A OUTPUT -d 192.168.1.0/24 -p udp -m multiport --dports 1000:2000 -m conntrack --ctstate NEW " +
          "-j egt-log-k0\n" +
          "-A OUTPUT -d 192.168.1.0/24 -p udp -m multiport --dports 1000:2000 -m conntrack --ctdir ORIGINAL " +
          "-j REJECT --reject-with icmp-port-unreachable\n" +
          "# allowed: web\nCOMMIT\n",
      ),
      r.stdout,
    );
    assert.equal(r.stdout.match(/^\*filter$/gm)?.length, 1);
    assert.ok(!r.stdout.includes("fd00::"), "ipv6 rules in the ipv4 text");

    const allow = await runCli(["render", "--acl-dir", dir, "-r", "web,team/db", "--policy", "allowlist"]);
    assert.equal(allow.code, 0, allow.stderr);
    assert.match(
      allow.stdout,
      /^# allowed: team\/db\n-A OUTPUT -d 192\.168\.1\.0\/24 -p udp -m multiport --dports 1000:2000 -j ACCEPT$/m,
    );
    assert.match(
      allow.stdout,
      /^# allowed: web\n-A OUTPUT -d 10\.0\.0\.0\/8 -p tcp -m tcp --dport 80 -j ACCEPT$/m,
    );
  });
});

Deno.test("cli: render --json, --family ipv6, --family all", async () => {
  await withAclDir(FIXTURES, async (dir) => {
    const base = ["render", "--acl-dir", dir, "-r", "web,missing"];
    const [json, v6, all, jsonAll, badFamily] = await Promise.all([
      runCli([...base, "--json"]),
      runCli([...base, "--family", "ipv6"]),
      runCli([...base, "--family", "all"]),
      runCli([...base, "--family", "all", "--json"]),
      runCli([...base, "--family", "ipv5"]),
    ]);
    assert.equal(json.code, 0, json.stderr);
    assert.equal(json.stderr, "missing: warning: ACL key not found\n");
    const model = JSON.parse(json.stdout);
    assert.equal(model.family, "ipv4");
    assert.equal(model.policy, "protect");
    assert.equal(model.version, "0.3.0");
    assert.deepEqual(model.acls, ["web", "missing"]);
    assert.deepEqual(model.missing, ["missing"]);
    assert.deepEqual(model.allowed.map((a: { key: string }) => a.key), ["web"]);
    assert.deepEqual(model.allowed[0].destinations.map((d: { cidr: string }) => d.cidr), ["10.0.0.0/8"]);
    assert.deepEqual(model.protected, [{
      key: "team/db",
      destinations: [{
        family: "ipv4",
        cidr: "192.168.1.0/24",
        proto: "udp",
        ports: { from: 1000, to: 2000 },
        origin: "192.168.1.0/24:udp/1000-2000",
        match: "-p udp -m multiport --dports 1000:2000",
      }],
      names: [],
      log: {
        label: "team/db",
        chain: "egt-log-k0",
        // no container: a prefix no daemon maps back
        prefix: "egt:-:9d2cbdbf:D ",
        rule:
          '-A egt-log-k0 -m limit --limit 5/sec --limit-burst 10 -j LOG --log-prefix "egt:-:9d2cbdbf:D " ' +
          "--log-level 6",
      },
    }]);
    assert.equal(model.audit, false);
    assert.deepEqual(model.log.chains.map((c: { label: string }) => c.label), [
      "dns-guard",
      "ntp",
      "team/db",
    ]);

    assert.equal(v6.code, 0, v6.stderr);
    assert.match(v6.stdout, /^# egresstrator 0\.3\.0: policy protect, ipv6$/m);
    assert.match(v6.stdout, /^-A OUTPUT -d fd00::\/8 -p tcp -m tcp --dport 5432 /m);
    assert.ok(!v6.stdout.includes("192.168.1.0"), v6.stdout);

    assert.equal(all.code, 0, all.stderr);
    assert.equal(all.stdout.match(/^\*filter$/gm)?.length, 2);
    assert.equal(all.stdout.match(/^COMMIT$/gm)?.length, 2);
    const i4 = all.stdout.indexOf("policy protect, ipv4"), i6 = all.stdout.indexOf("policy protect, ipv6");
    assert.ok(i4 >= 0 && i6 > i4, all.stdout);

    assert.equal(jsonAll.code, 0, jsonAll.stderr);
    const both = JSON.parse(jsonAll.stdout);
    assert.deepEqual(Object.keys(both), ["ipv4", "ipv6"]);
    assert.equal(both.ipv4.family, "ipv4");
    assert.equal(both.ipv6.family, "ipv6");
    assert.deepEqual(both.ipv6.allowed[0].destinations.map((d: { cidr: string }) => d.cidr), [
      "2001:db8::/32",
    ]);

    assert.equal(badFamily.code, 2);
    assert.match(badFamily.stderr, /^error: option '--family <family>' argument 'ipv5' is invalid/m);
  });
});

Deno.test("cli: validate prints key:line: text: why for each bad line and exits 2", async () => {
  const files = {
    ...FIXTURES,
    broken: "bad line\n10.0.0.0/33:tcp/1\n# fine\n10.0.0.0/8:tcp/0\n",
    "team/odd": "10.1.2.3/16:tcp/22\n",
  };
  await withAclDir(files, async (dir) => {
    const r = await runCli(["validate", "--acl-dir", dir]);
    assert.equal(r.code, 2, r.stderr);
    assert.deepEqual(lines(r.stdout), [
      "broken:1: bad line: a rule has no spaces inside it (one rule per line)",
      'broken:2: 10.0.0.0/33:tcp/1: mask "/33" is not from 0 to 32',
      'broken:4: 10.0.0.0/8:tcp/0: port "0" is not a number from 1 to 65535',
      "team/odd:1: 10.1.2.3/16:tcp/22: warning: host bits set in 10.1.2.3/16; using 10.1.0.0/16",
    ]);
    assert.equal(r.stderr, `validate: directory ${dir}: 4 keys, 5 rules, 3 errors, 1 warnings\n`);
  });
});

Deno.test("cli: validate exits 0 for a clean dir (warnings allowed) and 2 for a service rule in --acl-dir", async () => {
  await withAclDir(FIXTURES, async (clean) => {
    await withAclDir({ ...FIXTURES, svc: "10.0.0.0/8:tcp/80\nprimary.db@dc1\n" }, async (svcDir) => {
      await withAclDir({ odd: "10.1.2.3/16:tcp/22\n" }, async (warnDir) => {
        const [ok, svc, warn] = await Promise.all([
          runCli(["validate", "--acl-dir", clean]),
          runCli(["validate", "--acl-dir", svcDir]),
          runCli(["validate", "--acl-dir", warnDir]),
        ]);
        assert.equal(ok.code, 0, ok.stderr);
        assert.equal(ok.stdout, "");
        assert.equal(ok.stderr, `validate: directory ${clean}: 2 keys, 4 rules, 0 errors, 0 warnings\n`);

        assert.equal(svc.code, 2, svc.stderr);
        assert.deepEqual(lines(svc.stdout), [
          "svc:2: primary.db@dc1: service rules need Consul's catalog, and --acl-dir has none",
        ]);

        assert.equal(warn.code, 0, warn.stderr);
        assert.deepEqual(lines(warn.stdout), [
          "odd:1: 10.1.2.3/16:tcp/22: warning: host bits set in 10.1.2.3/16; using 10.1.0.0/16",
        ]);
      });
    });
  });
});

Deno.test("cli: Consul unreachable exits 1 with one line and no stack; --debug adds the stack", async () => {
  const addr = `127.0.0.1:${freePort()}`;
  const [render, validate, debug] = await Promise.all([
    runCli(["render", "-r", "web", "-c", addr]),
    runCli(["validate", "-c", addr]),
    runCli(["render", "-r", "web", "-c", addr, "--debug"]),
  ]);
  for (const r of [render, validate]) {
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout, "");
    assert.equal(lines(r.stderr).length, 1, r.stderr);
    assert.match(r.stderr, /^egresstrator: .*unreachable/);
    assert.ok(r.stderr.includes(addr), r.stderr);
    assert.doesNotMatch(r.stderr, STACK);
  }
  assert.equal(debug.code, 1);
  assert.match(debug.stderr, /^egresstrator: .*unreachable/);
  assert.match(debug.stderr, STACK);
});

Deno.test("cli: a missing --template file exits 1 naming the file", async () => {
  await withAclDir(FIXTURES, async (dir) => {
    const path = join(dir, "no-such-template.eta");
    const [flag, env] = await Promise.all([
      runCli(["render", "-r", "web", "--acl-dir", dir, "--template", path]),
      runCli(["render", "-r", "web", "--acl-dir", dir], { env: { CONSUL_TEMPLATE: path } }),
    ]);
    for (const r of [flag, env]) {
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stdout, "");
      assert.equal(lines(r.stderr).length, 1, r.stderr);
      assert.ok(r.stderr.includes(path), r.stderr);
      assert.doesNotMatch(r.stderr, STACK);
    }
  });
});

Deno.test("cli: render on an empty --acl-dir warns that there are no keys", async () => {
  await withAclDir({}, async (dir) => {
    const r = await runCli(["render", "--acl-dir", dir, "-r", "web"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(lines(r.stderr), [
      `warning: directory ${dir} holds no ACL keys (empty or missing prefix)`,
      "web: warning: ACL key not found",
    ]);
    assert.match(r.stdout, /^# missing acls: web$/m);
  });
});

Deno.test("cli: validate --resolve warns for a DNS name that does not resolve, asks --fqdn-upstream, skips wildcards", async () => {
  // A responder on a loopback address of its own, answering ok.test only (NXDOMAIN otherwise).
  const { default: dgram } = await import("node:dgram");
  const { default: dnsPacket } = await import("dns-packet");
  const { Buffer } = await import("node:buffer");
  const sock = dgram.createSocket("udp4");
  await new Promise<void>((r) => sock.bind(53, "127.0.0.77", () => r()));
  const asked: string[] = [];
  sock.on("message", (msg, rinfo) => {
    const q = dnsPacket.decode(msg);
    const name = q.questions![0].name;
    asked.push(`${name}/${q.questions![0].type}`);
    const ok = name === "ok.test" && q.questions![0].type === "A";
    const reply = dnsPacket.encode({
      type: "response",
      id: q.id,
      flags: ok ? 0 : 3, // rcode NXDOMAIN in the low bits
      questions: q.questions,
      answers: ok ? [{ type: "A", name, class: "IN", ttl: 5, data: "10.9.9.9" }] : [],
    });
    sock.send(Buffer.from(reply), rinfo.port, rinfo.address);
  });
  try {
    await withAclDir({ k: "ok.test:tcp/443\nmissing.test:tcp/443\n*.w.test:tcp/443\n" }, async (dir) => {
      const r = await runCli(["validate", "--acl-dir", dir, "--fqdn-upstream", "127.0.0.77", "--resolve"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(
        r.stdout,
        "k:2: missing.test:tcp/443: warning: does not resolve from this host (127.0.0.77): NXDOMAIN\n",
      );
      assert.ok(!asked.some((a) => a.includes("w.test")), "a wildcard is never looked up");
      // Without --resolve nothing is asked.
      const n = asked.length;
      assert.equal((await runCli(["validate", "--acl-dir", dir])).code, 0);
      assert.equal(asked.length, n);
    });
  } finally {
    sock.close();
  }
});
