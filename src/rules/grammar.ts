/**
 * The ACL rule grammar (pure). One rule per line:
 *   <ipv4>[/<0-32>]:<tcp|udp>/<port>[-<port>]
 *   [<ipv6>][/<0-128>]:<tcp|udp>/<port>[-<port>]
 *   <service> | <tag>.<service> | <tag>.<service>@<datacenter>   (or <service>@<datacenter>)
 *   <dns name>:<tcp|udp>/<port>[-<port>]   |   *.<dns name>:<tcp|udp>/<port>[-<port>]
 * Blank lines and `#` comments are ignored. Everything renders from the parsed values only.
 */
import { type Family, formatAddress, maskBytes, maxPrefix, parseIPv4, parseIPv6 } from "./ip.ts";
import { displayText, escapeControls } from "../util/text.ts";

export type { Family } from "./ip.ts";
export type Proto = "tcp" | "udp";

/** Inclusive destination port range; from === to for a single port. */
export interface PortRange {
  from: number;
  to: number;
}

/** A destination network with protocol and ports. */
export interface CidrRule {
  kind: "cidr";
  family: Family;
  /** Network address (host bits cleared), canonical text. */
  address: string;
  prefix: number;
  /** `address/prefix`, as rendered. */
  cidr: string;
  proto: Proto;
  ports: PortRange;
}

/** Every catalog instance of a service (optionally with a tag, in a datacenter). */
export interface ServiceRule {
  kind: "service";
  service: string;
  tag?: string;
  datacenter?: string;
}

/**
 * A destination by DNS name: the addresses the container's own DNS answers give for it (see README,
 * "Rules by DNS name"). `*.<domain>` is any name with one or more labels in front of `<domain>`.
 */
export interface FqdnRule {
  kind: "fqdn";
  /** Canonical: lower-case, no trailing dot; `*.<domain>` for a wildcard. */
  pattern: string;
  /** The name, or the wildcard's domain. */
  name: string;
  wildcard: boolean;
  proto: Proto;
  ports: PortRange;
}

export type RuleBody = CidrRule | ServiceRule | FqdnRule;

/** A parsed rule and where it came from. */
export type Rule = RuleBody & { key: string; line: number };

/** A problem found in an ACL key: a bad line (error) or something odd but usable (warning). */
export interface RuleProblem {
  key: string;
  /** 1-based line number; 0 for problems about the key as a whole. */
  line: number;
  /** The offending text, made safe to print (see {@link displayText}). */
  text: string;
  reason: string;
  severity: "error" | "warning";
}

/** The outcome of parsing one line. */
export type LineResult =
  | { ok: true; rule: RuleBody; warning?: string }
  | { ok: false; reason: string }
  | { ok: true; rule: null };

/** Longest line we look at; longer ones are errors (a KV value can be megabytes). */
export const MAX_LINE = 512;
/** At most this many problems per key are listed; the rest are counted. */
export const MAX_PROBLEMS_PER_KEY = 50;

const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;
const PORT = /^[1-9][0-9]{0,4}$/;

function parsePorts(text: string): PortRange | string {
  const dash = text.indexOf("-");
  const parts = dash < 0 ? [text] : [text.slice(0, dash), text.slice(dash + 1)];
  const nums: number[] = [];
  for (const p of parts) {
    if (!PORT.test(p) || Number(p) > 65535) return `port "${p}" is not a number from 1 to 65535`;
    nums.push(Number(p));
  }
  const [from, to = from] = nums;
  if (from > to) return `port range ${from}-${to} runs backwards`;
  return { from, to };
}

function splitNetwork(text: string): { addr: string; prefix?: string; v6: boolean } | string {
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) return "IPv6 address has no closing ]";
    const rest = text.slice(close + 1);
    if (rest !== "" && !rest.startsWith("/")) return `unexpected "${rest}" after the IPv6 address`;
    return { addr: text.slice(1, close), prefix: rest ? rest.slice(1) : undefined, v6: true };
  }
  const slash = text.indexOf("/");
  if (slash < 0) return { addr: text, v6: false };
  return { addr: text.slice(0, slash), prefix: text.slice(slash + 1), v6: false };
}

