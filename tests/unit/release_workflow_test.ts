/**
 * .github/workflows/release.yml cannot run here; what can be checked is that it parses as YAML, runs on a
 * tag, builds both targets, smoke-tests what the issue asks for, and publishes every file install.sh
 * downloads (`v<version>/egresstrator-linux-<arch>`, `sha256sums`, the unit and env file it verifies
 * against them, and `latest.txt`), under a `v<version>` tag as install.sh's URL has it.
 */
import assert from "node:assert/strict";
import { parse } from "yaml";

const root = new URL("../../", import.meta.url);
const text = await Deno.readTextFile(new URL(".github/workflows/release.yml", root));
const installSh = await Deno.readTextFile(new URL("install.sh", root));

interface Step {
  name?: string;
  uses?: string;
  run?: string;
  with?: Record<string, unknown>;
}
interface Workflow {
  on: { push: { tags: string[] } };
  jobs: Record<string, { "runs-on": string; steps: Step[] }>;
}

const wf = parse(text) as Workflow;
const steps = Object.values(wf.jobs).flatMap((j) => j.steps);
const runs = steps.map((s) => s.run ?? "").join("\n");

Deno.test("release workflow: parses as YAML and runs on a v* tag", () => {
  assert.deepEqual(wf.on.push.tags, ["v*"]);
  assert.ok(Object.values(wf.jobs).every((j) => j["runs-on"] === "ubuntu-latest"));
  const deno = steps.find((s) => s.uses?.startsWith("denoland/setup-deno"));
  assert.equal(deno?.with?.["deno-version"], "v2.9.6", "the Deno scripts/ensure_deno.sh pins");
});

Deno.test("release workflow: compiles both targets and smoke-tests the x64 binary", () => {
  assert.match(runs, /TARGET=x86_64-unknown-linux-gnu bash scripts\/compile\.sh --out-dir dist/);
  assert.match(runs, /TARGET=aarch64-unknown-linux-gnu bash scripts\/compile\.sh --out-dir dist/);
  assert.match(runs, /"\$bin" --version/);
  assert.match(runs, /"\$bin" render --acl-dir acl/);
  assert.match(runs, /EGRESSTRATOR_RUNC=.*"\$bin" runtime --version/);
});

Deno.test("release workflow: publishes every file install.sh downloads, as the latest release", () => {
  const publish = steps.find((s) => /gh release create/.test(s.run ?? ""));
  assert.ok(publish, "a gh release create step");
  const assets = new Set((publish.run!.match(/dist\/[A-Za-z0-9._-]+/g) ?? []).map((a) => a.slice(5)));
  for (const f of ["egresstrator-linux-x64", "egresstrator-linux-arm64", "sha256sums", "latest.txt"]) {
    assert.ok(assets.has(f), `${f} is not published`);
  }
  // What install.sh fetches by name next to the binary and checks against sha256sums.
  const fetched = /for f in (egresstrator\.service egresstrator\.env); do/.exec(installSh);
  assert.ok(fetched, "install.sh's download of the unit and env file (update this test with it)");
  for (const name of fetched[1].split(" ")) assert.ok(assets.has(name), `${name} is not published`);
  assert.match(installSh, /url="\$base\/v\$version"/, "install.sh downloads from v<version>");
  assert.match(publish.run!, /gh release create "\$GITHUB_REF_NAME"/, "the release is named by the tag");
  assert.match(publish.run!, /--latest/, "latest/download/latest.txt must resolve to it");
});
