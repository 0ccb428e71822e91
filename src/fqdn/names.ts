/**
 * DNS names as rules by DNS name use them (pure): matching a rule's pattern against a name a container
 * asked for, and the ipset set that holds a pattern's addresses.
 *
 * Case is folded for ASCII letters only, as DNS does (RFC 4343). `String.prototype.toLowerCase` would
 * also fold non-ASCII letters into ASCII ones (the Kelvin sign U+212A becomes `k`), so a name that is not
 * `api.stripe.com` on the wire could match its rule.
 */
import { createHash } from "node:crypto";

/** ipset's longest set name (IPSET_MAXNAMELEN 32, less the terminating NUL). */
export const MAX_SET_NAME = 31;

/** A name for comparing: ASCII letters lower-cased, one trailing dot (the root) dropped. */
export function canonicalName(name: string): string {
  const lower = name.replace(/[A-Z]+/g, (s) => s.toLowerCase());
  return lower.endsWith(".") ? lower.slice(0, -1) : lower;
}

/**
 * Whether `qname` is covered by `pattern`: an exact name (`api.x.com`) or a wildcard (`*.x.com`: one or
 * more whole labels in front of `x.com`, never `x.com` itself). Case-insensitive; a trailing dot on either
 * side is ignored. A name with an empty label (`a..x.com`) matches no wildcard.
 */
export function patternMatches(pattern: string, qname: string): boolean {
  const p = canonicalName(pattern);
  const name = canonicalName(qname);
  if (!p.startsWith("*.")) return p === name;
  const domain = p.slice(2);
  if (domain === "" || !name.endsWith(`.${domain}`)) return false;
  const front = name.slice(0, name.length - domain.length - 1);
  return !front.split(".").includes(""); // also refuses an empty front: "".split(".") is [""]
}

/**
 * The ipset set holding a pattern's addresses for one family: `egr4-` or `egr6-` and the first 12 hex
 * characters of sha256 of the canonical pattern (17 characters, well within {@link MAX_SET_NAME}). The same
 * pattern always gives the same name, whatever its case or trailing dot.
 */
export function setName(
  pattern: string,
  family: "ipv4" | "ipv6",
  policy: "allowlist" | "protect" = "allowlist",
): string {
  const digest = createHash("sha256").update(canonicalName(pattern)).digest("hex");
  // Protect's sets (`egp`) hold what any container was answered; allowlist's (`egr`) only this one's
  // answers: a container whose policy changes must never inherit the other kind.
  const kind = policy === "protect" ? "egp" : "egr";
  return `${kind}${family === "ipv4" ? "4" : "6"}-${digest.slice(0, 12)}`;
}
