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

/** Options of `runc create` that take a value. */
const CREATE_VALUE_FLAGS = new Set(["--bundle", "-b", "--console-socket", "--pid-file", "--preserve-fds"]);

/** The container id of a command: its last argument that is neither an option nor an option's value. */
export function containerId(rest: readonly string[]): string | undefined {
  let id: string | undefined;
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (CREATE_VALUE_FLAGS.has(a)) i++;
    else if (!a.startsWith("-")) id = a;
  }
  return id;
}

/** The value of `--<long> <v>`, `-<short> <v>` or `--<long>=<v>` in a command's arguments, if given. */
function optionValue(rest: readonly string[], long: string, short: string): string | undefined {
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if ((a === long || a === short) && i + 1 < rest.length) return rest[i + 1];
    if (a.startsWith(`${long}=`)) return a.slice(long.length + 1);
  }
  return undefined;
}

/** `--bundle <dir>` / `-b <dir>` / `--bundle=<dir>` of `runc create`; runc's default is the current directory. */
export function bundleDir(rest: readonly string[]): string | undefined {
  return optionValue(rest, "--bundle", "-b");
}

/** `--process <file>` / `-p <file>` / `--process=<file>` of `runc exec`, if given. */
export function processFile(rest: readonly string[]): string | undefined {
  return optionValue(rest, "--process", "-p");
}
