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

/** Raw options -> frozen Config, reading CONSUL_HTTP_TOKEN_FILE when no token was given directly. */
export async function loadConfig(raw: RawOptions): Promise<Readonly<Config>> {
  const token = !raw.consulToken && raw.consulTokenFile
    ? await readTokenFile(raw.consulTokenFile)
    : undefined;
  return buildConfig(raw, { token });
}
