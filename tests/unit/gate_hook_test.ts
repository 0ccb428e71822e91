/** The OCI hook's decision for an opted-in container's spec (pure), and its answers to bad input. */
import assert from "node:assert/strict";
import { hookDecision, runHook } from "../../src/gate/hook.ts";
import type { OciSpec } from "../../src/gate/spec.ts";

const PODMAN_CAPS = ["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_SETUID"];
const STRICT = { allowHostNetwork: false, allowNetAdmin: false, keepNetRaw: false };

function spec(opts: { netns?: string; caps?: string[] } = {}): OciSpec {
  const namespaces: { type: string; path?: string }[] = [{ type: "pid" }, { type: "mount" }];
  // Podman hands the runtime the namespace it made: a path under /run/netns.
  const netns = opts.netns ?? "/run/netns/netns-8a1f0c2e-3b7d-4c5e-9f60-1d2e3f4a5b6c";
  if (netns !== "host") {
    namespaces.push(netns === "new" ? { type: "network" } : { type: "network", path: netns });
  }
  const caps = opts.caps ?? PODMAN_CAPS;
  return {
    process: {
      env: ["EGRESSTRATOR_ENABLE=1"],
      capabilities: { bounding: caps, effective: caps, permitted: caps },
    },
    linux: { namespaces },
  };
}

Deno.test("hook: a namespace Podman made for the container is its own; another container's is not", () => {
  assert.deepEqual(hookDecision(spec(), STRICT), { action: "enforce" });
  assert.deepEqual(hookDecision(spec({ netns: "/var/run/netns/cni-1234" }), STRICT), { action: "enforce" });
  assert.deepEqual(hookDecision(spec({ netns: "new" }), STRICT), { action: "enforce" });
  const joined = hookDecision(spec({ netns: "/proc/4242/ns/net" }), STRICT);
  assert.equal(joined.action, "pass");
  assert.match((joined as { why: string }).why, /rules of its owner apply/);
  // Docker's own namespace paths are not Podman's: /var/run/docker/netns/... is joined.
  assert.equal(hookDecision(spec({ netns: "/var/run/docker/netns/abc" }), STRICT).action, "pass");
});

Deno.test("hook: the host's namespace is refused, or passed unfiltered when allowed", () => {
  const refused = hookDecision(spec({ netns: "host" }), STRICT);
  assert.equal(refused.action, "refuse");
  assert.match((refused as { why: string }).why, /EGRESSTRATOR_GATE_ALLOW_HOST_NETWORK=1/);
  const hostPath = "/run/netns/host-like";
  assert.equal(hookDecision(spec({ netns: hostPath }), STRICT, (p) => p === hostPath).action, "refuse");
  assert.equal(hookDecision(spec({ netns: "host" }), { ...STRICT, allowHostNetwork: true }).action, "pass");
});

Deno.test("hook: NET_ADMIN/SYS_ADMIN refused; NET_RAW refused (a hook cannot drop it) unless kept", () => {
  const admin = hookDecision(spec({ caps: [...PODMAN_CAPS, "CAP_SYS_ADMIN"] }), STRICT);
  assert.equal(admin.action, "refuse");
  assert.match((admin as { why: string }).why, /CAP_SYS_ADMIN/);
  const allowed = { ...STRICT, allowNetAdmin: true };
  assert.equal(hookDecision(spec({ caps: [...PODMAN_CAPS, "CAP_NET_ADMIN"] }), allowed).action, "enforce");
  const raw = hookDecision(spec({ caps: [...PODMAN_CAPS, "CAP_NET_RAW"] }), STRICT);
  assert.equal(raw.action, "refuse");
  assert.match((raw as { why: string }).why, /--cap-drop NET_RAW/);
  const kept = { ...STRICT, keepNetRaw: true };
  assert.equal(hookDecision(spec({ caps: [...PODMAN_CAPS, "CAP_NET_RAW"] }), kept).action, "enforce");
});

Deno.test("hook: unreadable state or bundle refuses; a spec without the opt-in passes untouched", async () => {
  const env = { EGRESSTRATOR_ENV_FILE: "/nonexistent" };
  assert.equal(await runHook("not json", env), 1);
  assert.equal(await runHook(JSON.stringify({ id: "abc", bundle: "/b" }), env), 1, "no pid");
  const dir = await Deno.makeTempDir();
  try {
    const state = JSON.stringify({ id: "abc", pid: 1, bundle: dir });
    assert.equal(await runHook(state, env), 1, "no config.json");
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ process: { env: ["A=1"] } }));
    assert.equal(await runHook(state, env), 0);
    await Deno.writeTextFile(`${dir}/config.json`, "{EGRESSTRATOR_ENABLE=1");
    assert.equal(await runHook(state, env), 1, "bad JSON that may opt in");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
