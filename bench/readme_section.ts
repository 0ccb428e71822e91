/** Benchmarks write their figures into bench/README.md between their own markers (one helper for all). */
import { REPO_ROOT } from "../tests/support/run_cli.ts";

/** Replace the text from `start` to `end` in bench/README.md with `section` (which holds both), or append it. */
export async function writeReadmeSection(start: string, end: string, section: string): Promise<void> {
  const path = `${REPO_ROOT}/bench/README.md`;
  let text = await Deno.readTextFile(path).catch(() => "# Benchmarks\n");
  const a = text.indexOf(start), b = text.indexOf(end);
  if (a >= 0 && b > a) text = text.slice(0, a) + section + text.slice(b + end.length);
  else text = text.trimEnd() + "\n\n" + section + "\n";
  await Deno.writeTextFile(path, text);
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", path], cwd: REPO_ROOT }).output();
}
