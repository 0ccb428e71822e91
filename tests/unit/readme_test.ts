// The README is the user's manual: its options table must be what the code has.
import assert from "node:assert/strict";
import { optionsMarkdown } from "../../scripts/options_md.ts";
import { GLOBAL_OPTIONS } from "../../src/config/options_table.ts";

const readme = await Deno.readTextFile(new URL("../../README.md", import.meta.url));

/** Table rows with cell padding and dash runs collapsed, so `deno fmt`'s alignment does not matter. */
const rows = (md: string) =>
  md.split("\n").filter((l) => l.startsWith("|")).map((l) =>
    l.split("|").map((c) => c.trim().replace(/^-+$/, "-")).join("|")
  );

Deno.test("README options table matches src/options_table.ts (regenerate: deno run scripts/options_md.ts)", () => {
  const have = new Set(rows(readme));
  for (const row of rows(optionsMarkdown())) {
    assert.ok(have.has(row), `README's options table lacks or differs: ${row}`);
  }
});

Deno.test("README names every option's env var and every command", () => {
  for (const o of GLOBAL_OPTIONS) if (o.env) assert.ok(readme.includes(o.env), o.env);
  for (
    const cmd of ["set", "clear", "render", "validate", "status", "suggest", "runtime-config", "runtime"]
  ) {
    assert.ok(readme.includes(`egresstrator ${cmd}`), cmd);
  }
  for (
    const env of ["EGRESSTRATOR_ENABLE", "EGRESSTRATOR_ACL", "EGRESSTRATOR_POLICY", "EGRESSTRATOR_AUDIT"]
  ) {
    assert.ok(readme.includes(env));
  }
});
