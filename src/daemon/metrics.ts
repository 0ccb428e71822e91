/** A tiny Prometheus text-format registry: counters, gauges and one histogram kind. Passed in, not global. */

type Labels = Record<string, string>;

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) =>
    `${k}="${v.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : "\\" + c))}"`
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

interface Family {
  help: string;
  type: "counter" | "gauge" | "histogram";
  values: Map<string, { labels: Labels; value: number }>;
  buckets?: number[];
  hist?: Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>;
}

/** Counters, gauges and histograms, rendered for `/metrics`. */
export class Metrics {
  private readonly families = new Map<string, Family>();

  private family(name: string, help: string, type: Family["type"], buckets?: number[]): Family {
    let f = this.families.get(name);
    if (!f) {
      f = { help, type, values: new Map(), buckets, hist: type === "histogram" ? new Map() : undefined };
      this.families.set(name, f);
    }
    return f;
  }

  /** Add to a counter. */
  inc(name: string, help: string, labels: Labels = {}, by = 1): void {
    const f = this.family(name, help, "counter");
    const key = labelText(labels);
    const cur = f.values.get(key) ?? { labels, value: 0 };
    cur.value += by;
    f.values.set(key, cur);
  }

  /** Set a gauge. */
  set(name: string, help: string, value: number, labels: Labels = {}): void {
    this.family(name, help, "gauge").values.set(labelText(labels), { labels, value });
  }

  /** Observe a value (seconds) in a histogram. */
  observe(name: string, help: string, value: number, buckets: number[], labels: Labels = {}): void {
    const f = this.family(name, help, "histogram", buckets);
    const key = labelText(labels);
    const h = f.hist!.get(key) ?? { labels, counts: buckets.map(() => 0), sum: 0, count: 0 };
    buckets.forEach((b, i) => value <= b && h.counts[i]++);
    h.sum += value;
    h.count++;
    f.hist!.set(key, h);
  }

  /** Forget one series (a container that is gone), so series do not pile up with container churn. */
  remove(name: string, labels: Labels = {}): void {
    this.families.get(name)?.values.delete(labelText(labels));
  }

  /** Current value of a counter or gauge (tests, status). */
  get(name: string, labels: Labels = {}): number {
    return this.families.get(name)?.values.get(labelText(labels))?.value ?? 0;
  }

  /** Prometheus text exposition format. */
  render(): string {
    const out: string[] = [];
    for (const [name, f] of this.families) {
      out.push(`# HELP ${name} ${f.help}`, `# TYPE ${name} ${f.type}`);
      for (const v of f.values.values()) out.push(`${name}${labelText(v.labels)} ${v.value}`);
      for (const h of f.hist?.values() ?? []) {
        f.buckets!.forEach((b, i) =>
          out.push(`${name}_bucket${labelText({ ...h.labels, le: String(b) })} ${h.counts[i]}`)
        );
        out.push(`${name}_bucket${labelText({ ...h.labels, le: "+Inf" })} ${h.count}`);
        out.push(
          `${name}_sum${labelText(h.labels)} ${h.sum}`,
          `${name}_count${labelText(h.labels)} ${h.count}`,
        );
      }
    }
    return out.join("\n") + "\n";
  }
}

/** Buckets for time-to-enforce, in seconds. */
export const ENFORCE_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Count one reconcile decision, and for writes the time from mark to rules in place. */
export function recordDecision(m: Metrics, mode: string, status: string, markedAt: number): void {
  if (status === "skipped" || status === "refused") return;
  m.inc("egresstrator_decisions_total", "Reconcile decisions by result", { mode, result: status });
  if (status === "applied" || status === "denied") {
    m.inc("egresstrator_applies_total", "Rule sets written into a namespace", { mode });
    const secs = Math.max(0, Date.now() - markedAt) / 1000;
    m.observe(
      "egresstrator_time_to_enforce_seconds",
      "From start event or change to rules in place",
      secs,
      ENFORCE_BUCKETS,
      { mode },
    );
  }
  if (status === "failed") {
    m.inc("egresstrator_apply_failures_total", "Failed decisions (retried)", { mode });
  }
}
