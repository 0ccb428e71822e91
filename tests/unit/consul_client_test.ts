import assert from "node:assert/strict";
import { ConsulClient, normalizeConsulAddress } from "../../src/consul/client.ts";
import { parseDuration } from "../../src/config/duration.ts";
import { ConfigError, ConsulError, ValidationError } from "../../src/errors.ts";
import { freePort } from "../support/ports.ts";

/** closing aborts just before the server shuts down, so hanging handlers can finish. */
type Handler = (req: Request, closing: AbortSignal) => Response | Promise<Response>;

interface Fake {
  address: string;
  headers: Headers[];
  urls: URL[];
}

/** Run fn against a fake Consul on a free TCP port; the server is always shut down. */
async function withFake(handler: Handler, fn: (fake: Fake) => Promise<void>): Promise<void> {
  const headers: Headers[] = [];
  const urls: URL[] = [];
  const closing = new AbortController();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    headers.push(new Headers(req.headers));
    urls.push(new URL(req.url));
    return handler(req, closing.signal);
  });
  try {
    await fn({ address: `127.0.0.1:${server.addr.port}`, headers, urls });
  } finally {
    closing.abort();
    await server.shutdown();
  }
}

/** Run fn with a client that is always closed. */
async function withClient(
  opts: { address: string; token?: string; timeoutMs?: number; signal?: AbortSignal },
  fn: (c: ConsulClient) => Promise<void>,
): Promise<void> {
  const c = new ConsulClient(opts);
  try {
    await fn(c);
  } finally {
    c.close();
  }
}

const json = (body: unknown, init: ResponseInit = {}) =>
  new Response(JSON.stringify(body), {
    ...init,
    headers: { "Content-Type": "application/json", ...(init.headers ?? {}) },
  });

const b64 = (s: string) => btoa(s);

/** The ConsulError p rejects with (fails when it resolves or rejects with something else). */
async function consulError(p: Promise<unknown>): Promise<ConsulError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof ConsulError, `expected a ConsulError, got ${err}`);
  return err;
}

Deno.test("normalizeConsulAddress: table", async (t) => {
  const ok: [string, boolean, string][] = [
    ["127.0.0.1:8500", false, "http://127.0.0.1:8500/"],
    ["127.0.0.1:8501", true, "https://127.0.0.1:8501/"],
    ["  consul.local:8500 ", false, "http://consul.local:8500/"],
    ["localhost", false, "http://localhost:8500/"],
    ["localhost", true, "https://localhost:8501/"],
    ["http://host:8500", false, "http://host:8500/"],
    ["http://host:8500/", false, "http://host:8500/"],
    ["HTTPS://host:8501", false, "https://host:8501/"],
    ["https://host", false, "https://host/"],
    ["http://host:8500", true, "https://host:8500/"],
    ["[::1]:8500", false, "http://[::1]:8500/"],
    ["[::1]", false, "http://[::1]:8500/"],
    ["host:80", false, "http://host/"],
  ];
  for (const [input, ssl, want] of ok) {
    await t.step(`${input} ssl=${ssl} -> ${want}`, () => {
      assert.equal(normalizeConsulAddress(input, ssl).href, want);
    });
  }
  const bad = [
    "",
    "   ",
    "foo bar",
    "ftp://x",
    "unix:///var/run/consul.sock",
    "host:65536",
    "host:99999",
    "host:0",
    "host:-1",
    "host:abc",
    "http://user:pw@host:8500",
    "http://host:8500/v1",
    "host:8500?x=1",
    "http://",
    "::1:8500",
    "ho\tst:8500",
  ];
  for (const input of bad) {
    await t.step(`rejects ${JSON.stringify(input)}`, () => {
      assert.throws(() => normalizeConsulAddress(input, false), ConfigError);
    });
  }
});

Deno.test("parseDuration: the blocking wait takes go durations (one grammar with every option)", () => {
  assert.equal(parseDuration("wait", "55s"), 55_000);
  assert.equal(parseDuration("wait", "5m"), 300_000);
  assert.equal(parseDuration("wait", "1m30s"), 90_000);
  assert.equal(parseDuration("wait", "250ms"), 250);
  assert.equal(parseDuration("wait", "1.5s"), 1500);
  assert.equal(parseDuration("wait", "1h"), 3_600_000);
  for (const bad of ["", "s", "10x", "-1s", "1s1", "1 s"]) {
    assert.throws(() => parseDuration("wait", bad), ConfigError, bad);
  }
});

