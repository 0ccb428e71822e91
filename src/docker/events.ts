/**
 * Pure parsers for Docker's streamed bodies: the JSON object stream of `GET /events` and
 * `POST /images/create`, and the 8-byte-header multiplexed stream of logs and exec output.
 * No I/O here: callers hand in bytes, these hand back data.
 */

/** One Docker event, with Docker's field names mapped to ours. */
export interface DockerEvent {
  /** `container`, `network`, `image`, … */
  type: string;
  /** `start`, `die`, `destroy`, `connect`, `exec_start: sh -c …`, … */
  action: string;
  /** Actor.ID: the container id for container events, the network id for network events. */
  id: string;
  /** Actor.Attributes.name when present (a container's name, a network's name). */
  name?: string;
  attributes: Record<string, string>;
  /** Unix seconds. */
  time: number;
  /** Unix nanoseconds (beyond 2^53, so not exact; use it for ordering and `since`, not identity). */
  timeNano: number;
}

/** Called for a piece of the stream that is not a usable JSON object; parsing goes on after it. */
export type BadLineHandler = (line: string, reason: string) => void;

/** Options for {@link parseJsonStream} and {@link parseEventStream}. */
export interface StreamParseOptions {
  onBadLine?: BadLineHandler;
}

/** A value still unfinished past this many characters is dropped as a bad line (bounds memory). */
const MAX_PENDING = 1 << 20;

/**
 * Where the JSON value that starts at `start` ends (index after its last character), or -1 when the
 * text holds only part of it. A value ends when its outermost brace closes (so objects written back
 * to back without a separator split correctly) or at a newline: dockerd writes compact JSON, which
 * never holds a raw newline, so a newline inside an unclosed value marks a malformed line and must
 * not swallow the lines after it. Braces inside strings do not count.
 */
function valueEnd(text: string, start: number): number {
  let depth = 0;
  let inString = false;
  for (let i = start; i < text.length; i++) {
    const c = text[i];
    if (c === "\n") return i;
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") {
      if (--depth <= 0) return i + 1;
    }
  }
  return -1;
}

/** Split off every complete value at the front of `text`; returns the values' texts and the unfinished rest. */
function splitValues(text: string): { parts: string[]; rest: string } {
  const parts: string[] = [];
  let pos = 0;
  while (pos < text.length) {
    const skip = text.slice(pos).search(/\S/);
    if (skip < 0) return { parts, rest: "" };
    const start = pos + skip;
    const end = valueEnd(text, start);
    if (end < 0) return { parts, rest: text.slice(start) };
    parts.push(text.slice(start, end));
    pos = end;
  }
  return { parts, rest: "" };
}

function parsePart(part: string, onBadLine?: BadLineHandler): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(part);
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      return value as Record<string, unknown>;
    }
    onBadLine?.(part, "not a JSON object");
  } catch (err) {
    onBadLine?.(part, err instanceof Error ? err.message : String(err));
  }
  return undefined;
}

/**
 * Turn a byte stream of JSON objects into objects. dockerd writes one object per line (Go's
 * json.Encoder) and flushes each as its own HTTP chunk, but a chunk may still carry several objects,
 * an object may be split across chunks, and objects written back to back without a newline are
 * accepted too. Anything unparsable is reported through `onBadLine` and skipped, never thrown.
 */
export async function* parseJsonStream(
  chunks: AsyncIterable<Uint8Array>,
  opts: StreamParseOptions = {},
): AsyncIterable<Record<string, unknown>> {
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of chunks) {
    const { parts, rest } = splitValues(buffered + decoder.decode(chunk, { stream: true }));
    buffered = rest;
    if (buffered.length > MAX_PENDING) {
      opts.onBadLine?.(buffered.slice(0, 200) + "…", `no end of value within ${MAX_PENDING} characters`);
      buffered = "";
    }
    for (const part of parts) {
      const obj = parsePart(part, opts.onBadLine);
      if (obj) yield obj;
    }
  }
  const tail = (buffered + decoder.decode()).trim();
  if (tail) {
    const obj = parsePart(tail, opts.onBadLine);
    if (obj) yield obj;
  }
}

function stringRecord(value: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (value === null || typeof value !== "object") return out;
  for (const [k, v] of Object.entries(value)) out[k] = typeof v === "string" ? v : String(v);
  return out;
}

/** Map one decoded Docker event object to a {@link DockerEvent}; undefined when it lacks Type or Action. */
export function toDockerEvent(raw: Record<string, unknown>): DockerEvent | undefined {
  const actor = (raw.Actor ?? {}) as Record<string, unknown>;
  const type = raw.Type;
  const action = raw.Action ?? raw.status;
  if (typeof type !== "string" || typeof action !== "string") return undefined;
  const attributes = stringRecord(actor.Attributes);
  const id = typeof actor.ID === "string" ? actor.ID : typeof raw.id === "string" ? raw.id : "";
  const time = typeof raw.time === "number" ? raw.time : 0;
  const timeNano = typeof raw.timeNano === "number" ? raw.timeNano : time * 1e9;
  return { type, action, id, name: attributes.name, attributes, time, timeNano };
}

/** Parse a `GET /events` body into typed events; bad or unrecognised objects go to `onBadLine`. */
export async function* parseEventStream(
  chunks: AsyncIterable<Uint8Array>,
  opts: StreamParseOptions = {},
): AsyncIterable<DockerEvent> {
  for await (const raw of parseJsonStream(chunks, opts)) {
    const event = toDockerEvent(raw);
    if (event) yield event;
    else opts.onBadLine?.(JSON.stringify(raw), "no Type or Action");
  }
}

/** A decoded log or exec output: what the process wrote to each stream. */
export interface DemuxedOutput {
  stdout: string;
  stderr: string;
}

/**
 * Split Docker's multiplexed stream (non-TTY logs, attach and exec): frames of an 8-byte header
 * `[stream, 0, 0, 0, size(4, big-endian)]` and `size` bytes; stream 1 is stdout, 2 stderr (0, stdin,
 * is folded into stdout). Output that does not start with a valid header (a TTY container) is
 * returned whole as stdout; a frame cut short keeps what arrived.
 */
export function demuxLogs(bytes: Uint8Array): DemuxedOutput {
  if (bytes.length > 0 && !looksLikeHeader(bytes, 0)) {
    return { stdout: new TextDecoder().decode(bytes), stderr: "" };
  }
  const out: Uint8Array[] = [];
  const err: Uint8Array[] = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  while (pos + 8 <= bytes.length) {
    const size = view.getUint32(pos + 4);
    const payload = bytes.subarray(pos + 8, Math.min(pos + 8 + size, bytes.length));
    (bytes[pos] === 2 ? err : out).push(payload);
    pos += 8 + size;
  }
  return { stdout: decodeAll(out), stderr: decodeAll(err) };
}

function looksLikeHeader(bytes: Uint8Array, pos: number): boolean {
  return bytes.length >= pos + 8 && bytes[pos] <= 2 && bytes[pos + 1] === 0 && bytes[pos + 2] === 0 &&
    bytes[pos + 3] === 0;
}

function decodeAll(parts: Uint8Array[]): string {
  // Decode once over the joined bytes so a UTF-8 character split between frames stays whole.
  const total = parts.reduce((n, p) => n + p.length, 0);
  const joined = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    joined.set(p, at);
    at += p.length;
  }
  return new TextDecoder().decode(joined);
}
