/**
 * ConsulClient and watch() against real Consul agents started by tests/support/consul.ts.
 * Needs a consul binary (see that file); these tests never skip.
 */
import assert from "node:assert/strict";
import { ConsulClient, type ConsulClientOptions } from "../../src/consul/client.ts";
import { watch } from "../../src/consul/watch.ts";
import { ConsulError } from "../../src/errors.ts";
import {
  type ConsulAgent,
  findConsulBinary,
  startConsul,
  type StartConsulOptions,
} from "../support/consul.ts";

const text = (v: Uint8Array | null) => v === null ? null : new TextDecoder().decode(v);

/** Start an agent for the test body and always stop it. */
async function withAgent(opts: StartConsulOptions, fn: (agent: ConsulAgent) => Promise<void>): Promise<void> {
  const agent = await startConsul(opts);
  try {
    await fn(agent);
  } finally {
    await agent.stop();
  }
}

/** A client for the test body, always closed. */
async function withClient(opts: ConsulClientOptions, fn: (c: ConsulClient) => Promise<void>): Promise<void> {
  const c = new ConsulClient(opts);
  try {
    await fn(c);
  } finally {
    c.close();
  }
}

async function consulError(p: Promise<unknown>): Promise<ConsulError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof ConsulError, `expected a ConsulError, got ${err}`);
  return err;
}

Deno.test("support: a missing consul binary is an error, not a skip", () => {
  const saved = Deno.env.get("EGRESSTRATOR_TEST_CONSUL_BIN");
  try {
    Deno.env.set("EGRESSTRATOR_TEST_CONSUL_BIN", "/nonexistent/consul");
    assert.throws(
      () => findConsulBinary(),
      /EGRESSTRATOR_TEST_CONSUL_BIN=\/nonexistent\/consul is not an executable/,
    );
  } finally {
    if (saved === undefined) Deno.env.delete("EGRESSTRATOR_TEST_CONSUL_BIN");
    else Deno.env.set("EGRESSTRATOR_TEST_CONSUL_BIN", saved);
  }
});

