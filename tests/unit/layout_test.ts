/** The house rules of src/: lower rooms never import from the rooms above them. */
import assert from "node:assert/strict";
import { dirname, join, relative } from "node:path";

const SRC = new URL("../../src/", import.meta.url).pathname;
const LOWER = ["rules", "render", "apply", "fqdn", "docker", "consul", "config", "util"];
const UPPER = ["daemon", "gate", "cli"];

async function* tsFiles(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) yield* tsFiles(p);
    else if (p.endsWith(".ts")) yield p;
  }
}

Deno.test("layout: no import from src/rules|render|apply|docker|consul|config|util up into daemon, gate or cli", async () => {
  const bad: string[] = [];
  for await (const file of tsFiles(SRC)) {
    const room = relative(SRC, file).split("/")[0];
    if (!LOWER.includes(room)) continue;
    const text = await Deno.readTextFile(file);
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*"(\.[^"]+)"/g)) {
      const target = relative(SRC, join(dirname(file), m[1])).split("/")[0];
      if (UPPER.includes(target)) bad.push(`${relative(SRC, file)} imports ${m[1]}`);
    }
  }
  assert.deepEqual(bad, []);
});
