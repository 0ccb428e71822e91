/**
 * What a steered container's namespace gets besides its filter rules (pure): the nat steering that sends
 * its DNS to the daemon's listeners there (an nftables table of ours, apart from Docker's iptables nat
 * rules), and the ipsets its rules match. See README, "Rules by DNS name".
 */
import { parseAddress } from "../rules/ip.ts";

/** The nftables table egresstrator owns in a steered namespace. */
export const STEER_TABLE = "inet egresstrator";

/** Removes the steering (and is harmless where there is none). */
export const STEER_OFF = `table ${STEER_TABLE} {}\ndelete table ${STEER_TABLE}\n`;

/**
 * The steering: DNS (udp and tcp 53) to resolver i goes to listener i; DNS to any other address goes to
 * listener 0 (which forwards to resolver 0). Loopback is left alone: Docker's embedded DNS (127.0.0.11,
 * which forwards from inside the namespace, and so is steered on its way out) and any resolver the
 * container runs itself. Replaced whole, in one transaction. Runs before Docker's nat rules (priority).
 */
export function steeringText(resolvers: string[], ports: number[], v6: boolean): string {
  const lines: string[] = [];
  const to = (fam: "ipv4" | "ipv6", port: number) =>
    fam === "ipv4" ? `dnat ip to 127.0.0.1:${port}` : `dnat ip6 to [::1]:${port}`;
  resolvers.forEach((r, i) => {
    const a = parseAddress(r);
    if (!a || i >= ports.length || (a.family === "ipv6" && !v6)) return;
    const m = a.family === "ipv4" ? `ip daddr ${r}` : `ip6 daddr ${r}`;
    for (const p of ["udp", "tcp"]) lines.push(`${m} ${p} dport 53 ${to(a.family, ports[i])}`);
  });
  if (ports.length > 0) {
    for (const p of ["udp", "tcp"]) lines.push(`meta nfproto ipv4 ${p} dport 53 ${to("ipv4", ports[0])}`);
    if (v6) {
      for (const p of ["udp", "tcp"]) lines.push(`meta nfproto ipv6 ${p} dport 53 ${to("ipv6", ports[0])}`);
    }
  }
  return [
    STEER_OFF.trimEnd(),
    `table ${STEER_TABLE} {`,
    "  chain dns {",
    "    type nat hook output priority -110; policy accept;",
    "    ip daddr 127.0.0.0/8 return",
    "    ip6 daddr ::1 return",
    ...lines.map((l) => `    ${l}`),
    "  }",
    "}",
    "",
  ].join("\n");
}

/** The ipsets a rendered text matches (`--match-set egr4-... dst`), by name. */
export function setsIn(text: string): string[] {
  return [...new Set([...text.matchAll(/--match-set (eg[rp][46]-[0-9a-f]{4,26}) /g)].map((m) => m[1]))];
}

/** One address to put into a set, for `timeout` seconds. */
export interface SetEntry {
  set: string;
  address: string;
  timeout: number;
}

/** `ipset restore` input: create the sets (kept, with their entries, if they exist) and add entries. */
export function ipsetText(sets: string[], entries: SetEntry[] = []): string {
  const create = sets.map((s) =>
    `create ${s} hash:ip family ${/^eg[rp]6-/.test(s) ? "inet6" : "inet"} timeout 60 maxelem 65536`
  );
  const add = entries.map((e) => `add ${e.set} ${e.address} timeout ${Math.max(1, Math.ceil(e.timeout))}`);
  return [...create, ...add, ""].join("\n");
}
