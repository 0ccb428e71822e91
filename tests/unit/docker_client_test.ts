import { deepStrictEqual as assertEquals, match, ok, rejects, strictEqual } from "node:assert/strict";
import { DockerClient, type DockerClientOptions, type DockerEvent } from "../../src/docker/client.ts";
import { resolveContainer } from "../../src/docker/resolve.ts";
import { chooseApiVersion, imageRef, versionAtMost } from "../../src/docker/types.ts";
import { DockerError } from "../../src/errors.ts";

/** A fake endpoint; `stop` aborts when the test ends, so nothing the fake waits on outlives it. */
type Route = (req: Request, url: URL, stop: AbortSignal) => Response | Promise<Response>;

interface Fake {
  host: string;
  /** `METHOD /path?query` of every request, in order. */
  calls: string[];
  /** JSON bodies of requests that had one, by `METHOD /path`. */
  bodies: Map<string, unknown>;
}

const json = (body: unknown, status = 200) => Response.json(body, { status });
const dockerError = (message: string, status: number) => json({ message }, status);

/** Waits `ms` or until `signal` aborts, leaving no timer behind. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/** A fake dockerd on a unix socket in a temp dir: `/version` answers `daemonApi`, the rest goes to `route`. */
async function withFake(
  opts: { daemonApi?: string; minApi?: string; failVersion?: number; route?: Route; tcp?: boolean },
  fn: (fake: Fake, client: (o?: DockerClientOptions) => DockerClient) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "egresstrator-fake-docker-" });
  const fake: Fake = { host: "", calls: [], bodies: new Map() };
  let versionFailures = opts.failVersion ?? 0;
  const stop = new AbortController();
  const handler = async (req: Request) => {
    const url = new URL(req.url);
    fake.calls.push(`${req.method} ${url.pathname}${url.search}`);
    const text = await req.text();
    if (text) fake.bodies.set(`${req.method} ${url.pathname}`, JSON.parse(text));
    if (url.pathname === "/version") {
      if (versionFailures-- > 0) return dockerError("daemon starting", 500);
      return json({
        ApiVersion: opts.daemonApi ?? "1.41",
        MinAPIVersion: opts.minApi ?? "1.12",
        Version: "20.10.24",
      });
    }
    return opts.route ? await opts.route(req, url, stop.signal) : dockerError("page not found", 404);
  };
  const server = opts.tcp
    ? Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, handler)
    : Deno.serve({ path: `${dir}/docker.sock`, onListen() {} }, handler);
  const addr = server.addr as Deno.NetAddr;
  fake.host = opts.tcp ? `tcp://127.0.0.1:${addr.port}` : `unix://${dir}/docker.sock`;
  const clients: DockerClient[] = [];
  const make = (o: DockerClientOptions = {}) => {
    const c = new DockerClient({ host: fake.host, ...o });
    clients.push(c);
    return c;
  };
  try {
    await fn(fake, make);
  } finally {
    stop.abort();
    for (const c of clients) c.close();
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
}

const ID = "3f2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";

Deno.test("negotiate: daemon 1.41 -> 1.41, and later calls use /v1.41", async () => {
  await withFake({ daemonApi: "1.41", route: () => json([]) }, async (fake, client) => {
    const c = client();
    assertEquals(await c.negotiate(), { apiVersion: "1.41", serverVersion: "20.10.24" });
    await c.listContainers();
    strictEqual(fake.calls[1], "GET /v1.41/containers/json");
  });
});

Deno.test("negotiate: daemon 1.45 -> our max 1.43", async () => {
  await withFake({ daemonApi: "1.45", route: () => json([]) }, async (fake, client) => {
    await client().listContainers({ all: true });
    assertEquals(fake.calls, ["GET /version", "GET /v1.43/containers/json?all=1"]);
  });
});

Deno.test("negotiate: an override the daemon supports is used as is", async () => {
  await withFake({ daemonApi: "1.41" }, async (_fake, client) => {
    strictEqual((await client({ apiVersion: "1.40" }).negotiate()).apiVersion, "1.40");
  });
});

