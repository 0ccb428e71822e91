/**
 * The one duration grammar, for every option and for Consul's blocking wait: Go-style parts of ms, s, m
 * and h ("500ms", "10s", "1m30s", "1h"), or a bare number of seconds ("5"). Pure.
 */
import { ConfigError } from "../errors.ts";

const UNIT: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/y;
const MAX_MS = 24 * 3_600_000;

/** Milliseconds in `value`; ConfigError naming `name` when it is not a duration from 1ms to 24h. */
export function parseDuration(name: string, value: string): number {
  const text = value.trim();
  let ms = NaN;
  if (/^\d+(?:\.\d+)?$/.test(text)) ms = Number(text) * 1000;
  else if (text !== "") {
    let total = 0;
    let pos = 0;
    while (pos < text.length) {
      PART.lastIndex = pos;
      const m = PART.exec(text);
      if (!m) break;
      total += Number(m[1]) * UNIT[m[2]];
      pos = PART.lastIndex;
    }
    if (pos === text.length) ms = total;
  }
  if (Number.isNaN(ms)) {
    throw new ConfigError(`${name} must be a duration like 10s, 500ms, 2m, 1h or 1m30s, not "${value}"`);
  }
  const n = Math.round(ms);
  if (n < 1 || n > MAX_MS) throw new ConfigError(`${name} must be between 1ms and 24h, not "${value}"`);
  return n;
}

/** A duration option where 0 (in any unit) turns the feature off. */
export function parseDurationOrOff(name: string, value: string): number {
  return /^\s*0+(?:\.0+)?(ms|s|m|h)?\s*$/.test(value) ? 0 : parseDuration(name, value);
}
