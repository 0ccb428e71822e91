/**
 * The global options: flag, env var and default, in one table. Commander only collects flags; env and
 * defaults are applied here so a flag before the subcommand is never overridden by a default after it.
 */
import { type Command, Option } from "@commander-js/extra-typings";
import type { RawOptions } from "../config/config.ts";
import { GLOBAL_OPTIONS } from "../config/options_table.ts";

/** Add every global option to a command (the program and each subcommand). */
export function addGlobalOptions<C extends Command<unknown[], Record<string, unknown>>>(
  cmd: C,
  hidden = false,
): C {
  for (const spec of GLOBAL_OPTIONS) {
    const notes = [spec.def ? `default: "${spec.def}"` : "", spec.env ? `env: ${spec.env}` : ""].filter(
      Boolean,
    );
    const help = notes.length ? `${spec.help} (${notes.join(", ")})` : spec.help;
    const opt = new Option(spec.flags, help);
    if (spec.choices) opt.choices(spec.choices);
    if (hidden) opt.hideHelp();
    cmd.addOption(opt as unknown as Option);
  }
  return cmd;
}

/** Flags from the command chain (nearest wins), then env, in that order. Defaults are Config's. */
export function collectRaw(
  cmd: Command<unknown[], Record<string, unknown>>,
  env: Record<string, string | undefined>,
) {
  const chain: Record<string, unknown>[] = [];
  for (let c: Command<unknown[], Record<string, unknown>> | null = cmd; c; c = c.parent as typeof c) {
    chain.push(c.opts());
  }
  const raw: Record<string, unknown> = {};
  for (const spec of GLOBAL_OPTIONS) {
    const flag = chain.map((o) => o[spec.key]).find((v) => v !== undefined);
    raw[spec.key] = flag ?? (spec.env ? env[spec.env] : undefined);
  }
  return raw as RawOptions;
}
