// Prints the README's global-options table from the option table in src/config/options_table.ts.
// deno run scripts/options_md.ts   (tests/unit/readme_test.ts checks the README matches it)
import { GLOBAL_OPTIONS } from "../src/config/options_table.ts";

export function optionsMarkdown(): string {
  const rows = GLOBAL_OPTIONS.map((o) => {
    const flags = o.flags.split(", ").map((f) => `\`${f}\``).join(", ");
    const def = o.def ? `\`${o.def}\`` : "";
    const choices = o.choices ? ` (${o.choices.join(" \\| ")})` : "";
    return `| ${flags} | ${o.env ? `\`${o.env}\`` : ""} | ${def} | ${o.help}${choices} |`;
  });
  return ["| option | env | default | meaning |", "| --- | --- | --- | --- |", ...rows].join("\n");
}

if (import.meta.main) console.log(optionsMarkdown());