function parseCidrRule(line: string): LineResult {
  // The protocol part follows the first colon after the brackets (IPv6 colons sit inside them).
  const close = line.startsWith("[") ? line.indexOf("]") : -1;
  if (line.startsWith("[") && close < 0) return { ok: false, reason: "IPv6 address has no closing ]" };
  const sep = close >= 0 ? line.indexOf(":", close) : line.lastIndexOf(":");
  if (sep < 0) return { ok: false, reason: "missing :<tcp|udp>/<port> after the address" };
  const net = splitNetwork(line.slice(0, sep));
  if (typeof net === "string") return { ok: false, reason: net };
  const bytes = net.v6 ? parseIPv6(net.addr) : parseIPv4(net.addr);
  if (!bytes) {
    const hint = !net.v6 && net.addr.includes(":")
      ? " (write IPv6 in brackets: [2001:db8::]/32:tcp/443)"
      : "";
    return { ok: false, reason: `"${net.addr}" is not an ${net.v6 ? "IPv6" : "IPv4"} address${hint}` };
  }
  const family: Family = net.v6 ? "ipv6" : "ipv4";
  const max = maxPrefix(family);
  let prefix = max;
  if (net.prefix !== undefined) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(net.prefix) || Number(net.prefix) > max) {
      return { ok: false, reason: `mask "/${net.prefix}" is not from 0 to ${max}` };
    }
    prefix = Number(net.prefix);
  }
  const protoPorts = line.slice(sep + 1);
  const m = /^(tcp|udp)\/(.*)$/.exec(protoPorts);
  if (!m) return { ok: false, reason: `"${protoPorts}" is not <tcp|udp>/<port> or <tcp|udp>/<from>-<to>` };
  const ports = parsePorts(m[2]);
  if (typeof ports === "string") return { ok: false, reason: ports };
  const masked = maskBytes(bytes, prefix);
  const address = formatAddress(family, masked);
  const cidr = `${address}/${prefix}`;
  const rule: CidrRule = { kind: "cidr", family, address, prefix, cidr, proto: m[1] as Proto, ports };
  const given = formatAddress(family, bytes);
  const warning = given !== address ? `host bits set in ${given}/${prefix}; using ${cidr}` : undefined;
  return { ok: true, rule, warning };
}

function parseServiceRule(line: string): LineResult {
  const at = line.indexOf("@");
  const name = at < 0 ? line : line.slice(0, at);
  const datacenter = at < 0 ? undefined : line.slice(at + 1);
  const dot = name.indexOf(".");
  const tag = dot < 0 ? undefined : name.slice(0, dot);
  const service = dot < 0 ? name : name.slice(dot + 1);
  const bad = (what: string, v: string) => ({
    ok: false as const,
    reason: `${what} "${v}" must be letters, digits, "-" or "_" (at most 128)`,
  });
  if (tag !== undefined && !NAME.test(tag)) return bad("tag", tag);
  if (!NAME.test(service)) return bad("service name", service);
  if (datacenter !== undefined && !NAME.test(datacenter)) return bad("datacenter", datacenter);
  return { ok: true, rule: { kind: "service", service, tag, datacenter } };
}

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** A DNS name as rules take it: lower-cased, no trailing dot; a reason string when it is not one. */
export function parseDnsName(text: string): string | { error: string } {
  // ASCII only, checked before folding case: toLowerCase would turn some non-ASCII letters into ASCII ones.
  if (!/^[A-Za-z0-9.-]*$/.test(text)) {
    return {
      error: `DNS name "${text}" must be ASCII letters, digits, "-" and "." (IDNs in their xn-- form)`,
    };
  }
  const name = text.toLowerCase().replace(/\.$/, "");
  if (name.length === 0) return { error: "empty DNS name" };
  if (name.length > 253) return { error: `DNS name is longer than 253 characters` };
  const labels = name.split(".");
  if (labels.length < 2) return { error: `DNS name "${name}" needs at least one dot` };
  for (const l of labels) {
    if (l.length > 63) return { error: `label "${l.slice(0, 20)}..." is longer than 63 characters` };
    if (!LABEL.test(l)) {
      return {
        error: `label "${l}" must be letters, digits and inner "-" (IDNs in their xn-- form)`,
      };
    }
  }
  if (labels.slice(0, -1).every((l) => /^[0-9]+$/.test(l)) || /^[0-9]+$/.test(labels[labels.length - 1])) {
    return { error: `"${name}" ends in a number: write addresses as <ip>/<mask>:<proto>/<port>` };
  }
  return name;
}