Deno.test("negotiate: an override newer than the daemon is an error, not a silent clamp", async () => {
  await withFake({ daemonApi: "1.41" }, async (_fake, client) => {
    await rejects(client({ apiVersion: "1.43" }).negotiate(), (err: unknown) => {
      ok(err instanceof DockerError);
      match(
        err.message,
        /^docker at unix:\/\/.* \(20\.10\.24\): the daemon only supports API up to 1\.41; 1\.43 was requested$/,
      );
      return true;
    });
  });
});

Deno.test("negotiate: an override older than the daemon's minimum is an error", async () => {
  await withFake({ daemonApi: "1.41", minApi: "1.24" }, async (_fake, client) => {
    await rejects(
      client({ apiVersion: "1.12" }).negotiate(),
      /needs API 1\.24 or newer; 1\.12 was requested/,
    );
  });
});

Deno.test("negotiate: runs once for concurrent calls and is retried after a failure", async () => {
  await withFake({ failVersion: 1, route: () => json([]) }, async (fake, client) => {
    const c = client();
    await rejects(c.listContainers(), /docker version: daemon starting/);
    await Promise.all([c.listContainers(), c.listContainers(), c.negotiate()]);
    strictEqual(fake.calls.filter((x) => x === "GET /version").length, 2);
  });
});

Deno.test("chooseApiVersion and versionAtMost tables", () => {
  const table: [Parameters<typeof chooseApiVersion>[0], string | RegExp][] = [
    [{ daemon: "1.41" }, "1.41"],
    [{ daemon: "1.45" }, "1.43"],
    [{ daemon: "1.9" }, "1.9"],
    [{ daemon: "1.41", wanted: "1.41" }, "1.41"],
    [{ daemon: "1.41", wanted: "1.42" }, /only supports API up to 1\.41/],
    [{ daemon: "1.41", wanted: "latest" }, /not of the form 1\.41/],
    [{ daemon: "1.41", min: "1.24", wanted: "1.23" }, /needs API 1\.24/],
  ];
  for (const [input, want] of table) {
    const got = chooseApiVersion(input);
    if (typeof want === "string") strictEqual(got, want, JSON.stringify(input));
    else match(typeof got === "string" ? got : got.problem, want);
  }
  ok(versionAtMost("1.9", "1.41"));
  ok(!versionAtMost("1.41", "1.9"));
  ok(versionAtMost("1.41", "1.41"));
});

Deno.test("imageRef splits names for a pull", () => {
  assertEquals(imageRef("busybox"), { fromImage: "busybox", tag: "latest" });
  assertEquals(imageRef("egresstrator-test/helper:1"), { fromImage: "egresstrator-test/helper", tag: "1" });
  assertEquals(imageRef("reg.local:5000/x/y"), { fromImage: "reg.local:5000/x/y", tag: "latest" });
  assertEquals(imageRef("reg.local:5000/x/y:2"), { fromImage: "reg.local:5000/x/y", tag: "2" });
  assertEquals(imageRef("x@sha256:abc"), { fromImage: "x@sha256:abc" });
});

Deno.test("inspectContainer maps Docker's answer", async () => {
  const raw = {
    Id: ID,
    Name: "/web",
    RestartCount: 2,
    State: { Running: true, Pid: 4242, StartedAt: "2026-01-01T00:00:00Z" },
    Config: { Image: "nginx:1", Env: ["A=1"], Labels: { egress: "x" } },
    HostConfig: { NetworkMode: "bridge", CapAdd: ["NET_ADMIN"], CapDrop: ["cap_net_raw"], Privileged: false },
  };
  await withFake({ route: () => json(raw) }, async (fake, client) => {
    assertEquals(await client().inspectContainer("web"), {
      id: ID,
      name: "web",
      pid: 4242,
      running: true,
      env: ["A=1"],
      labels: { egress: "x" },
      networkMode: "bridge",
      image: "nginx:1",
      startedAt: "2026-01-01T00:00:00Z",
      restartCount: 2,
      capAdd: ["NET_ADMIN"],
      capDrop: ["cap_net_raw"],
      privileged: false,
      dns: [],
    });
    strictEqual(fake.calls[1], "GET /v1.41/containers/web/json");
  });
});

