/**
 * Asking an upstream resolver: a tiny responder on loopback (node:dgram, node:net) that sends forged,
 * stray and split replies around the real one. No real DNS.
 */
import assert from "node:assert/strict";
import dgram from "node:dgram";
import net from "node:net";
import { Buffer } from "node:buffer";
// @ts-types="@types/dns-packet"
import * as packet from "dns-packet";
import { queryTcp, queryUdp } from "../../src/fqdn/upstream.ts";

const QUERY = new Uint8Array(packet.encode({
  type: "query",
  id: 0x5151,
  flags: packet.RECURSION_DESIRED,
  questions: [{ type: "A", name: "api.stripe.com" }],
}));

/** A response to QUERY with the given id and flags (QR is set by "response"; flags 0 leaves it set). */
function reply(id: number, address: string, type: "response" | "query" = "response"): Buffer {
  return packet.encode({
    type,
    id,
    flags: packet.RECURSION_DESIRED | packet.RECURSION_AVAILABLE,
    questions: [{ type: "A", name: "API.stripe.com" }],
    answers: [{ type: "A", name: "api.stripe.com", ttl: 60, data: address }],
  });
}

function bindUdp(type: "udp4" | "udp6", address: string, port = 0): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket(type);
    s.once("error", reject);
    s.bind(port, address, () => resolve(s));
  });
}

const closeUdp = (s: dgram.Socket) => new Promise<void>((resolve) => s.close(() => resolve()));

function listenTcp(onSocket: (s: net.Socket) => void): Promise<net.Server> {
  return new Promise((resolve) => {
    const server = net.createServer(onSocket);
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

const closeTcp = (s: net.Server) => new Promise<void>((resolve) => s.close(() => resolve()));
const portOf = (s: net.Server) => (s.address() as net.AddressInfo).port;
const framed = (msg: Uint8Array) => Buffer.concat([Buffer.from([msg.length >> 8, msg.length & 0xff]), msg]);

Deno.test("queryUdp: forged and stray replies are ignored; the real one comes back byte for byte", async () => {
  const server = await bindUdp("udp4", "127.0.0.1");
  const port = server.address().port;
  const otherPort = await bindUdp("udp4", "127.0.0.1");
  const otherAddress = await bindUdp("udp4", "127.0.0.2", port);
  const real = reply(0x5151, "192.0.2.1");
  const got: Buffer[] = [];
  let late: ReturnType<typeof setTimeout> | undefined;
  server.on("message", (msg, from) => {
    got.push(msg);
    const send = (s: dgram.Socket, b: Buffer) => s.send(b, from.port, from.address);
    send(otherPort, reply(0x5151, "203.0.113.1")); // right id, wrong port
    send(otherAddress, reply(0x5151, "203.0.113.2")); // right id and port, wrong address
    send(server, reply(0x5152, "203.0.113.3")); // wrong id
    send(server, reply(0x5151, "203.0.113.4", "query")); // not a response
    send(server, Buffer.from([0x51])); // a fragment
    late = setTimeout(() => send(server, real), 30);
  });
  try {
    const answer = await queryUdp({ address: "127.0.0.1", port }, QUERY, 2000);
    assert.deepEqual(got.map((b) => new Uint8Array(b)), [QUERY], "the query went out unchanged");
    assert.ok(answer instanceof Uint8Array);
    assert.deepEqual(new Uint8Array(answer), new Uint8Array(real));
  } finally {
    clearTimeout(late);
    await Promise.all([server, otherPort, otherAddress].map(closeUdp));
  }
});

Deno.test("queryUdp: IPv6 servers get a udp6 socket; the address is compared in canonical form", async () => {
  const server = await bindUdp("udp6", "::1");
  const port = server.address().port;
  const real = reply(0x5151, "192.0.2.6");
  server.on("message", (_msg, from) => server.send(real, from.port, from.address));
  try {
    const answer = await queryUdp({ address: "0:0:0:0:0:0:0:1", port }, QUERY, 2000);
    assert.deepEqual(new Uint8Array(answer), new Uint8Array(real));
  } finally {
    await closeUdp(server);
  }
});

Deno.test("queryUdp: no answer rejects naming the server; so does a cancel", async () => {
  const server = await bindUdp("udp4", "127.0.0.1");
  const port = server.address().port;
  try {
    await assert.rejects(
      queryUdp({ address: "127.0.0.1", port }, QUERY, 100),
      new RegExp(`DNS query to udp 127\\.0\\.0\\.1:${port}: no answer within 100 ms`),
    );
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error("shutting down")), 20);
    await assert.rejects(queryUdp({ address: "127.0.0.1", port }, QUERY, 5000, ac.signal), /cancelled/);
    await assert.rejects(
      queryUdp({ address: "127.0.0.1", port }, QUERY, 5000, AbortSignal.abort()),
      /cancelled/,
    );
  } finally {
    await closeUdp(server);
  }
});

Deno.test("queryUdp/queryTcp: bad servers and short queries are refused before anything is sent", async () => {
  await assert.rejects(
    queryUdp({ address: "dns.google" }, QUERY, 100),
    /"dns\.google" is not an IPv4 or IPv6/,
  );
  await assert.rejects(queryTcp({ address: "127.0.0.1", port: 70000 }, QUERY, 100), /port 70000/);
  await assert.rejects(
    queryUdp({ address: "127.0.0.1" }, new Uint8Array(5), 100),
    /shorter than a DNS header/,
  );
});

Deno.test("queryTcp: length framing, a wrong-id frame skipped, the answer split across two writes", async () => {
  const real = reply(0x5151, "192.0.2.2");
  const received: Buffer[] = [];
  const server = await listenTcp((s) => {
    s.on("data", (chunk: Buffer) => {
      received.push(chunk);
      s.write(framed(reply(0x9999, "203.0.113.9")));
      const whole = framed(real);
      s.write(whole.subarray(0, 1));
      setTimeout(() => s.write(whole.subarray(1, 20)), 20);
      setTimeout(() => s.end(whole.subarray(20)), 40);
    });
  });
  try {
    const answer = await queryTcp({ address: "127.0.0.1", port: portOf(server) }, QUERY, 2000);
    assert.deepEqual(new Uint8Array(answer), new Uint8Array(real));
    assert.deepEqual(new Uint8Array(Buffer.concat(received)), new Uint8Array(framed(QUERY)));
  } finally {
    await closeTcp(server);
  }
});

Deno.test("queryTcp: a closed connection, a refused one and silence each reject naming the server", async () => {
  const closing = await listenTcp((s) => s.on("data", () => s.end(framed(reply(0x1111, "203.0.113.1")))));
  const silent: net.Socket[] = [];
  const quiet = await listenTcp((s) => silent.push(s));
  const gone = await listenTcp(() => {});
  const gonePort = portOf(gone);
  await closeTcp(gone);
  try {
    await assert.rejects(
      queryTcp({ address: "127.0.0.1", port: portOf(closing) }, QUERY, 2000),
      /tcp 127\.0\.0\.1:\d+: connection closed before an answer/,
    );
    await assert.rejects(
      queryTcp({ address: "127.0.0.1", port: gonePort }, QUERY, 2000),
      new RegExp(`DNS query to tcp 127\\.0\\.0\\.1:${gonePort}: `),
    );
    await assert.rejects(
      queryTcp({ address: "127.0.0.1", port: portOf(quiet) }, QUERY, 100),
      /no answer within 100 ms/,
    );
  } finally {
    silent.forEach((s) => s.destroy());
    await Promise.all([closeTcp(closing), closeTcp(quiet)]);
  }
});