Deno.test("plain agent: kv, catalog and blocking queries", async (t) => {
  await withAgent({}, async (agent) => {
    await withClient({ address: agent.address, timeoutMs: 5000 }, async (c) => {
      await t.step("kvTree: nested keys, folders, binary and empty values", async () => {
        await agent.putKv("egress/acl/web", "tcp 10.0.0.1 443\n");
        await agent.putKv("egress/acl/team/a/db", "udp 10.0.0.2 53\n");
        await agent.putKv("egress/acl/empty", "");
        await agent.putKv("egress/acl/bin", new Uint8Array([0xff, 0xfe, 0x00, 0x41]));
        await agent.putKv("egress/acl/folder/", "");
        await agent.putKv("egress/aclother", "outside the folder prefix");
        await agent.putKv("other/x", "y");
        const res = await c.kvTree("egress/acl/");
        assert.ok(res.index > 0);
        const byKey = new Map(res.data.map((p) => [p.key, p]));
        assert.deepEqual([...byKey.keys()].sort(), [
          "egress/acl/bin",
          "egress/acl/empty",
          "egress/acl/folder/",
          "egress/acl/team/a/db",
          "egress/acl/web",
        ]);
        assert.equal(text(byKey.get("egress/acl/web")!.value), "tcp 10.0.0.1 443\n");
        assert.equal(text(byKey.get("egress/acl/team/a/db")!.value), "udp 10.0.0.2 53\n");
        assert.deepEqual(byKey.get("egress/acl/bin")!.value, new Uint8Array([0xff, 0xfe, 0x00, 0x41]));
        // Consul 1.8.7 sends "Value": null for an empty value.
        assert.ok([null, ""].includes(text(byKey.get("egress/acl/empty")!.value)));
        assert.ok(byKey.get("egress/acl/web")!.modifyIndex > 0);
        // Without the trailing slash the prefix also matches siblings, as in Consul itself.
        const loose = await c.kvTree("egress/acl");
        assert.ok(loose.data.some((p) => p.key === "egress/aclother"));
      });

      await t.step("kvTree: a missing prefix is an empty list with an index", async () => {
        const res = await c.kvTree("nothing/here/");
        assert.deepEqual(res.data, []);
        assert.ok(res.index > 0);
      });

      await t.step("catalogService: service address vs node address, tag and dc filters", async () => {
        await agent.registerService({
          id: "web-1",
          name: "web",
          port: 8080,
          tags: ["blue"],
          nodeAddress: "10.1.0.1",
        });
        await agent.registerService({
          id: "web-2",
          name: "web",
          port: 80,
          address: "192.168.7.2",
          tags: ["green", "v2"],
          node: "node-b",
          nodeAddress: "10.1.0.2",
        });
        const all = await c.catalogService("web");
        assert.ok(all.index > 0);
        const byId = new Map(all.data.map((e) => [e.serviceId, e]));
        assert.deepEqual([...byId.keys()].sort(), ["web-1", "web-2"]);
        const w1 = byId.get("web-1")!;
        assert.equal(w1.address, "10.1.0.1");
        assert.equal(w1.serviceAddress, "");
        assert.equal(w1.servicePort, 8080);
        assert.equal(w1.node, "ext-node");
        assert.equal(w1.datacenter, "dc1");
        const w2 = byId.get("web-2")!;
        assert.equal(w2.address, "10.1.0.2");
        assert.equal(w2.serviceAddress, "192.168.7.2");
        assert.deepEqual(w2.serviceTags, ["green", "v2"]);

        const green = await c.catalogService("web", { tag: "green" });
        assert.deepEqual(green.data.map((e) => e.serviceId), ["web-2"]);
        assert.deepEqual((await c.catalogService("web", { tag: "nope" })).data, []);
        assert.equal((await c.catalogService("web", { datacenter: "dc1" })).data.length, 2);
        assert.deepEqual((await c.catalogService("no-such-service")).data, []);
        const e = await consulError(c.catalogService("web", { datacenter: "dc2" }));
        assert.equal(e.status, 500);
        assert.match(
          e.message,
          /^consul answered 500 for GET \/v1\/catalog\/service\/web: No path to datacenter/,
        );

        const services = await c.catalogServices();
        assert.deepEqual(services.data.web.sort(), ["blue", "green", "v2"]);
        assert.ok("consul" in services.data);

        await agent.deregisterService("web-2", "node-b");
        assert.deepEqual((await c.catalogService("web")).data.map((s) => s.serviceId), ["web-1"]);
      });

      await t.step("a name with query characters stays one service name", async () => {
        assert.deepEqual((await c.catalogService("web?tag=blue&dc=dc2")).data, []);
      });

      await t.step("blocking query returns after a change with a higher index", async () => {
        const first = await c.kvTree("egress/acl/");
        const started = performance.now();
        const blocked = c.kvTree("egress/acl/", { index: first.index, wait: "20s" });
        await new Promise((r) => setTimeout(r, 300));
        await agent.putKv("egress/acl/new", "tcp 10.9.9.9 22\n");
        const next = await blocked;
        const took = performance.now() - started;
        assert.ok(took >= 250 && took < 10_000, `blocked for ${took} ms`);
        assert.ok(next.index > first.index, `${next.index} > ${first.index}`);
        assert.ok(next.data.some((p) => p.key === "egress/acl/new"));
      });

      await t.step("blocking query without a change returns the same index after wait", async () => {
        const first = await c.kvTree("egress/acl/");
        const started = performance.now();
        const again = await c.kvTree("egress/acl/", { index: first.index, wait: "1s" });
        assert.equal(again.index, first.index);
        assert.ok(performance.now() - started >= 900);
      });

      await t.step("deleting the prefix: index still moves and data is empty", async () => {
        const before = await c.kvTree("egress/acl/");
        const blocked = c.kvTree("egress/acl/", { index: before.index, wait: "20s" });
        await agent.deleteKv("egress/acl/", true);
        const after = await blocked;
        assert.deepEqual(after.data, []);
        assert.ok(after.index > before.index, `${after.index} > ${before.index}`);
      });
    });
  });
});

Deno.test("plain agent: watch() delivers the first answer and each change", async () => {
  await withAgent({}, async (agent) => {
    await withClient({ address: agent.address, timeoutMs: 5000 }, async (c) => {
      await agent.putKv("egress/acl/a", "1");
      const ac = new AbortController();
      const seen: string[][] = [];
      const errors: unknown[] = [];
      const changed = async (n: number) => {
        const deadline = Date.now() + 10_000;
        while (seen.length < n) {
          if (Date.now() > deadline) throw new Error(`watch delivered ${seen.length} changes, wanted ${n}`);
          await new Promise((r) => setTimeout(r, 20));
        }
      };
      const done = watch({
        name: "kv egress/acl/",
        signal: ac.signal,
        wait: "10s",
        query: (index, signal, wait) => c.kvTree("egress/acl/", { index, wait, signal }),
        onChange: (data) => {
          seen.push(data.map((p) => p.key).sort());
        },
        onError: (err) => errors.push(err),
      });
      try {
        await changed(1);
        await agent.putKv("egress/acl/b", "2");
        await changed(2);
        await agent.putKv("other/unrelated", "x");
        await agent.deleteKv("egress/acl/a");
        await changed(3);
      } finally {
        ac.abort(new Error("test done"));
        await done;
      }
      assert.deepEqual(seen, [["egress/acl/a"], ["egress/acl/a", "egress/acl/b"], ["egress/acl/b"]]);
      assert.deepEqual(errors, []);
    });
  });
});

