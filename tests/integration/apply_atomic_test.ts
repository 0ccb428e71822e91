/**
 * The lean apply keeps its all-or-nothing guarantee across families, in a real container namespace: a
 * text whose IPv4 or IPv6 half iptables rejects leaves both families as they were, whether the applier is
 * told what is there (the daemon's path: IPv4 rolled back to that text) or not (a save first).
 */
import assert from "node:assert/strict";
import { denoRunner, EMPTY_RULES } from "../../src/apply/applier.ts";
import { NsenterApplier } from "../../src/apply/nsenter.ts";
import { runContainer, withDocker } from "../support/docker.ts";
import { containerPid, iptablesIn, ruleLines } from "../support/egresstrator.ts";

const table = (rule: string) =>
  `*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n${rule}\nCOMMIT\n`;
const GOOD = {
  ipv4: table("-A OUTPUT -d 10.50.140.0/24 -j DROP"),
  ipv6: table("-A OUTPUT -d fd00:50::/64 -j DROP"),
};
const BAD = "-A OUTPUT -j NOSUCHTARGET"; // passes parsing, fails in the kernel transaction

Deno.test("apply: a half that iptables rejects leaves both families unchanged, with and without a known previous text", async () => {
  const c = await runContainer({ cmd: ["sleep", "600"] });
  try {
    const target = { id: c.id, name: c.name, pid: await containerPid(c.id) };
    const applier = new NsenterApplier(denoRunner, { ipv6: true, timeoutMs: 15_000 });
    const tables = async () => ({
      ipv4: ruleLines(await iptablesIn(c.id, "ipv4")),
      ipv6: ruleLines(await iptablesIn(c.id, "ipv6")),
    });
    await applier.apply(target, GOOD, AbortSignal.timeout(15_000), EMPTY_RULES);
    const good = await tables();
    assert.ok(good.ipv4.includes("-A OUTPUT -d 10.50.140.0/24 -j DROP"), good.ipv4.join("\n"));
    assert.ok(good.ipv6.includes("-A OUTPUT -d fd00:50::/64 -j DROP"), good.ipv6.join("\n"));
    for (const previous of [GOOD, undefined]) {
      for (const bad of [{ ...GOOD, ipv4: table(BAD) }, { ...GOOD, ipv6: table(BAD) }]) {
        const what = `${bad.ipv4.includes(BAD) ? "ipv4" : "ipv6"} half bad, previous ${
          previous ? "known" : "saved"
        }`;
        await assert.rejects(
          applier.apply(target, bad, AbortSignal.timeout(15_000), previous),
          bad.ipv4.includes(BAD)
            ? /ipv4 rules rejected by iptables-restore/
            : /ipv6 rules rejected.*ipv4 rules rolled back/,
          what,
        );
        assert.deepEqual(await tables(), good, what);
      }
    }
  } finally {
    await withDocker(undefined, (d) => d.removeContainer(c.id, { force: true }));
  }
});
