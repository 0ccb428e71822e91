/** Which containers can be filtered, and which capabilities get around the rules (pure). */
import assert from "node:assert/strict";
import { capsFromHostConfig, capsFromProcStatus, namespaceProblem } from "../../src/rules/isolation.ts";

Deno.test("isolation: host and container:<x> network modes are refused with a reason; others are fine", () => {
  assert.match(namespaceProblem({ networkMode: "host" })!, /shares the host's network namespace/);
  const id = "a".repeat(64);
  assert.equal(
    namespaceProblem({ networkMode: `container:${id}` }),
    "shares the namespace of aaaaaaaaaaaa; aaaaaaaaaaaa's rules apply",
  );
  assert.equal(
    namespaceProblem({ networkMode: "container:db" }),
    "shares the namespace of db; db's rules apply",
  );
  for (const mode of ["bridge", "none", "default", "my-net", ""]) {
    assert.equal(namespaceProblem({ networkMode: mode }), undefined);
  }
});

Deno.test("isolation: risky capabilities from HostConfig, as Docker combines defaults, CapAdd and CapDrop", () => {
  const c = (capAdd: string[], capDrop: string[], privileged = false) =>
    capsFromHostConfig({ capAdd, capDrop, privileged });
  assert.deepEqual(c([], []), ["NET_RAW"], "Docker's default set holds NET_RAW");
  assert.deepEqual(c([], ["NET_RAW"]), []);
  assert.deepEqual(c([], ["cap_net_raw"]), [], "any case, with CAP_");
  assert.deepEqual(c(["NET_ADMIN"], []), ["NET_RAW", "NET_ADMIN"]);
  assert.deepEqual(c(["NET_ADMIN"], ["ALL"]), ["NET_ADMIN"]);
  assert.deepEqual(c([], ["ALL"]), []);
  assert.deepEqual(c(["ALL"], ["NET_RAW"]), ["NET_ADMIN", "SYS_ADMIN"]);
  assert.deepEqual(c([], [], true), ["NET_RAW", "NET_ADMIN", "SYS_ADMIN"]);
});

Deno.test("isolation: risky capabilities from /proc/<pid>/status", () => {
  // Docker's default bounding set (0x00000000a80425fb) has NET_RAW (bit 13) only of the three.
  assert.deepEqual(capsFromProcStatus("Name:\tsleep\nCapBnd:\t00000000a80425fb\n"), ["NET_RAW"]);
  assert.deepEqual(capsFromProcStatus("CapBnd:\t00000000a80405fb\n"), []);
  assert.deepEqual(capsFromProcStatus("CapBnd:\t000001ffffffffff\n"), ["NET_RAW", "NET_ADMIN", "SYS_ADMIN"]);
  assert.equal(capsFromProcStatus("Name:\tx\n"), undefined);
});
