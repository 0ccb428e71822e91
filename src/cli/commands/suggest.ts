/**
 * `suggest <container>`: ask the running daemon what the container was refused (or audited) lately, and
 * print the ACL lines that would let exactly that through under allowlist, ready for `consul kv put`.
 * Destinations that are catalog instances become `<tag>.<service>` (Consul is asked; not with --acl-dir).
 */
import type { Config } from "../../config/config.ts";
import { AppError, ConfigError, describeError } from "../../errors.ts";
import { fetchStatus, type SeenReport, type StatusReport } from "../../daemon/status_server.ts";
import { matchContainer } from "../../docker/resolve.ts";
import type { ContainerSummary } from "../../docker/types.ts";
import { openConsul } from "../../context.ts";
import { type CatalogInstance, suggestLines } from "../../rules/suggest.ts";
import { pool } from "../../util/async.ts";
import type { Out } from "./io.ts";

/** Services looked at in the catalog, at most: past that, destinations stay addresses. */
const MAX_SERVICES = 500;

async function getJson<T>(listen: string, path: string): Promise<{ status: number; body: T }> {
  let res: Response;
  try {
    res = await fetchStatus(listen, path);
  } catch (err) {
    throw new AppError(
      `no daemon answers at ${listen}: ${describeError(err)} (is it running? same --listen?)`,
      { cause: err },
    );
  }
  return { status: res.status, body: await res.json() as T };
}

/** Every instance of every service in the local datacenter (bounded), for address -> service. */
async function catalog(config: Config, out: Out, signal: AbortSignal): Promise<CatalogInstance[]> {
  const consul = await openConsul(config, signal);
  try {
    const names = Object.keys((await consul.catalogServices({ signal })).data).sort();
    if (names.length > MAX_SERVICES) {
      out.stderr(`suggest: the catalog has ${names.length} services; looking at the first ${MAX_SERVICES}\n`);
    }
    const lists = await pool(
      names.slice(0, MAX_SERVICES),
      8,
      async (name) =>
        (await consul.catalogService(name, { signal })).data.map((e) => ({
          service: e.serviceName || name,
          tags: e.serviceTags,
          address: e.serviceAddress || e.address,
          port: e.servicePort,
        })),
    );
    return lists.flat();
  } finally {
    consul.close();
  }
}

/** Run `suggest`; exit 0 (even with nothing to suggest), 1 without a daemon, 2 for an unknown container. */
export async function suggestCommand(
  config: Config,
  opts: { container?: string; services?: boolean },
  out: Out,
  signal: AbortSignal,
): Promise<number> {
  if (!opts.container) throw new ConfigError("name the container to suggest ACL lines for");
  if (!config.listen) {
    throw new ConfigError("suggest needs the daemon's --listen address (it is set to none)");
  }
  const status = await getJson<StatusReport>(config.listen, "/status");
  const rows = status.body.containers ?? [];
  const found = matchContainer(
    rows.map((
      c,
    ) => ({ id: c.id, names: [c.name], image: "", state: "running", labels: {} } as ContainerSummary)),
    opts.container,
  );
  const seen = await getJson<SeenReport & { error?: string }>(config.listen, `/v1/seen/${found.id}`);
  if (seen.status !== 200) {
    throw new AppError(`the daemon has nothing on ${opts.container}: ${seen.body.error ?? seen.status}`);
  }
  const report = seen.body;
  if (!report.denyLog) out.stderr("suggest: the daemon runs with --deny-log off: it remembers nothing\n");
  let instances: CatalogInstance[] = [];
  if (opts.services !== false && !config.aclDir && report.entries.length > 0) {
    instances = await catalog(config, out, signal).catch((err) => {
      out.stderr(`suggest: catalog not read (${describeError(err)}): destinations stay addresses\n`);
      return [];
    });
  }
  const { lines, notes } = suggestLines(report.entries, { policy: report.policy, catalog: instances });
  const refusals = report.entries.reduce((n, e) => n + e.count, 0);
  out.stderr(
    `# ${report.name} (${report.id.slice(0, 12)}, ${report.policy}${report.audit ? ", audit" : ""}): ` +
      `${report.entries.length} destinations, ${refusals} refusals seen; ${lines.length} lines\n`,
  );
  for (const n of notes) out.stderr(`# ${n}\n`);
  if (lines.length) out.stdout(lines.join("\n") + "\n");
  return 0;
}