Deno.test("ConsulClient: rejects bad options", () => {
  assert.throws(() => new ConsulClient({ address: "foo bar" }), ConfigError);
  assert.throws(() => new ConsulClient({ address: "h:1", timeoutMs: 0 }), ConfigError);
  assert.throws(
    () => new ConsulClient({ address: "h:1", clientCertPem: "x" }),
    /both the certificate and its key/,
  );
  assert.throws(
    () => new ConsulClient({ address: "h:1", caCertPem: "not a pem" }),
    /holds no PEM certificate/,
  );
  assert.throws(
    () => new ConsulClient({ address: "h:1", clientCertPem: "x", clientKeyPem: "y" }),
    /cannot load the consul TLS certificates/,
  );
});

Deno.test("kvTree: decodes base64 values, null values and nested keys; sends recurse and token", async () => {
  const bytes = new Uint8Array([0xff, 0x00, 0xfe, 0x41]);
  const body = [
    { Key: "egress/acl/", Value: null, Flags: 0, ModifyIndex: 5, CreateIndex: 5, LockIndex: 0 },
    { Key: "egress/acl/web", Value: b64("tcp 10.0.0.1 443\n"), Flags: 7, ModifyIndex: 9 },
    { Key: "egress/acl/team/a/db", Value: b64(String.fromCharCode(...bytes)), Flags: 0, ModifyIndex: 11 },
    { Key: "egress/acl/empty", Value: "", Flags: 0, ModifyIndex: 12 },
  ];
  await withFake(
    () => json(body, { headers: { "X-Consul-Index": "42" } }),
    async (f) => {
      await withClient({ address: f.address, token: "s3cr3t-token" }, async (c) => {
        const res = await c.kvTree("egress/acl/");
        assert.equal(res.index, 42);
        assert.deepEqual(res.data.map((p) => p.key), body.map((b) => b.Key));
        assert.equal(res.data[0].value, null);
        assert.equal(new TextDecoder().decode(res.data[1].value!), "tcp 10.0.0.1 443\n");
        assert.equal(res.data[1].flags, 7);
        assert.equal(res.data[1].modifyIndex, 9);
        assert.deepEqual(res.data[2].value, bytes);
        assert.deepEqual(res.data[3].value, new Uint8Array());
      });
      assert.equal(f.urls[0].pathname, "/v1/kv/egress/acl/");
      assert.equal(f.urls[0].searchParams.get("recurse"), "true");
      assert.equal(f.headers[0].get("X-Consul-Token"), "s3cr3t-token");
      assert.ok(!f.urls[0].search.includes("s3cr3t"));
    },
  );
});

Deno.test("kvTree: no token header without a token", async () => {
  await withFake(() => json([]), async (f) => {
    await withClient({ address: f.address }, (c) => c.kvTree("x/").then(() => {}));
    assert.equal(f.headers[0].get("X-Consul-Token"), null);
  });
});

Deno.test("kvTree: 404 is an empty tree with the index", async () => {
  await withFake(() => new Response("", { status: 404, headers: { "X-Consul-Index": "77" } }), async (f) => {
    await withClient({ address: f.address }, async (c) => {
      assert.deepEqual(await c.kvTree("missing/"), { data: [], index: 77 });
    });
  });
});

