/** Rules by DNS name: pattern matching and ipset set names. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { canonicalName, MAX_SET_NAME, patternMatches, setName } from "../../src/fqdn/names.ts";

Deno.test("patternMatches: exact names, case and trailing dots", () => {
  const table: [string, string, boolean][] = [
    ["api.x.com", "api.x.com", true],
    ["api.x.com", "API.X.Com", true],
    ["API.X.COM.", "api.x.com", true],
    ["api.x.com", "api.x.com.", true],
    ["api.x.com.", "api.x.com.", true],
    ["api.x.com", "a.api.x.com", false],
    ["api.x.com", "x.com", false],
    ["api.x.com", "api.x.co", false],
    ["api.x.com", "api.x.com..", false],
    ["api.x.com", "apix.com", false],
    ["api.x.com", "", false],
  ];
  for (const [pattern, name, want] of table) {
    assert.equal(patternMatches(pattern, name), want, `${pattern} vs ${name}`);
  }
});

Deno.test("patternMatches: *.domain covers one or more labels in front, never the domain itself", () => {
  const table: [string, string, boolean][] = [
    ["*.x.com", "a.x.com", true],
    ["*.x.com", "a.b.x.com", true],
    ["*.x.com", "A.B.X.COM.", true],
    ["*.X.COM.", "a.x.com", true],
    ["*.x.com", "x.com", false],
    ["*.x.com", "x.com.", false],
    ["*.x.com", ".x.com", false],
    ["*.x.com", "a..x.com", false],
    ["*.x.com", "ax.com", false],
    ["*.x.com", "a.x.com.evil", false],
    ["*.x.com", "a.y.com", false],
    ["*.s3.amazonaws.com", "bucket.s3.amazonaws.com", true],
    ["*.s3.amazonaws.com", "s3.amazonaws.com", false],
    ["*.s3.amazonaws.com", "bucket.amazonaws.com", false],
    // A literal "*" label in a name is just a label.
    ["*.x.com", "*.x.com", true],
    ["a.x.com", "*.x.com", false],
  ];
  for (const [pattern, name, want] of table) {
    assert.equal(patternMatches(pattern, name), want, `${pattern} vs ${name}`);
  }
});

Deno.test("patternMatches: only ASCII letters fold (the Kelvin sign is not k)", () => {
  assert.equal("\u212a".toLowerCase(), "k", "the trap this guards against");
  assert.equal(patternMatches("api.kx.com", "api.\u212ax.com"), false);
  assert.equal(patternMatches("*.kx.com", "a.\u212aX.com"), false);
  assert.equal(canonicalName("\u00c9.X.COM."), "\u00c9.x.com");
});

Deno.test("setName: egr4-/egr6- and 12 hex of sha256 of the canonical pattern", () => {
  const hex = createHash("sha256").update("api.stripe.com").digest("hex").slice(0, 12);
  assert.equal(setName("api.stripe.com", "ipv4"), `egr4-${hex}`);
  assert.equal(setName("api.stripe.com", "ipv6"), `egr6-${hex}`);
  assert.equal(setName("API.Stripe.COM.", "ipv4"), `egr4-${hex}`);
  // Known value, so a change of the scheme (which would orphan existing sets) is noticed.
  assert.equal(setName("*.s3.amazonaws.com", "ipv4"), "egr4-d24ee37a10d0");
  assert.equal(setName("api.stripe.com", "ipv6"), "egr6-5e9af3299599");
  assert.notEqual(setName("*.x.com", "ipv4"), setName("x.com", "ipv4"));
  for (const p of ["a.b", "*.s3.amazonaws.com", `${"a".repeat(63)}.${"b".repeat(63)}.com`]) {
    for (const f of ["ipv4", "ipv6"] as const) {
      const name = setName(p, f);
      assert.match(name, /^egr[46]-[0-9a-f]{12}$/);
      assert.ok(name.length <= MAX_SET_NAME);
    }
  }
});
