/**
 * The test DNS server of tests/support/dns_server.ts, asked from a busybox container on a dual-stack network
 * this test creates: A records rotate one address per answer, a CNAME brings its target's address, an
 * unknown name is refused, a known name without the asked type has no answer, TTLs and TCP work, setZone
 * changes the answers, and queries() counts what reached the server.
 *
 * Traffic only flows between the two containers this test starts, on the network it creates.
 */
import assert from "node:assert/strict";
import {
  BUSYBOX_IMAGE,
  execIn,
  requireImage,
  runContainer,
  testName,
  withDocker,
} from "../support/docker.ts";
import { createFreeNetwork } from "../support/networks.ts";
import { waitFor } from "../support/egresstrator.ts";
import { startTestDns, type TestDns, type Zone } from "../support/dns_server.ts";

const SVC = ["10.77.0.1", "10.77.0.2", "10.77.0.3"];
const V6 = ["fd00:77::1", "fd00:77::2"];
const ZONE: Zone = {
  "svc.test": { a: SVC, ttl: 1 },
  "alias.test": { cname: "svc.test" },
  "v6.test": { aaaa: V6 },
  "long.test": { a: ["10.77.0.9"], ttl: 300 },
};

/** A DNS query message for (name, type) with id 0x4242 and RD set. */
function query(name: string, type: number): Uint8Array {
  const out = [0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
  for (const label of name.split(".")) out.push(label.length, ...new TextEncoder().encode(label));
  out.push(0, type >> 8, type & 0xff, 0, 1);
  return new Uint8Array(out);
}

/** `printf` octal escapes for bytes. */
function printfBytes(b: Uint8Array): string {
  return [...b].map((x) => `\\${x.toString(8).padStart(3, "0")}`).join("");
}

/** rcode, and the answers' type, TTL and data (addresses dotted, names as text) of a response. */
function parseResponse(b: Uint8Array): { id: number; rcode: number; answers: [number, number, string][] } {
  const u16 = (p: number) => (b[p] << 8) | b[p + 1];
  const name = (p: number): [string, number] => {
    const labels: string[] = [];
    let end = -1;
    while (b[p] !== 0) {
      if ((b[p] & 0xc0) === 0xc0) {
        if (end < 0) end = p + 2;
        p = ((b[p] & 0x3f) << 8) | b[p + 1];
        continue;
      }
      labels.push(new TextDecoder().decode(b.subarray(p + 1, p + 1 + b[p])));
      p += 1 + b[p];
    }
    return [labels.join("."), end < 0 ? p + 1 : end];
  };
  let p = 12;
  for (let i = 0; i < u16(4); i++) p = name(p)[1] + 4;
  const answers: [number, number, string][] = [];
  for (let i = 0; i < u16(6); i++) {
    p = name(p)[1];
    const [type, ttl, len] = [u16(p), u16(p + 4) * 65536 + u16(p + 6), u16(p + 8)];
    const data = type === 1 ? [...b.subarray(p + 10, p + 10 + len)].join(".") : name(p + 10)[0];
    answers.push([type, ttl, data]);
    p += 10 + len;
  }
  return { id: u16(0), rcode: b[3] & 0xf, answers };
}

Deno.test("test DNS server: rotation, CNAME, REFUSED, NODATA, TTL, TCP, setZone and query counts, asked from a container", async (t) => {
  await requireImage(BUSYBOX_IMAGE);
  const netName = testName("dnsnet");
  let netId = "";
  let dns: TestDns | undefined;
  let clientId = "";
  try {
    const net = await withDocker(
      undefined,
      (c) => createFreeNetwork(c, { name: netName, second: 232, ipv6: true }),
    );
    netId = net.id;
    const [d, client] = await Promise.all([
      startTestDns({ network: netName, zone: ZONE }),
      runContainer({ cmd: ["sleep", "600"], network: netName }),
    ]);
    dns = d;
    clientId = client.id;
    const server = d;
    assert.equal(await server.queries(), 0, "nothing counted before the first query");
    assert.ok(server.ip6, "the server has an IPv6 address on a dual-stack network");

    const sh = (cmd: string) => execIn(clientId, ["sh", "-c", cmd]);
    /** busybox nslookup: its exit code, whole output, and the addresses of the answer (not the server's). */
    const lookup = async (name: string, type = "a", at = server.ip) => {
      const r = await sh(`nslookup -type=${type} ${name} ${at}`);
      const out = r.stdout + r.stderr;
      const answer = out.split("\n\n").slice(1).join("\n\n");
      const addresses = [...answer.matchAll(/^Address:\s+(\S+)$/gm)].map((m) => m[1]);
      return { code: r.code, out, addresses };
    };

    await t.step(
      "three lookups of svc.test: three different addresses, one per answer, each counted",
      async () => {
        const seen: string[] = [];
        for (let i = 0; i < 3; i++) {
          const r = await lookup("svc.test");
          assert.equal(r.code, 0, r.out);
          assert.equal(r.addresses.length, 1, `exactly one address per answer:\n${r.out}`);
          seen.push(r.addresses[0]);
        }
        assert.deepEqual([...seen].sort(), SVC, `rotation over the three: ${seen.join(" ")}`);
        assert.equal(await server.queries("svc.test"), 3);
        assert.equal(await server.queries("SVC.test.", "a"), 3);
        assert.equal(await server.queries(), 3);
      },
    );

    await t.step("alias.test: the CNAME and an address of svc.test", async () => {
      const r = await lookup("alias.test");
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /alias\.test\s+canonical name = svc\.test/);
      assert.equal(r.addresses.length, 1, r.out);
      assert.ok(SVC.includes(r.addresses[0]), r.out);
      assert.equal(await server.queries("alias.test"), 1);
      assert.equal(await server.queries("svc.test"), 3, "a CNAME's target is not counted as asked");
    });

    await t.step("AAAA rotates too, over IPv4 and over IPv6", async () => {
      const a = await lookup("v6.test", "aaaa");
      // The client's IPv6 address may still be tentative (duplicate address detection) for a moment.
      const b = await waitFor(
        async () => {
          const r = await lookup("v6.test", "aaaa", server.ip6);
          return r.code === 0 && r.addresses.length === 1 ? r : undefined;
        },
        10_000,
        `an answer from [${server.ip6}]:53`,
      );
      assert.deepEqual([a.addresses[0], b.addresses[0]].sort(), V6, `${a.out}\n${b.out}`);
    });

    await t.step("unknown name: REFUSED, no address, still counted", async () => {
      const r = await lookup("example.com");
      assert.notEqual(r.code, 0, r.out);
      assert.match(r.out, /REFUSED/, r.out);
      assert.deepEqual(r.addresses, [], r.out);
      assert.equal(await server.queries("example.com"), 1);
    });

    await t.step("a known name without the asked type: no address, not refused (NODATA)", async () => {
      const r = await lookup("svc.test", "aaaa");
      assert.deepEqual(r.addresses, [], r.out);
      assert.doesNotMatch(r.out, /REFUSED|SERVFAIL|NXDOMAIN/, r.out);
      assert.equal(await server.queries("svc.test", "AAAA"), 1);
    });

    await t.step("TTLs, case, CNAME and REFUSED over TCP (raw messages through nc)", async () => {
      // busybox nc speaks TCP only; nslookup above spoke UDP.
      const ask = async (name: string) => {
        const q = query(name, 1);
        const msg = new Uint8Array([0, q.length, ...q]);
        const r = await sh(`printf '${printfBytes(msg)}' | nc -w 1 ${server.ip} 53 | od -An -v -tx1`);
        const bytes = new Uint8Array(
          r.stdout.trim().split(/\s+/).filter((x) => x).map((x) => parseInt(x, 16)),
        );
        assert.ok(bytes.length > 14, `no answer for ${name}: ${r.stdout}${r.stderr}`);
        assert.equal((bytes[0] << 8) | bytes[1], bytes.length - 2, "the TCP length prefix");
        return parseResponse(bytes.subarray(2));
      };
      assert.deepEqual(await ask("LONG.Test"), { id: 0x4242, rcode: 0, answers: [[1, 300, "10.77.0.9"]] });
      const alias = await ask("alias.test");
      assert.equal(alias.answers.length, 2, JSON.stringify(alias));
      assert.deepEqual(alias.answers[0], [5, 1, "svc.test"]);
      assert.equal(alias.answers[1][0], 1);
      assert.equal(alias.answers[1][1], 1, "the default TTL");
      assert.ok(SVC.includes(alias.answers[1][2]));
      assert.equal((await ask("example.com")).rcode, 5, "REFUSED");
      assert.equal(await server.queries("long.test", "A"), 1);
    });

    await t.step("setZone: the next answers come from the new zone", async () => {
      const before = await server.queries();
      await server.setZone({
        "svc.test": { a: ["10.77.0.42"] },
        "broken.test": { fail: "servfail" },
        "gone.test": { fail: "nxdomain" },
      });
      const r = await lookup("svc.test");
      assert.deepEqual(r.addresses, ["10.77.0.42"], r.out);
      const alias = await lookup("alias.test");
      assert.match(alias.out, /REFUSED/, `alias.test is no longer in the zone:\n${alias.out}`);
      assert.match((await lookup("broken.test")).out, /SERVFAIL/);
      assert.match((await lookup("gone.test")).out, /NXDOMAIN/);
      // busybox nslookup asks again after a SERVFAIL (3 times in all).
      const broken = await server.queries("broken.test");
      assert.ok(broken >= 1);
      assert.equal(await server.queries(), before + 3 + broken, "counts go on across zone changes");
      await assert.rejects(server.setZone({ "bad.test": { a: ["10.77.0.300"] } }), /bad IPv4 address/);
      assert.deepEqual(
        (await lookup("svc.test")).addresses,
        ["10.77.0.42"],
        "a bad zone leaves the last one",
      );
    });
  } finally {
    await dns?.stop();
    await withDocker(undefined, async (c) => {
      if (clientId) await c.removeContainer(clientId, { force: true });
      if (netId) {
        const res = await c.raw({
          what: "remove network",
          method: "DELETE",
          path: `/networks/${netId}`,
          allow: [404],
        });
        await res.body?.cancel();
      }
    });
  }
});
