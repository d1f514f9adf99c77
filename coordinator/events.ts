/**
 * The coordinator's in-process event bus: what changed, as it changes. The job runner, the agent hub and the
 * registry publish; the dashboard's live stream (GET /api/events), the job metrics (metrics.ts) and anything else
 * that watches subscribe. Delivery is synchronous and a listener that throws is logged and skipped: a broken
 * watcher never breaks training.
 */
import type { JobRankReport, JobProgress } from '../protocol/control.ts';
import type { CheckpointRecord, JobState, MetricRow } from './store/job-store.ts';

export interface CoordinatorEvents {
  /** A job's record changed (state, step, plan, version). */
  job: { jobId: string; state: JobState };
  /** Rank 0's global figures for a step, and the metrics rows recorded from them. */
  progress: { jobId: string; attempt: number; progress: JobProgress; rows: MetricRow[] };
  /** One rank's own breakdown of a step (job.rank). */
  rank: { jobId: string; attempt: number; nodeId: string; report: JobRankReport };
  /** A canonical checkpoint was recorded: merged from `shards` shard checkpoints in `mergeMs`, `bytes` in all. */
  checkpoint: { jobId: string; checkpoint: CheckpointRecord; bytes: number; mergeMs: number; shards: number };
  /** An attempt started (on these nodes) or ended (with the job's new state). */
  attempt: { jobId: string; attempt: number; phase: 'started' | 'ended'; nodeIds: string[]; state?: JobState; reason?: string };
  /** A node's status or role changed (joined, left, died, took a rank). */
  node: { nodeId: string };
  /** A model version was registered. */
  model: { name: string; version: number };
  /** A gateway announced itself or went silent. */
  gateway: { name: string };
}

export type EventName = keyof CoordinatorEvents;
type Listener<K extends EventName> = (event: CoordinatorEvents[K]) => void;

export class EventBus {
  readonly #listeners = new Map<EventName, Set<Listener<never>>>();
  readonly #onError: (err: unknown, name: EventName) => void;

  constructor(onError: (err: unknown, name: EventName) => void = () => {}) {
    this.#onError = onError;
  }

  /** Subscribes; returns the function that unsubscribes. */
  on<K extends EventName>(name: K, fn: Listener<K>): () => void {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => set.delete(fn as Listener<never>);
  }

  emit<K extends EventName>(name: K, event: CoordinatorEvents[K]): void {
    for (const fn of this.#listeners.get(name) ?? []) {
      try {
        (fn as Listener<K>)(event);
      } catch (err) {
        this.#onError(err, name);
      }
    }
  }
}