Deno.test("errors carry the operation and Docker's message", async () => {
  await withFake({ route: () => dockerError("driver failed: boom", 500) }, async (_fake, client) => {
    await rejects(client().inspectContainer(ID), (err: unknown) => {
      ok(err instanceof DockerError);
      strictEqual(err.message, "inspect container 3f2a1b9c8d7e: driver failed: boom");
      strictEqual(err.status, 500);
      return true;
    });
  });
});

Deno.test("inspectContainer: 404 is a DockerError 'no such container'", async () => {
  await withFake({ route: () => dockerError("No such container: ghost", 404) }, async (_fake, client) => {
    await rejects(client().inspectContainer("ghost"), (err: unknown) => {
      ok(err instanceof DockerError);
      strictEqual(err.message, "no such container: ghost");
      strictEqual(err.status, 404);
      return true;
    });
  });
});

Deno.test("unreachable socket: says where and what to check", async () => {
  const dir = await Deno.makeTempDir();
  const c = new DockerClient({ host: `unix://${dir}/missing.sock` });
  try {
    await rejects(c.listContainers(), (err: unknown) => {
      ok(err instanceof DockerError);
      strictEqual(err.status, undefined);
      match(
        err.message,
        /^docker at unix:\/\/.*\/missing\.sock is unreachable: No such file or directory \(os error 2\) \(is dockerd running\? permission to the socket\?\)$/,
      );
      return true;
    });
  } finally {
    c.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("unsupported host scheme is a DockerError", () => {
  try {
    new DockerClient({ host: "ssh://box" });
    ok(false, "expected a throw");
  } catch (err) {
    ok(err instanceof DockerError);
    match(err.message, /ssh:\/\/box is not supported/);
  }
});

Deno.test("timeouts say so, with the operation", async () => {
  const route: Route = async (_req, _url, stop) => {
    await sleep(5000, stop);
    return json([]);
  };
  await withFake({ route }, async (_fake, client) => {
    const t0 = Date.now();
    await rejects(client({ timeoutMs: 1000 }).listContainers(), (err: unknown) => {
      ok(err instanceof DockerError);
      match(err.message, /^list containers: docker at unix:\/\/.* timed out after 1000 ms$/);
      return true;
    });
    ok(Date.now() - t0 < 2000);
  });
});

Deno.test("a timeout while the body is still arriving is a timeout too", async () => {
  const route: Route = (_req, _url, stop) => {
    const body = new ReadableStream<Uint8Array>({
      async start(ctl) {
        ctl.enqueue(new TextEncoder().encode('[{"Id":'));
        await sleep(5000, stop);
        ctl.close();
      },
    });
    return new Response(body, { headers: { "content-type": "application/json" } });
  };
  await withFake({ route }, async (_fake, client) => {
    // 1 s, not less: the version negotiation before it must fit too, on a busy 2-core CI machine.
    await rejects(client({ timeoutMs: 1000 }).listContainers(), /list containers: .*timed out after 1000 ms/);
  });
});

Deno.test("aborting the call's signal rejects with the signal's reason", async () => {
  const route: Route = async (_req, _url, stop) => {
    await sleep(5000, stop);
    return json([]);
  };
  await withFake({ route }, async (_fake, client) => {
    const ac = new AbortController();
    const reason = new Error("shutting down");
    setTimeout(() => ac.abort(reason), 50);
    await rejects(client().listContainers({ signal: ac.signal }), (err: unknown) => err === reason);
  });
});

Deno.test("aborting the client's signal rejects with its reason", async () => {
  const route: Route = async (_req, _url, stop) => {
    await sleep(5000, stop);
    return json([]);
  };
  await withFake({ route }, async (_fake, client) => {
    const ac = new AbortController();
    const c = client({ signal: ac.signal });
    await c.negotiate();
    setTimeout(() => ac.abort(new Error("client closed")), 50);
    await rejects(c.inspectContainer("x"), /^Error: client closed$/);
  });
});

const enc = new TextEncoder();
const event = (action: string, name: string) =>
  JSON.stringify({
    status: action,
    id: ID,
    Type: "container",
    Action: action,
    Actor: { ID, Attributes: { name, image: "busybox" } },
    time: 1700000000,
    timeNano: 1700000000123456789,
  }) + "\n";

/** A streamed body: headers at once, each part after `gapMs`, then the end (or not until `stop`, with `hold`). */
function streamed(
  stop: AbortSignal,
  parts: string[],
  opts: { gapMs?: number; hold?: boolean } = {},
): Response {
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    async start(ctl) {
      for (const p of parts) {
        if (opts.gapMs) await sleep(opts.gapMs, stop);
        if (cancelled || stop.aborted) return;
        ctl.enqueue(enc.encode(p));
      }
      if (opts.hold) await sleep(10_000, stop);
      if (!cancelled) ctl.close();
    },
    cancel() {
      cancelled = true;
    },
  });
  return new Response(body, { headers: { "content-type": "application/json" } });
}

Deno.test("events: streams, parses split chunks, passes since and filters, ends with the stream", async () => {
  const e1 = event("start", "web");
  const e2 = event("die", "web");
  const route: Route = (_req, _url, stop) =>
    streamed(stop, [e1.slice(0, 30), e1.slice(30) + e2.slice(0, 10), e2.slice(10)]);
  await withFake({ route }, async (fake, client) => {
    const got: DockerEvent[] = [];
    const filters = { type: ["container"], event: ["start", "die"] };
    const signal = new AbortController().signal;
    for await (const ev of client().events({ since: "1700000000.123456789", filters, signal })) got.push(ev);
    assertEquals(got.map((e) => [e.action, e.id, e.name]), [["start", ID, "web"], ["die", ID, "web"]]);
    const url = new URL("http://x" + fake.calls[1].split(" ")[1]);
    strictEqual(url.pathname, "/v1.41/events");
    strictEqual(url.searchParams.get("since"), "1700000000.123456789");
    assertEquals(JSON.parse(url.searchParams.get("filters")!), filters);
  });
});

Deno.test("events: the request timeout does not cut a quiet stream; bad lines are reported", async () => {
  const route: Route = (_req, _url, stop) =>
    streamed(stop, ["garbage\n", event("start", "a"), event("stop", "a")], { gapMs: 700 });
  await withFake({ route }, async (_fake, client) => {
    const bad: string[] = [];
    const got: string[] = [];
    const signal = new AbortController().signal;
    // Gaps longer than the timeout: only the headers are timed (generous for a busy CI machine).
    for await (const ev of client({ timeoutMs: 500 }).events({ signal, onBadLine: (l) => bad.push(l) })) {
      got.push(ev.action);
    }
    assertEquals(got, ["start", "stop"]);
    assertEquals(bad, ["garbage"]);
  });
});

Deno.test("events: no response headers within the timeout is a timeout", async () => {
  const route: Route = async (_req, _url, stop) => {
    await sleep(5000, stop);
    return json({});
  };
  await withFake({ route }, async (_fake, client) => {
    const it = client({ timeoutMs: 1000 }).events({ signal: new AbortController().signal });
    await rejects(it[Symbol.asyncIterator]().next(), /docker events: docker at .* timed out after 1000 ms/);
  });
});

Deno.test("events: aborting mid-stream rejects with the signal's reason", async () => {
  const route: Route = (_req, _url, stop) => streamed(stop, [event("start", "a")], { hold: true });
  await withFake({ route }, async (_fake, client) => {
    const ac = new AbortController();
    const reason = new Error("stop watching");
    const got: string[] = [];
    await rejects(
      (async () => {
        for await (const ev of client().events({ signal: ac.signal })) {
          got.push(ev.action);
          setTimeout(() => ac.abort(reason), 20);
        }
      })(),
      (err: unknown) => err === reason,
    );
    assertEquals(got, ["start"]);
  });
});

Deno.test("helper lifecycle: create body, start (304 ok), wait without the request timeout, logs", async () => {
  const frames = new Uint8Array([
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    4,
    111,
    117,
    116,
    10,
    2,
    0,
    0,
    0,
    0,
    0,
    0,
    4,
    101,
    114,
    114,
    10,
  ]);
  const route: Route = (_req, url, stop) => {
    const p = url.pathname;
    if (p === "/v1.41/containers/create") return json({ Id: "helper1", Warnings: [] }, 201);
    if (p === "/v1.41/containers/helper1/start") return new Response(null, { status: 304 });
    // Like dockerd: the headers go out at once, the body when the container exits.
    if (p === "/v1.41/containers/helper1/wait") {
      return streamed(stop, ['{"StatusCode":3,"Error":null}\n'], { gapMs: 1200 });
    }
    if (p === "/v1.41/containers/helper1/logs") return new Response(frames);
    return dockerError("unexpected " + p, 500);
  };
  await withFake({ route }, async (fake, client) => {
    const c = client({ timeoutMs: 800 });
    const id = await c.createContainer({
      name: "egresstrator-helper-1",
      image: "helper:1",
      cmd: ["sh", "-c", "iptables-restore"],
      env: ["RULES=x"],
      labels: { "egresstrator.helper": "1" },
      networkContainer: ID,
      capAdd: ["NET_ADMIN"],
    });
    strictEqual(id, "helper1");
    strictEqual(fake.calls[1], "POST /v1.41/containers/create?name=egresstrator-helper-1");
    const body = fake.bodies.get("POST /v1.41/containers/create") as Record<string, unknown>;
    assertEquals(body.HostConfig, {
      NetworkMode: `container:${ID}`,
      CapAdd: ["NET_ADMIN"],
      AutoRemove: false,
    });
    assertEquals([body.Image, body.Cmd, body.Env, body.OpenStdin], ["helper:1", [
      "sh",
      "-c",
      "iptables-restore",
    ], [
      "RULES=x",
    ], false]);
    await c.startContainer(id);
    strictEqual(await c.waitContainer(id), 3);
    assertEquals(await c.containerLogs(id), { stdout: "out\n", stderr: "err\n" });
    ok(fake.calls.includes("GET /v1.41/containers/helper1/logs?stdout=1&stderr=1"));
  });
});

Deno.test("waitContainer: an Error in the answer is a DockerError", async () => {
  await withFake(
    { route: () => json({ StatusCode: -1, Error: { Message: "container vanished" } }) },
    async (_f, client) => {
      await rejects(client().waitContainer("h"), /wait for container h: container vanished/);
    },
  );
});

Deno.test("removeContainer: force and volumes; 404 ignored; other errors thrown", async () => {
  let status = 404;
  const route: Route = () =>
    status === 204 ? new Response(null, { status }) : dockerError("gone or busy", status);
  await withFake({ route }, async (fake, client) => {
    const c = client();
    await c.removeContainer("h", { force: true });
    strictEqual(fake.calls[1], "DELETE /v1.41/containers/h?force=1&v=1");
    status = 204;
    await c.removeContainer("h");
    status = 409;
    await rejects(c.removeContainer("h"), /remove container h: gone or busy/);
  });
});

Deno.test("imageExists: 200 -> true, 404 -> false, other -> error; names are path-encoded", async () => {
  const route: Route = (_req, url) => {
    if (url.pathname === "/v1.41/images/egresstrator-test%2Fhelper%3A1/json") return json({ Id: "sha256:1" });
    if (url.pathname.includes("broken")) return dockerError("storage error", 500);
    return dockerError("no such image", 404);
  };
  await withFake({ route }, async (_fake, client) => {
    const c = client();
    strictEqual(await c.imageExists("egresstrator-test/helper:1"), true);
    strictEqual(await c.imageExists("nope:1"), false);
    await rejects(c.imageExists("broken"), /inspect image broken: storage error/);
  });
});

Deno.test("pullImage: reads the progress stream; an error line in it is a DockerError", async () => {
  const route: Route = (_req, url, stop) => {
    const ok = url.searchParams.get("fromImage") === "good";
    return streamed(stop, [
      '{"status":"Pulling from library/x","id":"1"}\r\n',
      ok
        ? '{"status":"Download complete"}\r\n'
        : '{"errorDetail":{"message":"manifest unknown"},"error":"manifest unknown"}\r\n',
    ]);
  };
  await withFake({ route }, async (fake, client) => {
    const c = client();
    await c.pullImage("good:2");
    strictEqual(fake.calls[1], "POST /v1.41/images/create?fromImage=good&tag=2");
    await rejects(c.pullImage("bad"), (err: unknown) => {
      ok(err instanceof DockerError);
      strictEqual(err.message, "pull image bad: manifest unknown");
      return true;
    });
  });
});

Deno.test("tcp:// hosts use plain fetch", async () => {
  await withFake({
    tcp: true,
    route: () => json([{ Id: ID, Names: ["/web"], Image: "x", State: "running" }]),
  }, async (
    fake,
    client,
  ) => {
    ok(fake.host.startsWith("tcp://127.0.0.1:"));
    assertEquals(await client().listContainers(), [{
      id: ID,
      names: ["web"],
      image: "x",
      state: "running",
      labels: {},
    }]);
  });
});

const list = [
  { id: "ab12" + "0".repeat(60), names: ["web"], image: "x", state: "running", labels: {} },
  { id: "ab34" + "1".repeat(60), names: ["db"], image: "x", state: "exited", labels: {} },
  { id: "ab35" + "2".repeat(60), names: ["ab12"], image: "x", state: "running", labels: {} },
  { id: "cd56" + "3".repeat(60), names: ["cache"], image: "x", state: "created", labels: {} },
];
const lister = {
  listContainers: (o?: { all?: boolean }) => Promise.resolve(o?.all ? list : list.slice(0, 1)),
};

Deno.test("resolveContainer: full id, name with or without slash, unique prefix; all containers", async () => {
  strictEqual((await resolveContainer(lister, list[1].id)).names[0], "db");
  strictEqual((await resolveContainer(lister, "db")).id, list[1].id);
  strictEqual((await resolveContainer(lister, "/cache")).id, list[3].id);
  strictEqual((await resolveContainer(lister, "cd5")).names[0], "cache");
  strictEqual((await resolveContainer(lister, "ab34")).names[0], "db");
});

Deno.test("resolveContainer: an exact name wins over an id prefix (Docker's order)", async () => {
  strictEqual((await resolveContainer(lister, "ab12")).names[0], "ab12");
});

Deno.test("resolveContainer: unknown, ambiguous, too short and empty are ValidationErrors", async () => {
  await rejects(resolveContainer(lister, "zzz"), {
    name: "ValidationError",
    message: 'no container matches "zzz"',
  });
  await rejects(resolveContainer(lister, "ab3"), {
    name: "ValidationError",
    message: `"ab3" matches 2 containers: ab3411111111 (db), ab3522222222 (ab12)`,
  });
  await rejects(resolveContainer(lister, "ab"), { name: "ValidationError", message: /too short/ });
  await rejects(resolveContainer(lister, "  "), {
    name: "ValidationError",
    message: "container reference is empty",
  });
});

Deno.test("resolveContainer: through the client, with all=1", async () => {
  const raw = list.map((c) => ({
    Id: c.id,
    Names: c.names.map((n) => "/" + n),
    Image: c.image,
    State: c.state,
  }));
  await withFake({ route: () => json(raw) }, async (fake, client) => {
    strictEqual((await resolveContainer(client(), "cache")).id, list[3].id);
    strictEqual(fake.calls[1], "GET /v1.41/containers/json?all=1");
  });
});
