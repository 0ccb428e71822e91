/** Parse a runc command line as containerd's shim sends it (pure). */

/** runc global options that take a value (`--root /x` or `--root=/x`). */
const VALUE_FLAGS = new Set(["--root", "--log", "--log-format", "--criu", "--rootless"]);

/** A runc invocation: global options, the command and its arguments. */
export interface RuncArgs {
  globals: string[];
  command?: string;
  rest: string[];
}

/** Split argv into global options, the command, and the rest. */
export function parseRuncArgs(argv: readonly string[]): RuncArgs {
  const globals: string[] = [];
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("-")) break;
    globals.push(a);
    if (VALUE_FLAGS.has(a) && i + 1 < argv.length) globals.push(argv[++i]);
  }
  return { globals, command: argv[i], rest: argv.slice(i + 1) };
}

/** The container id of `start [--flags] <id>`: its last argument that is not an option. */
export function startId(rest: readonly string[]): string | undefined {
  const positional = rest.filter((a) => !a.startsWith("-"));
  return positional[positional.length - 1];
}
