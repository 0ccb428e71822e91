/**
 * The Docker client against the real dockerd on /var/run/docker.sock. Needs the test images from
 * scripts/test_env.sh; fails (never skips) without them.
 */
import { deepStrictEqual as assertEquals, match, ok, rejects, strictEqual } from "node:assert/strict";
import { type DockerEvent, MAX_API_VERSION } from "../../src/docker/client.ts";
import { resolveContainer } from "../../src/docker/resolve.ts";
import { versionAtMost } from "../../src/docker/types.ts";
import { DockerError } from "../../src/errors.ts";
import {
  BUSYBOX_IMAGE,
  docker,
  execIn,
  removeAllTestObjects,
  requireImage,
  RUN_ID,
  runContainer,
  TEST_LABEL,
  testName,
} from "../support/docker.ts";
import { createNetwork } from "../support/networks.ts";

await requireImage(BUSYBOX_IMAGE);

Deno.test("negotiate with the real daemon", async () => {
  const c = docker();
  try {
    const { apiVersion, serverVersion } = await c.negotiate();
    match(apiVersion, /^1\.\d+$/);
    ok(versionAtMost(apiVersion, MAX_API_VERSION));
    if (serverVersion.startsWith("20.10.")) strictEqual(apiVersion, "1.41");
  } finally {
    c.close();
  }
});

Deno.test("list, inspect and resolve a running container", async () => {
  const c = docker();
  try {
    const name = testName("web");
    const { id } = await runContainer({
      name,
      cmd: ["sleep", "300"],
      env: ["EGRESS_ACL=web"],
      labels: { role: "web" },
    });
    const listed = await c.listContainers({ filters: { label: [`${TEST_LABEL}=${RUN_ID}`] } });
    assertEquals(listed.map((x) => [x.id, x.names, x.image, x.state, x.labels.role]), [[
      id,
      [name],
      BUSYBOX_IMAGE,
      "running",
      "web",
    ]]);
    const info = await c.inspectContainer(id.slice(0, 12));
    assertEquals(
      [info.id, info.name, info.running, info.networkMode, info.image, info.restartCount],
      [id, name, true, "none", BUSYBOX_IMAGE, 0],
    );
    ok(info.pid > 1, `pid ${info.pid}`);
    ok(info.env.includes("EGRESS_ACL=web"));
    strictEqual(info.labels[TEST_LABEL], RUN_ID);
    ok(Date.parse(info.startedAt) > Date.now() - 60_000);
    strictEqual((await resolveContainer(c, name)).id, id);
    strictEqual((await resolveContainer(c, "/" + name)).id, id);
    strictEqual((await resolveContainer(c, id.slice(0, 10))).id, id);
    await rejects(resolveContainer(c, name + "-nope"), { name: "ValidationError" });
    await rejects(c.inspectContainer(name + "-nope"), (err: unknown) => {
      ok(err instanceof DockerError);
      strictEqual(err.status, 404);
      strictEqual(err.message, `no such container: ${name}-nope`);
      return true;
    });
  } finally {
    c.close();
    await removeAllTestObjects();
  }
});

Deno.test("events: start, die and destroy of a container, with its id and name", async () => {
  const c = docker();
  const ac = new AbortController();
  const deadline = setTimeout(() => ac.abort(new Error("events did not arrive within 20 s")), 20_000);
  try {
    const since = (Date.now() / 1000).toFixed(9); // fractional seconds, as a string
    const seen: DockerEvent[] = [];
    const stream = c.events({
      since,
      filters: { type: ["container"], label: [`${TEST_LABEL}=${RUN_ID}`] },
      signal: ac.signal,
    });
    const name = testName("ev");
    const { id } = await runContainer({ name, cmd: ["sh", "-c", "sleep 0.2"] });
    for await (const ev of stream) {
      seen.push(ev);
      if (ev.action === "die") await c.removeContainer(id);
      if (ev.action === "destroy") break;
    }
    const mine = seen.filter((e) => e.id === id);
    assertEquals(mine.map((e) => e.action).filter((a) => ["start", "die", "destroy"].includes(a)), [
      "start",
      "die",
      "destroy",
    ]);
    for (const e of mine) assertEquals([e.type, e.name], ["container", name]);
    strictEqual(mine.find((e) => e.action === "die")?.attributes.exitCode, "0");
    ok(mine.every((e) => e.timeNano >= Number(since) * 1e9 - 1e9));
  } finally {
    clearTimeout(deadline);
    c.close();
    await removeAllTestObjects();
  }
});