Deno.test("ACL agent: token rights and the 403 message", async (t) => {
  await withAgent({ acl: true }, async (agent) => {
    await agent.putKv("egress/acl/web", "tcp 10.0.0.1 443\n");
    await agent.putKv("secret/x", "nope");
    const reader = await agent.createToken('key_prefix "egress/" { policy = "read" }');

    await t.step("a token with key_prefix read can read the tree", async () => {
      await withClient({ address: agent.address, token: reader }, async (c) => {
        const res = await c.kvTree("egress/acl/");
        assert.deepEqual(res.data.map((p) => p.key), ["egress/acl/web"]);
        assert.equal(text(res.data[0].value), "tcp 10.0.0.1 443\n");
      });
    });

    await t.step("a wrong token gives the 403 message without the token", async () => {
      const wrong = crypto.randomUUID();
      await withClient({ address: agent.address, token: wrong }, async (c) => {
        const e = await consulError(c.kvTree("egress/acl/"));
        assert.equal(e.status, 403);
        assert.match(
          e.message,
          /^consul denied access to kv egress\/acl\/ \(403\): check the token \(--consul-token \/ CONSUL_HTTP_TOKEN\) has read rights: ACL not found/,
        );
        assert.ok(!e.message.includes(wrong));
      });
    });

    await t.step(
      "a valid token without rights on the prefix sees an empty tree (Consul filters lists)",
      async () => {
        await withClient({ address: agent.address, token: reader }, async (c) => {
          assert.deepEqual((await c.kvTree("secret/")).data, []);
        });
      },
    );

    await t.step("no token at all (anonymous, default deny) also sees an empty tree", async () => {
      await withClient({ address: agent.address }, async (c) => {
        assert.deepEqual((await c.kvTree("egress/acl/")).data, []);
      });
    });
  });
});

Deno.test("TLS agent: CA, hostname checks and clear TLS errors", async (t) => {
  await withAgent({ tls: true }, async (agent) => {
    assert.match(agent.address, /^https:\/\/127\.0\.0\.1:\d+$/);
    await agent.putKv("egress/acl/web", "tcp 10.0.0.1 443\n");
    const port = new URL(agent.httpUrl).port;

    await t.step("works with caCertPem", async () => {
      await withClient({ address: agent.address, caCertPem: agent.caCertPem }, async (c) => {
        assert.deepEqual((await c.kvTree("egress/acl/")).data.map((p) => p.key), ["egress/acl/web"]);
      });
    });

    await t.step("host:port plus ssl, and the localhost name, also verify", async () => {
      await withClient({ address: `localhost:${port}`, ssl: true, caCertPem: agent.caCertPem }, async (c) => {
        assert.equal((await c.kvTree("egress/acl/")).data.length, 1);
      });
    });

    await t.step("fails with a TLS message without the CA", async () => {
      await withClient({ address: agent.address, timeoutMs: 5000 }, async (c) => {
        const e = await consulError(c.kvTree("egress/acl/"));
        assert.equal(e.status, undefined);
        assert.match(
          e.message,
          new RegExp(
            `^TLS handshake with consul at https://127\\.0\\.0\\.1:${port} failed: .*certificate.*; check --ssl-ca-cert`,
          ),
        );
      });
    });

    await t.step("https to a plain http port says so", async () => {
      await withAgent({}, async (plain) => {
        await withClient({ address: plain.address, ssl: true, caCertPem: agent.caCertPem }, async (c) => {
          const e = await consulError(c.kvTree("egress/acl/"));
          assert.match(
            e.message,
            /^TLS handshake .* failed: .*; consul does not seem to serve https on this port/,
          );
        });
      });
    });

    await t.step("plain http to the https port is a 400 from consul", async () => {
      await withClient({ address: `127.0.0.1:${port}`, timeoutMs: 5000 }, async (c) => {
        const e = await consulError(c.kvTree("egress/acl/"));
        assert.equal(e.status, 400);
        assert.match(e.message, /HTTP request to an HTTPS server/);
      });
    });
  });
});

Deno.test("TLS agent with verify_incoming_https: client certificates", async (t) => {
  await withAgent({ tls: { verifyIncoming: true } }, async (agent) => {
    const cert = await Deno.readTextFile(agent.clientCertFile!);
    const key = await Deno.readTextFile(agent.clientKeyFile!);

    await t.step("works with a client certificate", async () => {
      const opts = {
        address: agent.address,
        caCertPem: agent.caCertPem,
        clientCertPem: cert,
        clientKeyPem: key,
      };
      await withClient(opts, async (c) => {
        assert.deepEqual((await c.kvTree("egress/acl/")).data, []);
      });
    });

    await t.step("fails clearly without one", async () => {
      await withClient({ address: agent.address, caCertPem: agent.caCertPem, timeoutMs: 5000 }, async (c) => {
        const e = await consulError(c.kvTree("egress/acl/"));
        assert.equal(e.status, undefined);
        assert.match(
          e.message,
          /^TLS handshake with consul at https:\/\/127\.0\.0\.1:\d+ failed: .*check the client certificate and key \(verify_incoming\)/,
        );
      });
    });
  });
});
