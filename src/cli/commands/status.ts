/** `status`: ask a running daemon what it enforces, as a table or JSON. */
import type { Config } from "../../config/config.ts";
import { AppError, ConfigError, describeError } from "../../errors.ts";
import { fetchStatus, type StatusReport } from "../../daemon/status_server.ts";
import type { Out } from "./io.ts";

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd()).join("\n") + "\n";
}

/** `allowlist`, `allowlist (gate)`, `allowlist (audit)`, `protect (gate, audit)`. */
function policyText(c: StatusReport["containers"][number]): string {
  const notes = [c.mode === "gate" ? "gate" : "", c.audit ? "audit" : ""].filter(Boolean);
  return notes.length ? `${c.policy} (${notes.join(", ")})` : c.policy;
}

/** Format a report as the table `status` prints (pure). */
export function formatStatus(r: StatusReport): string {
  const head =
    `egresstrator ${r.version}: mode ${r.mode}${
      r.ipv6 === false ? " (IPv4 only: no IPv6 in this kernel)" : ""
    }, ` +
    `policy ${r.policy}, ${r.source}, ` +
    `${r.watches} watches, docker ${r.docker.connected ? "connected" : "DISCONNECTED"}, ` +
    `${r.containers.filter((c) => !c.unfiltered && !c.refused).length} containers enforced` +
    (r.unfiltered ? `, ${r.unfiltered} UNFILTERED` : "") + "\n";
  if (r.containers.length === 0) return head;
  const rows = [["CONTAINER", "NAME", "POLICY", "ACLS", "RULES", "HASH", "LAST APPLIED", "DENIED", "ERROR"]];
  for (const c of [...r.containers].sort((a, b) => a.name.localeCompare(b.name))) {
    rows.push([
      c.id.slice(0, 12),
      c.name,
      c.refused ? "NOT ENFORCEABLE" : c.unfiltered ? "UNFILTERED" : c.denied ? "deny-all" : policyText(c),
      c.acls.join(",") || "-",
      String(c.ruleCount),
      c.hash?.slice(0, 12) ?? "-",
      c.lastApplied ?? "-",
      String(c.deniedCount ?? 0),
      [c.refused, c.lastError, c.caps?.length ? `holds ${c.caps.join(",")}` : ""].filter(Boolean).join("; "),
    ]);
  }
  return head + table(rows);
}

/** Run `status`; exit 1 when the daemon cannot be reached, 3 while any container is unfiltered. */
export async function statusCommand(config: Config, opts: { json?: boolean }, out: Out): Promise<number> {
  if (!config.listen) throw new ConfigError("status needs the daemon's --listen address (it is set to none)");
  let report: StatusReport;
  try {
    const res = await fetchStatus(config.listen, "/status");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    report = await res.json() as StatusReport;
  } catch (err) {
    throw new AppError(
      `no daemon answers at ${config.listen}: ${describeError(err)} (is it running? same --listen?)`,
      {
        cause: err,
      },
    );
  }
  out.stdout(opts.json ? JSON.stringify(report, null, 2) + "\n" : formatStatus(report));
  if (report.unfiltered > 0) {
    out.stderr(`egresstrator: ${report.unfiltered} opted-in container(s) are UNFILTERED (see ERROR)\n`);
    return 3;
  }
  return 0;
}
