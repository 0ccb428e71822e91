/** The gate's checks and edits of an opted-in container's OCI spec before `runc create` (pure). */
import assert from "node:assert/strict";
import {
  decideSpec,
  dropCap,
  HOOK_ARG,
  netnsKind,
  type OciSpec,
  specCaps,
  withPrestartHook,
} from "../../src/gate/spec.ts";
import { decideBundle } from "../../src/gate/bundle.ts";

const DEFAULT_CAPS = ["CAP_CHOWN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_SETUID"];
const STRICT = { allowHostNetwork: false, allowNetAdmin: false, keepNetRaw: false };

function spec(opts: { netns?: "own" | "host" | string; caps?: string[] } = {}): OciSpec {
  const namespaces = [{ type: "pid" }, { type: "mount" }];
  if (opts.netns === undefined || opts.netns === "own") namespaces.push({ type: "network" });
  else if (opts.netns !== "host") namespaces.push({ type: "network", path: opts.netns } as never);
  const caps = opts.caps ?? DEFAULT_CAPS;
  return {
    ociVersion: "1.0.2",
    process: {
      env: ["PATH=/bin", "EGRESSTRATOR_ENABLE=1"],
      capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: caps },
    },
    linux: { namespaces },
  };
}

Deno.test("gate spec: the network namespace is own, the host's (none listed) or joined (a path)", () => {
  assert.deepEqual(netnsKind(spec()), { kind: "own" });
  assert.deepEqual(netnsKind(spec({ netns: "host" })), { kind: "host" });
  assert.deepEqual(netnsKind(spec({ netns: "/proc/42/ns/net" })), {
    kind: "joined",
    path: "/proc/42/ns/net",
  });
  assert.deepEqual(netnsKind({}), { kind: "host" });
});

Deno.test("gate spec: CAP_NET_RAW leaves every set; nothing else changes", () => {
  const s = spec();
  const { spec: out, changed } = dropCap(s, "CAP_NET_RAW");
  assert.ok(changed);
  assert.ok(!specCaps(out).has("CAP_NET_RAW"));
  for (const set of ["bounding", "effective", "permitted", "inheritable"]) {
    assert.deepEqual(
      out.process!.capabilities![set],
      ["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_SETUID"],
      set,
    );
  }
  assert.deepEqual(out.linux, s.linux);
  assert.deepEqual(s.process!.capabilities!.bounding, DEFAULT_CAPS, "the input is not modified");
  assert.equal(dropCap(spec({ caps: ["CAP_CHOWN"] }), "CAP_NET_RAW").changed, false);
});

Deno.test("gate spec: decisions, strict and loosened", () => {
  const d = decideSpec(spec(), STRICT);
  assert.equal(d.action, "enforce");
  assert.ok(d.action === "enforce" && d.spec && !specCaps(d.spec).has("CAP_NET_RAW"));
  assert.deepEqual(decideSpec(spec(), { ...STRICT, keepNetRaw: true }), { action: "enforce", dropped: [] });

  const host = decideSpec(spec({ netns: "host" }), STRICT);
  assert.equal(host.action, "refuse");
  assert.match(host.action === "refuse" ? host.why : "", /host's network namespace.*ALLOW_HOST_NETWORK/);
  assert.equal(decideSpec(spec({ netns: "host" }), { ...STRICT, allowHostNetwork: true }).action, "pass");
  assert.equal(decideSpec(spec({ netns: "/proc/9/ns/net" }), STRICT).action, "pass");
  // Docker's --network host: a path to a bind mount of the host's namespace.
  const isHost = (p: string) => p === "/run/docker/netns/default";
  const dockerHost = decideSpec(spec({ netns: "/run/docker/netns/default" }), STRICT, isHost);
  assert.equal(dockerHost.action, "refuse");

  for (const cap of ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]) {
    const r = decideSpec(spec({ caps: [...DEFAULT_CAPS, cap] }), STRICT);
    assert.equal(r.action, "refuse", cap);
    assert.match(r.action === "refuse" ? r.why : "", new RegExp(`holds ${cap}.*ALLOW_NET_ADMIN`));
    assert.equal(
      decideSpec(spec({ caps: [...DEFAULT_CAPS, cap] }), { ...STRICT, allowNetAdmin: true }).action,
      "enforce",
    );
  }
});

Deno.test("gate spec: the shim's hook goes in first among the prestart hooks, once, the others kept", () => {
  const hook = { path: "/usr/local/bin/egresstrator-runtime", args: ["x", HOOK_ARG, "/run/s.sock"] };
  const docker = { path: "/proc/1/exe", args: ["libnetwork-setkey", "-exec-root=/run/docker", "id", "c"] };
  // No hooks at all: a prestart list of ours alone.
  assert.deepEqual(withPrestartHook(spec(), hook).hooks, { prestart: [hook] });
  // Docker's hook stays, after ours; other kinds of hooks stay untouched.
  const withDocker = { ...spec(), hooks: { prestart: [docker], poststop: [docker] } };
  const once = withPrestartHook(withDocker, hook);
  assert.deepEqual(once.hooks, { prestart: [hook, docker], poststop: [docker] });
  // A spec edited twice (a create retried on the same bundle) holds ours once, the new one.
  const newer = { ...hook, args: ["x", HOOK_ARG, "/run/other.sock"] };
  assert.deepEqual(withPrestartHook(once, newer).hooks, { prestart: [newer, docker], poststop: [docker] });
  // The input is not changed.
  assert.deepEqual(withDocker.hooks, { prestart: [docker], poststop: [docker] });
});

Deno.test("gate spec: a rewritten spec keeps every number as it was (runc reads rlimits as uint64)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "egt-spec-" });
  try {
    const path = `${dir}/config.json`;
    const text = JSON.stringify(spec()).replace(
      '"linux":',
      '"process2":{"rlimits":[{"type":"RLIMIT_MEMLOCK","hard":18446744073709551615,"soft":18446744073709551615}],' +
        '"oomScoreAdj":-1000,"x":1.50,"y":1e400},"linux":',
    );
    const hook = { path: "/usr/local/bin/egresstrator-runtime", args: ["x", HOOK_ARG, "/s"] };
    const d = decideBundle(path, text, {}, hook);
    assert.ok(d.enforceEnv, JSON.stringify(d));
    const written = await Deno.readTextFile(path);
    for (const n of ["18446744073709551615", '"oomScoreAdj":-1000', '"x":1.50', '"y":1e400']) {
      assert.ok(written.includes(n), `${n} missing from ${written}`);
    }
    assert.deepEqual((JSON.parse(written) as OciSpec).hooks, { prestart: [hook] });
    assert.deepEqual(specCaps(JSON.parse(written)).has("CAP_NET_RAW"), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
