/**
 * One shared view of the ACLs and the services they name, for every container in a burst: concurrent
 * callers share one in-flight read, and a fresh result is reused for `maxAgeMs`.
 */
import type { AclSnapshot, AclSource } from "./acl_source.ts";
import { type CatalogReader, resolveServices, type ServiceLookup } from "./services.ts";
import { buildPlan, serviceRulesOf } from "./plan.ts";
import { formatProblem } from "./grammar.ts";
import type { Policy } from "../config/config.ts";

/** ACLs plus resolved services at one moment. */
export interface RuleData {
  snapshot: AclSnapshot;
  services: Map<string, ServiceLookup>;
  hasCatalog: boolean;
  /** Date.now() when read. */
  at: number;
}

/** Anything that hands out current rule data (the cache for one-shot commands, live watches in the daemon). */
export interface RuleProvider {
  /** `want`: the list and policy the data is for, so only services that plan renders must be resolved. */
  get(signal?: AbortSignal, want?: { acls: string[]; policy: Policy }): Promise<RuleData>;
}

/** Reads and caches {@link RuleData}. */
export class RuleCache implements RuleProvider {
  private current?: RuleData;
  private inflight?: Promise<RuleData>;
  constructor(
    private readonly source: AclSource,
    private readonly catalog: CatalogReader | undefined,
    private readonly maxAgeMs = 1000,
    /** Called with the ACL problems of a snapshot when they differ from the previous one's. */
    private readonly onProblems: (lines: string[]) => void = () => {},
    private readonly now = () => Date.now(),
  ) {}
  private lastProblems = "";

  /** Data no older than maxAgeMs; throws what the source or catalog threw. */
  get(signal?: AbortSignal): Promise<RuleData> {
    if (this.current && this.now() - this.current.at < this.maxAgeMs) return Promise.resolve(this.current);
    this.inflight ??= this.load(signal).finally(() => (this.inflight = undefined));
    return this.inflight;
  }

  private async load(signal?: AbortSignal): Promise<RuleData> {
    const snapshot = await this.source.read(signal);
    const services = this.catalog
      ? await resolveServices(this.catalog, serviceRulesOf(snapshot), signal)
      : new Map<string, ServiceLookup>();
    this.current = { snapshot, services, hasCatalog: this.source.hasCatalog, at: this.now() };
    const lines = keyProblems(this.current);
    if (lines.join("\n") !== this.lastProblems) {
      this.lastProblems = lines.join("\n");
      this.onProblems(lines);
    }
    return this.current;
  }
}

/** Problems with the keys themselves, whoever uses them: bad lines, bad names, service trouble. */
export function keyProblems(data: Omit<RuleData, "at">): string[] {
  const plan = buildPlan({ ...data, acls: [], policy: "protect", dnsResolvers: [], skipUnlooked: true });
  const lines = plan.problems.map(formatProblem);
  // Consul answers 404 both for an empty prefix and for a token without read rights on it.
  if (data.snapshot.entries.length === 0 && data.snapshot.problems.length === 0) {
    lines.push("no ACL keys found (empty prefix, or the token cannot read it): nothing is protected");
  }
  return lines;
}