function parseFqdnRule(line: string): LineResult {
  const sep = line.indexOf(":");
  const head = line.slice(0, sep);
  const wildcard = head.startsWith("*.");
  if (head.includes("*") && !wildcard) {
    return { ok: false, reason: `"*" is only allowed as the whole first label: *.<domain>` };
  }
  const name = parseDnsName(wildcard ? head.slice(2) : head);
  if (typeof name !== "string") return { ok: false, reason: name.error };
  const protoPorts = line.slice(sep + 1);
  const m = /^(tcp|udp)\/(.*)$/.exec(protoPorts);
  if (!m) return { ok: false, reason: `"${protoPorts}" is not <tcp|udp>/<port> or <tcp|udp>/<from>-<to>` };
  const ports = parsePorts(m[2]);
  if (typeof ports === "string") return { ok: false, reason: ports };
  const pattern = wildcard ? `*.${name}` : name;
  return { ok: true, rule: { kind: "fqdn", pattern, name, wildcard, proto: m[1] as Proto, ports } };
}

/** Strip CR, surrounding space and a trailing ` # comment`. */
function cleanLine(raw: string): string {
  let line = raw.replace(/\r/g, "").trim();
  if (line.startsWith("#")) return "";
  const hash = line.search(/\s#/);
  if (hash >= 0) line = line.slice(0, hash).trimEnd();
  return line;
}

/** Parse one line. `rule: null` means nothing to do (blank or comment). Never throws. */
export function parseRuleLine(raw: string): LineResult {
  if (raw.length > MAX_LINE) return { ok: false, reason: `line is longer than ${MAX_LINE} characters` };
  const line = cleanLine(raw);
  if (line === "") return { ok: true, rule: null };
  if (/\s/.test(line)) return { ok: false, reason: "a rule has no spaces inside it (one rule per line)" };
  if (!line.startsWith("[") && (line.match(/:/g)?.length ?? 0) >= 2) {
    return { ok: false, reason: "not an IPv4 rule (write IPv6 in brackets: [2001:db8::]/32:tcp/443)" };
  }
  if (line.startsWith("[") || /^[0-9.]+[/:]/.test(line)) return parseCidrRule(line);
  // A name with ":" is an FQDN rule; a catalog reference (<tag>.<service>) never has one.
  if (line.includes(":")) return parseFqdnRule(line);
  if (/^[0-9.]+(\/\d*)?$/.test(line)) {
    return { ok: false, reason: "missing :<tcp|udp>/<port> after the address" };
  }
  if (/^[A-Za-z0-9_-]/.test(line)) return parseServiceRule(line);
  return {
    ok: false,
    reason:
      "not <ip>/<mask>:<proto>/<ports>, [<ipv6>]/<mask>:<proto>/<ports>, <name>:<proto>/<ports> or <tag>.<service>",
  };
}

/** Parse a whole ACL value. Bad lines become problems; good lines are kept, whatever else is wrong. */
export function parseAcl(key: string, value: string): { rules: Rule[]; problems: RuleProblem[] } {
  const rules: Rule[] = [];
  const problems: RuleProblem[] = [];
  let dropped = 0;
  const report = (p: RuleProblem) => problems.length < MAX_PROBLEMS_PER_KEY ? problems.push(p) : dropped++;
  const lines = value.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const res = parseRuleLine(lines[i]);
    const where = { key, line: i + 1, text: displayText(lines[i]) };
    if (!res.ok) report({ ...where, reason: escapeControls(res.reason), severity: "error" });
    else if (res.rule) {
      rules.push({ ...res.rule, key, line: i + 1 });
      if ("warning" in res && res.warning) report({ ...where, reason: res.warning, severity: "warning" });
    }
  }
  if (dropped > 0) {
    problems.push({
      key,
      line: 0,
      text: "",
      reason: `${dropped} more problems not listed`,
      severity: "error",
    });
  }
  return { rules, problems };
}

/** A rule as text again, canonical (for display and for `render --json`). */
export function formatRule(rule: RuleBody): string {
  if (rule.kind === "service") {
    return `${rule.tag ? rule.tag + "." : ""}${rule.service}${rule.datacenter ? "@" + rule.datacenter : ""}`;
  }
  const ports = rule.ports.from === rule.ports.to
    ? `${rule.ports.from}`
    : `${rule.ports.from}-${rule.ports.to}`;
  if (rule.kind === "fqdn") return `${rule.pattern}:${rule.proto}/${ports}`;
  const net = rule.family === "ipv6" ? `[${rule.address}]/${rule.prefix}` : rule.cidr;
  return `${net}:${rule.proto}/${ports}`;
}

/** `key:line: text: why`, the format `validate` prints. */
export function formatProblem(p: RuleProblem): string {
  const where = p.line > 0 ? `${p.key}:${p.line}` : p.key;
  const lvl = p.severity === "warning" ? "warning: " : "";
  return p.text ? `${where}: ${p.text}: ${lvl}${p.reason}` : `${where}: ${lvl}${p.reason}`;
}
