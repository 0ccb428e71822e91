/** Consul addresses as users type them (pure). */
import { ConfigError } from "../errors.ts";

/**
 * Turn an address as typed into a base URL. No scheme means http (https with ssl) and, without a port,
 * Consul's default port (8500, or 8501 with ssl). Throws ConfigError for anything that is not host[:port].
 */
export function normalizeConsulAddress(address: string, ssl: boolean): URL {
  const raw = address.trim();
  const bad = (why: string, cause?: unknown) =>
    new ConfigError(`invalid consul address "${raw}": ${why}`, { cause });
  if (raw === "") throw bad("it is empty");
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(raw);
  const given = scheme?.[1].toLowerCase();
  if (given !== undefined && given !== "http" && given !== "https") {
    throw bad(`unsupported scheme "${given}", use http:// or https://`);
  }
  const rest = scheme ? raw.slice(scheme[0].length) : raw;
  // The URL parser silently drops tabs and newlines, so reject all whitespace up front.
  if (/\s/.test(rest)) throw bad("it contains whitespace");
  const proto = ssl || given === "https" ? "https" : "http";
  let url: URL;
  try {
    url = new URL(`${proto}://${rest}`);
  } catch (err) {
    throw bad("expected host:port, http://host:port or https://host:port", err);
  }
  if (url.hostname === "") throw bad("the host is missing");
  if (url.username || url.password) throw bad("credentials in the address are not supported, use a token");
  if (url.pathname !== "/" || url.search || url.hash) throw bad("a path, query or fragment is not allowed");
  if (url.port === "0") throw bad("port 0 is not allowed");
  const authority = rest.split(/[/?#]/, 1)[0];
  const explicitPort = /:\d+$/.test(authority);
  if (!scheme && !explicitPort) url.port = proto === "https" ? "8501" : "8500";
  return url;
}