Deno.test("helper lifecycle: create in a container's netns, start, wait, logs, remove", async () => {
  const c = docker();
  try {
    const { id: target } = await runContainer({ cmd: ["sleep", "300"] });
    const helperName = testName("helper");
    const helper = await c.createContainer({
      name: helperName,
      image: BUSYBOX_IMAGE,
      cmd: ["sh", "-c", 'echo out; echo "$MSG" >&2; exit 3'],
      env: ["MSG=err"],
      labels: { [TEST_LABEL]: RUN_ID },
      networkContainer: target,
      capAdd: ["NET_ADMIN"],
    });
    const info = await c.inspectContainer(helper);
    assertEquals([info.name, info.networkMode, info.running], [helperName, `container:${target}`, false]);
    await c.startContainer(helper);
    strictEqual(await c.waitContainer(helper, AbortSignal.timeout(20_000)), 3);
    assertEquals(await c.containerLogs(helper), { stdout: "out\n", stderr: "err\n" });
    await c.removeContainer(helper);
    await rejects(c.inspectContainer(helper), { status: 404 });
    await c.removeContainer(helper); // already gone: fine
  } finally {
    c.close();
    await removeAllTestObjects();
  }
});

Deno.test("waitContainer outlives the request timeout (only the headers are timed)", async () => {
  const c = docker({ timeoutMs: 1000 });
  try {
    const { id } = await runContainer({ cmd: ["sh", "-c", "sleep 2; exit 7"] });
    const t0 = Date.now();
    strictEqual(await c.waitContainer(id, AbortSignal.timeout(20_000)), 7);
    ok(Date.now() - t0 > 1200, "the wait really waited past the request timeout");
  } finally {
    c.close();
    await removeAllTestObjects();
  }
});

Deno.test("exec in a running container", async () => {
  try {
    const { id } = await runContainer({ cmd: ["sleep", "300"] });
    assertEquals(await execIn(id, ["sh", "-c", "echo hi; echo oops >&2; exit 4"]), {
      code: 4,
      stdout: "hi\n",
      stderr: "oops\n",
    });
  } finally {
    await removeAllTestObjects();
  }
});

Deno.test("imageExists", async () => {
  const c = docker();
  try {
    strictEqual(await c.imageExists(BUSYBOX_IMAGE), true);
    strictEqual(await c.imageExists("egresstrator-test/does-not-exist:0"), false);
  } finally {
    c.close();
  }
});

Deno.test("pullImage from an unreachable registry fails quickly and clearly", async () => {
  const c = docker();
  try {
    const t0 = Date.now();
    await rejects(c.pullImage("127.0.0.1:1/none:latest"), (err: unknown) => {
      ok(err instanceof DockerError);
      match(err.message, /^pull image 127\.0\.0\.1:1\/none:latest: .*127\.0\.0\.1:1.*connection refused/);
      return true;
    });
    ok(Date.now() - t0 < 5000);
  } finally {
    c.close();
  }
});

Deno.test("an unreachable docker host names itself", async () => {
  const c = docker({ host: "unix:///var/run/egresstrator-no-such.sock" });
  try {
    await rejects(c.negotiate(), /docker at unix:\/\/\/var\/run\/egresstrator-no-such\.sock is unreachable/);
  } finally {
    c.close();
  }
});

Deno.test("test support: labelled networks and containers are all removed", async () => {
  const c = docker();
  const label = { label: [`${TEST_LABEL}=${RUN_ID}`] };
  try {
    const net = testName("net");
    const netId = await createNetwork(net, {
      subnet: "172.29.213.0/24",
      ipv6: true,
      subnet6: "fd00:e9e5:213::/64",
    });
    const { id } = await runContainer({ cmd: ["sleep", "300"], network: net });
    const { stdout } = await execIn(id, ["ip", "addr"]);
    match(stdout, /inet 172\.29\.213\.\d+\/24/);
    match(stdout, /inet6 fd00:e9e5:213::[0-9a-f]+\/64/);
    await removeAllTestObjects();
    assertEquals(await c.listContainers({ all: true, filters: label }), []);
    const nets = await c.rawJson<unknown[]>({
      what: "list networks",
      path: "/networks",
      query: { filters: JSON.stringify(label) },
    });
    assertEquals(nets, []);
    ok(netId);
  } finally {
    c.close();
    await removeAllTestObjects();
  }
});
