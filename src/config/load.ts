/** Config from raw options, with the files it names read (the token file): one path for every entry point. */
import { ConfigError } from "../errors.ts";
import { buildConfig, type Config, type RawOptions } from "./config.ts";

/** Read a token file (CONSUL_HTTP_TOKEN_FILE); the token itself is never printed. */
export async function readTokenFile(path: string): Promise<string> {
  try {
    const token = (await Deno.readTextFile(path)).trim();
    if (!token) throw new ConfigError(`token file ${path} is empty`);
    return token;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`cannot read token file ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Raw options -> frozen Config, reading the files options name: CONSUL_HTTP_TOKEN_FILE when no token was
 * given directly, and the host's resolv.conf for `--dns host`. Every entry point (CLI, daemon, gate) uses it.
 */
export async function loadConfig(raw: RawOptions): Promise<Readonly<Config>> {
  const token = !raw.consulToken && raw.consulTokenFile
    ? await readTokenFile(raw.consulTokenFile)
    : undefined;
  return buildConfig(raw, { token });
}

/** Nameserver addresses of a resolv.conf text (pure). */
export function nameservers(text: string): string[] {
  return text.split("\n").map((l) => /^\s*nameserver\s+([0-9A-Fa-f:.]+)(?:%\S+)?\s*$/.exec(l)?.[1])
    .filter((a): a is string => !!a);
}

function isLoopback(a: string): boolean {
  return a.startsWith("127.") || a === "::1";
}

/**
 * `--dns host`: the resolvers Docker's embedded DNS forwards to, which are the host's. Like dockerd, skip
 * a resolv.conf that names only loopback resolvers (systemd-resolved's 127.0.0.53) for the real one.
 */
export async function hostResolvers(
  read: (path: string) => Promise<string> = (p) => Deno.readTextFile(p),
): Promise<string[]> {
  const tried: string[] = [];
  for (const path of ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"]) {
    const text = await read(path).catch(() => "");
    const found = nameservers(text).filter((a) => !isLoopback(a));
    if (found.length > 0) return found;
    tried.push(path);
  }
  throw new ConfigError(`--dns host: no non-loopback nameserver in ${tried.join(" or ")}`);
}
