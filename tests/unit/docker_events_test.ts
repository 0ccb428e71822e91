import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { demuxLogs, type DockerEvent, parseEventStream, parseJsonStream } from "../../src/docker/events.ts";

const enc = new TextEncoder();

async function* chunksOf(...parts: (string | Uint8Array)[]): AsyncIterable<Uint8Array> {
  for (const p of parts) yield typeof p === "string" ? enc.encode(p) : p;
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** An event as dockerd 20.10 writes it (captured from a real daemon, ids shortened). */
function rawEvent(action: string, id: string, name: string, extra: Record<string, string> = {}): string {
  return JSON.stringify({
    status: action,
    id,
    from: "egresstrator-test/busybox:1",
    Type: "container",
    Action: action,
    Actor: { ID: id, Attributes: { image: "egresstrator-test/busybox:1", name, ...extra } },
    scope: "local",
    time: 1795570516,
    timeNano: 1795570516100548465,
  });
}

const start = rawEvent("start", "7c0638e2", "web");
const die = rawEvent("die", "7c0638e2", "web", { exitCode: "0" });
const netConnect = JSON.stringify({
  Type: "network",
  Action: "connect",
  Actor: { ID: "aa83c80a", Attributes: { container: "7c0638e2", name: "bridge", type: "bridge" } },
  scope: "local",
  time: 1795570516,
  timeNano: 1795570516100548465,
});

const cases: { name: string; chunks: string[]; actions: string[]; bad: number }[] = [
  {
    name: "one event per chunk (dockerd's own framing)",
    chunks: [start + "\n", die + "\n"],
    actions: ["start", "die"],
    bad: 0,
  },
  {
    name: "several events in one chunk",
    chunks: [start + "\n" + netConnect + "\n" + die + "\n"],
    actions: ["start", "connect", "die"],
    bad: 0,
  },
  {
    name: "one event split across chunks",
    chunks: [start.slice(0, 50), start.slice(50, 120), start.slice(120) + "\n"],
    actions: ["start"],
    bad: 0,
  },
  {
    name: "split inside the nested Actor object",
    chunks: [
      start.slice(0, start.indexOf("Actor") + 8),
      start.slice(start.indexOf("Actor") + 8) + "\n" + die,
    ],
    actions: ["start", "die"],
    bad: 0,
  },
  {
    name: "objects back to back without a newline",
    chunks: [start + die, netConnect],
    actions: ["start", "die", "connect"],
    bad: 0,
  },
  {
    name: "CRLF and blank lines",
    chunks: ["\r\n" + start + "\r\n\r\n", die + "\r\n"],
    actions: ["start", "die"],
    bad: 0,
  },
  {
    name: "last event without a trailing newline",
    chunks: [start + "\n" + die],
    actions: ["start", "die"],
    bad: 0,
  },
  {
    name: "garbage line between events is skipped",
    chunks: [start + "\nnot json at all\n" + die + "\n"],
    actions: ["start", "die"],
    bad: 1,
  },
  {
    name: "truncated object does not swallow the next line",
    chunks: ['{"Type":"container","Action":"st\n', start + "\n"],
    actions: ["start"],
    bad: 1,
  },
  {
    name: "object without Type or Action is reported",
    chunks: ['{"hello":"world"}\n', die + "\n"],
    actions: ["die"],
    bad: 1,
  },
  {
    name: "a JSON array or number is not an event",
    chunks: ["[1,2]\n42\n", start + "\n"],
    actions: ["start"],
    bad: 2,
  },
  {
    name: "truncated object at the end of the stream",
    chunks: [start + "\n" + '{"Type":"cont'],
    actions: ["start"],
    bad: 1,
  },
  { name: "empty stream", chunks: [], actions: [], bad: 0 },
];

for (const c of cases) {
  Deno.test(`parseEventStream: ${c.name}`, async () => {
    const bad: string[] = [];
    const events = await collect(parseEventStream(chunksOf(...c.chunks), { onBadLine: (l) => bad.push(l) }));
    assertEquals(events.map((e) => e.action), c.actions);
    assertEquals(bad.length, c.bad, `bad lines: ${JSON.stringify(bad)}`);
  });
}

Deno.test("parseEventStream: maps Docker's fields", async () => {
  const [ev, net] = await collect(parseEventStream(chunksOf(die + "\n" + netConnect + "\n")));
  const want: DockerEvent = {
    type: "container",
    action: "die",
    id: "7c0638e2",
    name: "web",
    attributes: { image: "egresstrator-test/busybox:1", name: "web", exitCode: "0" },
    time: 1795570516,
    timeNano: 1795570516100548465,
  };
  assertEquals(ev, want);
  assertEquals([net.type, net.action, net.id, net.name, net.attributes.container], [
    "network",
    "connect",
    "aa83c80a",
    "bridge",
    "7c0638e2",
  ]);
});

Deno.test("parseEventStream: braces and escaped quotes inside strings do not confuse framing", async () => {
  const tricky = JSON.stringify({
    Type: "container",
    Action: 'exec_start: sh -c "echo {\\"a\\": [1]}"',
    Actor: { ID: "x", Attributes: { name: "we}ird{" } },
    time: 1,
    timeNano: 1e9,
  });
  const events = await collect(parseEventStream(chunksOf(tricky.slice(0, 40), tricky.slice(40), start)));
  assertEquals(events.map((e) => e.name), ["we}ird{", "web"]);
});

Deno.test("parseEventStream: a UTF-8 character split between chunks", async () => {
  const bytes = enc.encode(rawEvent("start", "1", "café") + "\n");
  const at = bytes.indexOf(0xc3) + 1; // inside the two-byte é
  const events = await collect(parseEventStream(chunksOf(bytes.slice(0, at), bytes.slice(at))));
  assertEquals(events[0].name, "café");
});

Deno.test("parseJsonStream: pull progress with an error line", async () => {
  const lines = await collect(parseJsonStream(chunksOf(
    '{"status":"Pulling from library/x","id":"latest"}\r\n',
    '{"errorDetail":{"message":"manifest unknown"},"error":"manifest unknown"}\r\n',
  )));
  assertEquals(lines[1].error, "manifest unknown");
});

function frame(stream: number, text: string): Uint8Array {
  const payload = enc.encode(text);
  const out = new Uint8Array(8 + payload.length);
  out[0] = stream;
  new DataView(out.buffer).setUint32(4, payload.length);
  out.set(payload, 8);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const demuxCases: { name: string; bytes: Uint8Array; stdout: string; stderr: string }[] = [
  { name: "empty", bytes: new Uint8Array(), stdout: "", stderr: "" },
  { name: "stdout only", bytes: frame(1, "out\n"), stdout: "out\n", stderr: "" },
  {
    name: "interleaved frames",
    bytes: concat(frame(1, "a\n"), frame(2, "e1\n"), frame(1, "b\n"), frame(2, "e2\n")),
    stdout: "a\nb\n",
    stderr: "e1\ne2\n",
  },
  {
    name: "real exec output from dockerd",
    bytes: new Uint8Array([1, 0, 0, 0, 0, 0, 0, 2, 111, 10, 2, 0, 0, 0, 0, 0, 0, 2, 101, 10]),
    stdout: "o\n",
    stderr: "e\n",
  },
  { name: "empty frame", bytes: concat(frame(1, ""), frame(2, "x")), stdout: "", stderr: "x" },
  {
    name: "last frame cut short keeps what arrived",
    bytes: frame(2, "truncated").slice(0, 12),
    stdout: "",
    stderr: "trun",
  },
  {
    name: "trailing partial header is ignored",
    bytes: concat(frame(1, "ok"), new Uint8Array([2, 0, 0])),
    stdout: "ok",
    stderr: "",
  },
  {
    name: "TTY output (no headers) is all stdout",
    bytes: enc.encode("plain text\n"),
    stdout: "plain text\n",
    stderr: "",
  },
];

for (const c of demuxCases) {
  Deno.test(`demuxLogs: ${c.name}`, () => {
    assertEquals(demuxLogs(c.bytes), { stdout: c.stdout, stderr: c.stderr });
  });
}

Deno.test("demuxLogs: a multi-byte character split across frames stays whole", () => {
  const e = enc.encode("é");
  const first = new Uint8Array(9);
  first[0] = 1;
  first[7] = 1;
  first[8] = e[0];
  const second = new Uint8Array(9);
  second[0] = 1;
  second[7] = 1;
  second[8] = e[1];
  assertEquals(demuxLogs(concat(first, second)).stdout, "é");
});

Deno.test("demuxLogs: works on a subarray view", () => {
  const whole = concat(new Uint8Array([9, 9, 9]), frame(2, "err"));
  assertEquals(demuxLogs(whole.subarray(3)), { stdout: "", stderr: "err" });
});
