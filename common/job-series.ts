/**
 * Keeps a process's per-job Prometheus series to the most recent jobs. A coordinator or agent lives through many
 * jobs; without this every job would leave its step histograms, gauges and counters in the registry forever (about
 * a hundred series a job), which grows every scrape and every Prometheus TSDB without bound.
 *
 * Every write to a series with a `job` label goes through `labels()`, which remembers the series; when a job beyond
 * the `keep` most recently active ones is seen, the oldest job's series are removed from their metrics.
 */
import type { Counter, Gauge, Histogram } from 'prom-client';

/**
 * Histogram buckets (seconds) of the per-job families, shared by the coordinator's and the agents' so that the two
 * views of a job compare bucket for bucket.
 */
export const STEP_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
export const PHASE_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
export const CHECKPOINT_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

type Labelled<L extends string> = Counter<L> | Gauge<L> | Histogram<L>;
type Labels<L extends string> = Record<L, string | number>;

export class JobSeries {
  readonly #keep: number;
  /** Job id → its series (each metric's label sets, as JSON); Map order is least recently active first. */
  readonly #jobs = new Map<string, Map<Labelled<string>, Set<string>>>();
  #last: string | undefined;

  constructor(keep: number) {
    if (!Number.isInteger(keep) || keep < 1) throw new RangeError(`keep must be a positive integer, not ${keep}`);
    this.#keep = keep;
  }

  /** `labels`, after noting that `metric` has a series with them under job `labels.job`. */
  labels<L extends string>(metric: Labelled<L>, labels: Labels<L> & { job: string }): Labels<L> {
    const job = labels.job;
    let series = this.#jobs.get(job);
    if (!series) {
      series = new Map();
      this.#jobs.set(job, series);
      for (const [old, oldSeries] of this.#jobs) {
        if (this.#jobs.size <= this.#keep) break;
        for (const [m, sets] of oldSeries) for (const json of sets) m.remove(JSON.parse(json) as Labels<string>);
        this.#jobs.delete(old);
      }
    } else if (this.#last !== job) {
      this.#jobs.delete(job); // the most recently active goes last
      this.#jobs.set(job, series);
    }
    this.#last = job;
    let sets = series.get(metric as Labelled<string>);
    if (!sets) series.set(metric as Labelled<string>, (sets = new Set()));
    sets.add(JSON.stringify(labels));
    return labels;
  }
}