Deno.test("errors: 403 names the key and the token flag, never the token", async () => {
  const token = "0b5f4ad2-aaaa-bbbb-cccc-1234567890ab";
  await withFake(() => new Response(`Permission denied for ${token}`, { status: 403 }), async (f) => {
    await withClient({ address: f.address, token }, async (c) => {
      const e = await consulError(c.kvTree("egress/acl/"));
      assert.equal(e.status, 403);
      assert.match(e.message, /^consul denied access to kv egress\/acl\/ \(403\): check the token/);
      assert.match(e.message, /--consul-token \/ CONSUL_HTTP_TOKEN/);
      assert.match(e.message, /Permission denied/);
      assert.match(e.message, /GET \/v1\/kv\/egress\/acl\//);
      assert.ok(!e.message.includes(token), e.message);
      assert.ok(!String(e.stack).includes(token));
    });
  });
});

Deno.test("errors: other statuses, malformed JSON and wrong shapes", async (t) => {
  const cases: { name: string; res: () => Response; status?: number; msg: RegExp }[] = [
    {
      name: "500 with a long body is cut to 200 chars",
      res: () => new Response("rpc error: " + "x".repeat(500), { status: 500 }),
      status: 500,
      msg: /^consul answered 500 for GET \/v1\/kv\/egress\/acl\/: rpc error: x+$/,
    },
    {
      name: "502 from a proxy",
      res: () => new Response("bad gateway", { status: 502 }),
      status: 502,
      msg: /^consul answered 502 for GET \/v1\/kv\/egress\/acl\/: bad gateway$/,
    },
    {
      name: "503 with an empty body",
      res: () => new Response(null, { status: 503 }),
      status: 503,
      msg: /^consul answered 503 for GET \/v1\/kv\/egress\/acl\/: \(empty body\)$/,
    },
    {
      name: "malformed JSON",
      res: () => new Response('[{"Key": ', { status: 200 }),
      status: 200,
      msg: /^consul returned malformed JSON for GET \/v1\/kv\/egress\/acl\/: /,
    },
    {
      name: "not an array",
      res: () => json({ Key: "a" }),
      status: 200,
      msg: /malformed JSON .*expected an array/,
    },
    {
      name: "invalid base64",
      res: () => json([{ Key: "a", Value: "%%%not base64" }]),
      status: 200,
      msg: /malformed JSON/,
    },
  ];
  for (const tc of cases) {
    await t.step(tc.name, async () => {
      await withFake(tc.res, async (f) => {
        await withClient({ address: f.address }, async (c) => {
          const e = await consulError(c.kvTree("egress/acl/"));
          assert.equal(e.status, tc.status);
          assert.match(e.message, tc.msg);
          if (tc.name.startsWith("500")) assert.ok(e.message.length < 260, e.message);
        });
      });
    });
  }
});

Deno.test("path encoding: names cannot escape their path segment or add query params", async () => {
  await withFake(() => json([]), async (f) => {
    await withClient({ address: f.address }, async (c) => {
      await c.catalogService("a?b=c&x", { tag: "t&dc=evil" });
      await c.catalogService("../x");
      await c.catalogService("web#frag");
      await c.kvTree("egress/acl/a b?recurse=false&x=1/");
      await c.kvTree("");
    });
    const [s1, s2, s3, kv, root] = f.urls;
    assert.equal(s1.pathname, "/v1/catalog/service/a%3Fb%3Dc%26x");
    assert.deepEqual([...s1.searchParams.keys()], ["tag"]);
    assert.equal(s1.searchParams.get("tag"), "t&dc=evil");
    assert.equal(s2.pathname, "/v1/catalog/service/..%2Fx");
    assert.equal(s3.pathname, "/v1/catalog/service/web%23frag");
    assert.equal(kv.pathname, "/v1/kv/egress/acl/a%20b%3Frecurse%3Dfalse%26x%3D1/");
    assert.deepEqual([...kv.searchParams.entries()], [["recurse", "true"]]);
    assert.equal(root.pathname, "/v1/kv/");
  });
});

Deno.test("path encoding: dot segments are refused before any request", async () => {
  await withClient({ address: "127.0.0.1:9" }, async (c) => {
    await assert.rejects(c.kvTree("egress/../secret/"), ValidationError);
    await assert.rejects(c.kvTree("./x"), ValidationError);
    await assert.rejects(c.catalogService(".."), ValidationError);
    await assert.rejects(c.catalogService(""), ValidationError);
  });
});

Deno.test("blocking query: index, wait, stale, dc params and header parsing", async (t) => {
  const cases: { header: string | null; want: number }[] = [
    { header: "1234", want: 1234 },
    { header: " 99 ", want: 99 },
    { header: null, want: 0 },
    { header: "abc", want: 0 },
    { header: "-5", want: 0 },
    { header: "1.5", want: 0 },
    { header: "99999999999999999999", want: 0 },
  ];
  for (const tc of cases) {
    await t.step(`X-Consul-Index ${JSON.stringify(tc.header)} -> ${tc.want}`, async () => {
      const headers: Record<string, string> = {};
      if (tc.header !== null) headers["X-Consul-Index"] = tc.header;
      await withFake(() => json({ web: ["a", "b"], db: null }, { headers }), async (f) => {
        await withClient({ address: f.address }, async (c) => {
          const res = await c.catalogServices({ index: 17, wait: "1s", stale: true, datacenter: "dc2" });
          assert.equal(res.index, tc.want);
          assert.deepEqual(res.data, { web: ["a", "b"], db: [] });
        });
        const q = f.urls[0].searchParams;
        assert.equal(f.urls[0].pathname, "/v1/catalog/services");
        assert.equal(q.get("index"), "17");
        assert.equal(q.get("wait"), "1s");
        assert.equal(q.get("stale"), "");
        assert.equal(q.get("dc"), "dc2");
      });
    });
  }
});

Deno.test("blocking query: the request may outlast timeoutMs by the wait", async () => {
  await withFake(async () => {
    await new Promise((r) => setTimeout(r, 300));
    return json([], { headers: { "X-Consul-Index": "8" } });
  }, async (f) => {
    await withClient({ address: f.address, timeoutMs: 50 }, async (c) => {
      // Without wait the 50 ms timeout fires; with wait=1s the budget is 1s + 1/16 + 5s.
      const e = await consulError(c.kvTree("k/"));
      assert.match(e.message, /timed out after 50 ms/);
      const res = await c.kvTree("k/", { index: 7, wait: "1s" });
      assert.equal(res.index, 8);
    });
  });
});

Deno.test("catalogService: maps entries, tag and dc", async () => {
  const body = [{
    ID: "x",
    Node: "n1",
    Address: "10.0.0.1",
    Datacenter: "dc1",
    ServiceID: "web-1",
    ServiceName: "web",
    ServiceAddress: "",
    ServicePort: 8080,
    ServiceTags: null,
  }, {
    Node: "n2",
    Address: "10.0.0.2",
    ServiceID: "web-2",
    ServiceName: "web",
    ServiceAddress: "192.168.1.2",
    ServicePort: 80,
    ServiceTags: ["blue", "v2"],
  }];
  await withFake(() => json(body, { headers: { "X-Consul-Index": "3" } }), async (f) => {
    await withClient({ address: f.address }, async (c) => {
      const res = await c.catalogService("web", { tag: "blue", datacenter: "dc1" });
      assert.deepEqual(res.data, [
        {
          node: "n1",
          address: "10.0.0.1",
          serviceId: "web-1",
          serviceName: "web",
          serviceAddress: "",
          servicePort: 8080,
          serviceTags: [],
          datacenter: "dc1",
        },
        {
          node: "n2",
          address: "10.0.0.2",
          serviceId: "web-2",
          serviceName: "web",
          serviceAddress: "192.168.1.2",
          servicePort: 80,
          serviceTags: ["blue", "v2"],
          datacenter: undefined,
        },
      ]);
    });
    assert.equal(f.urls[0].searchParams.get("tag"), "blue");
    assert.equal(f.urls[0].searchParams.get("dc"), "dc1");
  });
});

/** A handler that never answers until the client goes away. */
const hang: Handler = (_req, closing) =>
  new Promise((resolve) => closing.addEventListener("abort", () => resolve(new Response("late"))));

Deno.test("timeout: a server that never answers gives a timeout message", async () => {
  await withFake(hang, async (f) => {
    await withClient({ address: f.address, timeoutMs: 100 }, async (c) => {
      const started = performance.now();
      const e = await consulError(c.kvTree("egress/acl/"));
      assert.ok(performance.now() - started < 2000);
      assert.equal(e.status, undefined);
      assert.equal(
        e.message,
        `consul at http://${f.address} did not answer GET /v1/kv/egress/acl/: timed out after 100 ms`,
      );
    });
  });
});

Deno.test("abort: the caller's signal rejects with its reason unchanged", async () => {
  const reason = new Error("shutting down");
  await withFake(hang, async (f) => {
    const perCall = new AbortController();
    await withClient({ address: f.address }, async (c) => {
      setTimeout(() => perCall.abort(reason), 50);
      const err = await c.kvTree("x/", { signal: perCall.signal }).then(() => undefined, (e) => e);
      assert.equal(err, reason);
    });
    const shutdown = new AbortController();
    await withClient({ address: f.address, signal: shutdown.signal }, async (c) => {
      setTimeout(() => shutdown.abort(reason), 50);
      const err = await c.catalogServices({ index: 5, wait: "30s" }).then(() => undefined, (e) => e);
      assert.equal(err, reason);
      // Already aborted: rejects at once with the same reason.
      const again = await c.kvTree("x/").then(() => undefined, (e) => e);
      assert.equal(again, reason);
    });
  });
});

Deno.test("unreachable: connection refused is named with the address and path", async () => {
  const port = freePort();
  await withClient({ address: `127.0.0.1:${port}`, token: "tok-123" }, async (c) => {
    const e = await consulError(c.kvTree("egress/acl/"));
    assert.equal(e.status, undefined);
    assert.equal(
      e.message,
      `consul at http://127.0.0.1:${port} is unreachable: connection refused (GET /v1/kv/egress/acl/)`,
    );
  });
});

Deno.test("unreachable: DNS failure", async () => {
  await withClient({ address: "consul.invalid:8500", timeoutMs: 5000 }, async (c) => {
    const e = await consulError(c.kvTree("egress/acl/"));
    assert.match(e.message, /^consul at http:\/\/consul\.invalid:8500 is unreachable: DNS lookup failed/);
  });
});
