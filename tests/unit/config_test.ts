/** Config: defaults, validation (ConfigError, exit 2), the small parsers, and freezing. */
import assert from "node:assert/strict";
import {
  buildConfig,
  DEFAULTS,
  parseBool,
  parseDuration,
  parseResolvers,
  type RawOptions,
} from "../../src/config/config.ts";
import { ConfigError } from "../../src/errors.ts";

function configError(fn: () => unknown, message: string | RegExp) {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${err}`);
    assert.equal(err.exitCode, 2);
    if (typeof message === "string") assert.equal(err.message, message);
    else assert.match(err.message, message);
    return true;
  });
}

Deno.test("config: defaults", () => {
  const c = buildConfig({});
  // Only the fields this test knows: others are being added alongside.
  const known = Object.fromEntries(
    Object.entries(c).filter(([k]) =>
      [
        "consul",
        "kvPath",
        "aclDir",
        "templateFile",
        "image",
        "mode",
        "dockerHost",
        "dockerApiVersion",
        "dnsResolvers",
        "policy",
        "onError",
        "logFormat",
        "logLevel",
        "debug",
        "concurrency",
        "helperTimeoutMs",
      ].includes(k)
    ),
  );
  assert.deepEqual(known, {
    consul: {
      address: "127.0.0.1:8500",
      ssl: false,
      token: undefined,
      caCertFile: undefined,
      clientCertFile: undefined,
      clientKeyFile: undefined,
      timeoutMs: 10_000,
    },
    kvPath: "egress/acl/",
    aclDir: undefined,
    templateFile: undefined,
    image: undefined,
    mode: "nsenter",
    dockerHost: "unix:///var/run/docker.sock",
    dockerApiVersion: undefined,
    dnsResolvers: [...DEFAULTS.dnsResolvers],
    policy: "protect",
    onError: "deny",
    logFormat: "text",
    logLevel: "info",
    debug: false,
    concurrency: 8,
    helperTimeoutMs: 30_000,
  });
  // empty strings (unset env vars) mean "default" too
  const empty = buildConfig({ consul: "", policy: "", onError: "", logFormat: "", mode: "", dockerHost: "" });
  assert.equal(empty.consul.address, "127.0.0.1:8500");
  assert.equal(empty.policy, "protect");
  assert.equal(empty.mode, "nsenter");
  assert.equal(empty.dockerHost, "unix:///var/run/docker.sock");
});

Deno.test("config: values are taken over", () => {
  const c = buildConfig({
    consul: "https://consul:8501",
    consulToken: "secret",
    kvPath: "acl/",
    aclDir: "/etc/acl",
    template: "/etc/t.eta",
    ssl: "yes",
    sslCaCert: "/ca.pem",
    sslClientCert: "/c.pem",
    sslClientKey: "/k.pem",
    dns: "10.0.0.2, [fd00::53]",
    policy: "allowlist",
    onError: "deny",
    logFormat: "json",
    logLevel: "warn",
    debug: "1",
    consulTimeout: "500ms",
    concurrency: "3",
    helperTimeout: "1m",
    dockerHost: "tcp://127.0.0.1:2375",
    dockerApiVersion: "1.41",
  });
  assert.equal(c.consul.address, "https://consul:8501");
  assert.equal(c.consul.token, "secret");
  assert.equal(c.consul.ssl, true);
  assert.equal(c.consul.caCertFile, "/ca.pem");
  assert.equal(c.consul.clientCertFile, "/c.pem");
  assert.equal(c.consul.clientKeyFile, "/k.pem");
  assert.equal(c.consul.timeoutMs, 500);
  assert.equal(c.kvPath, "acl/");
  assert.equal(c.aclDir, "/etc/acl");
  assert.equal(c.templateFile, "/etc/t.eta");
  assert.deepEqual(c.dnsResolvers, ["10.0.0.2", "fd00::53"]);
  assert.equal(c.policy, "allowlist");
  assert.equal(c.onError, "deny");
  assert.equal(c.logFormat, "json");
  assert.equal(c.logLevel, "warn");
  assert.equal(c.debug, true);
  assert.equal(c.concurrency, 3);
  assert.equal(c.helperTimeoutMs, 60_000);
  assert.equal(c.dockerHost, "tcp://127.0.0.1:2375");
  assert.equal(c.dockerApiVersion, "1.41");
  // a token read from a file wins over an empty flag
  assert.equal(buildConfig({}, { token: "from-file" }).consul.token, "from-file");
  // --debug implies the debug log level unless one is given
  assert.equal(buildConfig({ debug: true }).logLevel, "debug");
  assert.equal(buildConfig({ debug: true, logLevel: "error" }).logLevel, "error");
});

Deno.test("config: --image implies helper mode; --mode helper needs an image", () => {
  const c = buildConfig({ image: "egresstrator/iptables:1" });
  assert.equal(c.mode, "helper");
  assert.equal(c.image, "egresstrator/iptables:1");
  assert.equal(buildConfig({ image: "x", mode: "nsenter" }).mode, "nsenter");
  assert.equal(buildConfig({ image: "x", mode: "helper" }).mode, "helper");
  configError(
    () => buildConfig({ mode: "helper" }),
    "--mode helper needs --image (an image with iptables-restore, see Dockerfile)",
  );
  configError(() => buildConfig({ mode: "helper", image: "" }), /--mode helper needs --image/);
});

Deno.test("config: bad enum values name the option and the choices", () => {
  configError(
    () => buildConfig({ policy: "deny" }),
    '--policy must be one of protect, allowlist, not "deny"',
  );
  configError(() => buildConfig({ policy: "Protect" }), /^--policy must be one of/);
  configError(() => buildConfig({ onError: "fail" }), '--on-error must be one of deny, skip, not "fail"');
  configError(() => buildConfig({ logFormat: "xml" }), '--log-format must be one of text, json, not "xml"');
  configError(
    () => buildConfig({ logLevel: "trace" }),
    '--log-level must be one of debug, info, warn, error, not "trace"',
  );
  configError(() => buildConfig({ mode: "docker" }), '--mode must be one of nsenter, helper, not "docker"');
});

Deno.test("config: other invalid values", () => {
  const cases: [RawOptions, string | RegExp][] = [
    [{ kvPath: "egress/\nacl" }, "--kv-path contains control characters"],
    [{ dockerHost: "/var/run/docker.sock" }, /^--docker-host must look like/],
    [{ dockerHost: "unix://" }, /^--docker-host must look like/],
    [{ dockerApiVersion: "v1.41" }, 'DOCKER_API_VERSION must look like 1.41, not "v1.41"'],
    [{ dockerApiVersion: "2.0" }, /^DOCKER_API_VERSION must look like/],
    [{ concurrency: "0" }, "--concurrency must be a whole number from 1 to 9999"],
    [{ concurrency: "10000" }, "--concurrency must be a whole number from 1 to 9999"],
    [{ concurrency: "-1" }, "--concurrency must be a whole number from 1 to 9999"],
    [{ concurrency: "2.5" }, "--concurrency must be a whole number from 1 to 9999"],
    [{ consulTimeout: "soon" }, /^--consul-timeout must be a duration/],
    [{ helperTimeout: "0s" }, /^--helper-timeout must be between 1ms and 24h/],
    [{ ssl: "maybe" }, '--ssl must be true or false, not "maybe"'],
    [{ debug: "2" }, '--debug must be true or false, not "2"'],
    [{ dns: "8.8.8.8,dns.google" }, '--dns: "dns.google" is not an IPv4/IPv6 address or CIDR'],
  ];
  for (const [raw, message] of cases) configError(() => buildConfig(raw), message);
});

Deno.test("config: a client certificate needs its key and the other way round", () => {
  const msg = "a Consul client certificate needs both CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY";
  configError(() => buildConfig({ sslClientCert: "/c.pem" }), msg);
  configError(() => buildConfig({ sslClientKey: "/k.pem" }), msg);
  const both = buildConfig({ sslClientCert: "/c.pem", sslClientKey: "/k.pem" });
  assert.equal(both.consul.clientCertFile, "/c.pem");
});

Deno.test("config: parseDuration", () => {
  const ok: [string, number][] = [
    ["10s", 10_000],
    ["500ms", 500],
    ["2m", 120_000],
    ["5", 5_000],
    ["1.5s", 1_500],
    [" 3s ", 3_000],
    ["1ms", 1],
    ["1440m", 24 * 3600_000],
    ["10h", 10 * 3600_000],
    ["1m30s", 90_000],
    ["24h", 24 * 3600_000],
  ];
  for (const [text, ms] of ok) assert.equal(parseDuration("--t", text), ms, text);
  for (const bad of ["", "s", "1d", "-1s", "10 s", "1e3", "ten", "1.s", ".5s", "10S"]) {
    configError(
      () => parseDuration("--t", bad),
      `--t must be a duration like 10s, 500ms, 2m, 1h or 1m30s, not "${bad}"`,
    );
  }
  for (const out of ["0", "0s", "0ms", "1441m", "86401s", "25h"]) {
    configError(() => parseDuration("--t", out), `--t must be between 1ms and 24h, not "${out}"`);
  }
});

// Regression (fixed): src/config.ts:117-120 checks the range before rounding: "0.1ms" (or "0.4ms") passes `n <= 0` and is
// then rounded to 0, so a timeout of 0 ms (an immediately aborted request) gets through, although the message
// says durations are from 1ms.
Deno.test({
  name: "config: parseDuration never returns less than 1 ms",
  fn() {
    for (const text of ["0.1ms", "0.4ms", "0.0001s"]) {
      assert.throws(() => parseDuration("--t", text), ConfigError, text);
    }
  },
});

Deno.test("config: parseBool", () => {
  for (const t of ["1", "true", "TRUE", "yes", "Yes", "on", true]) {
    assert.equal(parseBool("--b", t), true, String(t));
  }
  for (const f of ["0", "false", "no", "OFF", "", undefined, false]) {
    assert.equal(parseBool("--b", f), false, String(f));
  }
  for (const bad of ["2", "y", "enable", " true", "tru"]) {
    configError(() => parseBool("--b", bad), `--b must be true or false, not "${bad}"`);
  }
});

Deno.test("config: parseResolvers", () => {
  const ok: [string, string[]][] = [
    ["8.8.8.8", ["8.8.8.8"]],
    ["10.0.0.0/8, 8.8.8.8 ,", ["10.0.0.0/8", "8.8.8.8"]],
    ["fd00::53,[2001:db8::1],[fc00::]/7", ["fd00::53", "2001:db8::1", "fc00::/7"]],
    ["0.0.0.0/0,::/0", ["0.0.0.0/0", "::/0"]],
    ["10.0.0.1/32,::1/128", ["10.0.0.1/32", "::1/128"]],
  ];
  for (const [text, want] of ok) assert.deepEqual(parseResolvers(text), want, text);
  for (
    const bad of [
      "dns.google",
      "8.8.8",
      "256.0.0.1",
      "010.0.0.1",
      "10.0.0.0/33",
      "::/129",
      "10.0.0.0/",
      "10.0.0.0/8/8",
      "10.0.0.0/x",
      "fe80::1%eth0",
      "8.8.8.8:53",
      "[8.8.8.8]x",
    ]
  ) {
    configError(() => parseResolvers(bad), `--dns: "${bad}" is not an IPv4/IPv6 address or CIDR`);
  }
  configError(() => parseResolvers(""), "--dns needs at least one resolver address");
  configError(() => parseResolvers(" , ,"), "--dns needs at least one resolver address");
});

Deno.test("config: the result is deeply frozen", () => {
  const c = buildConfig({});
  assert.ok(Object.isFrozen(c));
  assert.ok(Object.isFrozen(c.consul));
  assert.ok(Object.isFrozen(c.dnsResolvers));
  assert.throws(() => ((c as { policy: string }).policy = "allowlist"), TypeError);
  assert.throws(() => ((c.consul as { address: string }).address = "x"), TypeError);
  assert.throws(() => (c.dnsResolvers as string[]).push("1.1.1.1"), TypeError);
  // DEFAULTS stay untouched by a built config
  assert.ok(!Object.isFrozen(DEFAULTS.dnsResolvers) || DEFAULTS.dnsResolvers.length === 9);
  assert.equal(buildConfig({}).dnsResolvers.length, 9);
});

Deno.test("config: --dns host takes the host's resolvers, skipping a loopback-only resolv.conf", async () => {
  const { hostResolvers, nameservers } = await import("../../src/config/load.ts");
  assert.deepEqual(nameservers("# c\nnameserver 10.1.2.3\nnameserver fe80::1%eth0\nsearch x\n"), [
    "10.1.2.3",
    "fe80::1",
  ]);
  const files: Record<string, string> = {
    "/etc/resolv.conf": "nameserver 127.0.0.53\noptions edns0\n",
    "/run/systemd/resolve/resolv.conf": "nameserver 192.0.2.53\nnameserver 2001:db8::53\n",
  };
  const read = (p: string) =>
    files[p] === undefined ? Promise.reject(new Error("ENOENT")) : Promise.resolve(files[p]);
  assert.deepEqual(await hostResolvers(read), ["192.0.2.53", "2001:db8::53"]);
  files["/etc/resolv.conf"] = "nameserver 198.51.100.1\n";
  assert.deepEqual(await hostResolvers(read), ["198.51.100.1"]);
  files["/etc/resolv.conf"] = "nameserver 127.0.0.11\n";
  delete files["/run/systemd/resolve/resolv.conf"];
  await assert.rejects(
    hostResolvers(read),
    /--dns host: no non-loopback nameserver in \/etc\/resolv.conf or/,
  );
});
