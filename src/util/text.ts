/**
 * Text from outside (KV values, catalog entries, a container's env) made safe to show. Two kinds, named
 * for where the text goes: `displayText` keeps the text readable for error lines (controls escaped),
 * `commentSafe` keeps only a conservative character set, for `#` comments in rendered rules and for
 * quoting env values.
 */

// deno-lint-ignore no-control-regex
const CONTROLS = /[\u0000-\u001f\u007f-\u009f]/g;

/** Control characters (C0, DEL, C1) as visible `\xNN` escapes, so text from a KV value cannot drive a terminal. */
export function escapeControls(text: string): string {
  return text.replace(CONTROLS, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

/** Make text safe and short for an error line: no control characters, at most `max` (80) characters. */
export function displayText(text: string, max = 80): string {
  const cut = text.length > max ? text.slice(0, max - 3) + "..." : text;
  return escapeControls(cut.replace(/\r$/, "").trim());
}

/**
 * Keep only `[A-Za-z0-9_.,/@:+=-]` (others become `?`), at most `max` (200) characters: safe inside a
 * rendered `#` comment and a log field whatever the source.
 */
export function commentSafe(text: string, max = 200): string {
  return text.replace(/[^A-Za-z0-9_.,/@:+=-]/g, "?").slice(0, max);
}
