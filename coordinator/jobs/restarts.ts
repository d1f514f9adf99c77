/**
 * What becomes of a job whose attempt failed through no fault of its own (a member went down, a link broke, a
 * stall): queued to resume from its last good checkpoint, or failed when attempts keep ending without a new
 * checkpoint (elastic.ts decideRestart, bounded by training.maxRestarts). A restarted job also waits a moment
 * before it is planned again (RESTART_SETTLE_MS), so the next plan sees the agent that went down as gone.
 */
import type { JobRecord } from '../store/job-store.ts';
import { decideRestart, type FailureRun } from './elastic.ts';

/**
 * A failed attempt's job waits this long before it is planned again: a member killed outright makes its peers'
 * ranks fail on their closed links at the same moment as its own connection drops, and the next plan must not be
 * made before the coordinator has seen the drop (it would place work on the dead agent).
 */
export const RESTART_SETTLE_MS = 1000;

export interface RestartOutcome {
  /** queued: plan it again and resume; failed: give up on it. */
  state: 'queued' | 'failed';
  /** The job's state reason: what went wrong, and where it resumes from or why it will not. */
  reason: string;
}

export class RestartPolicy {
  /** Failed attempts in a row per job (decideRestart). */
  readonly #failures = new Map<string, FailureRun>();
  /** Jobs whose attempt just failed, and when they may be planned again. */
  readonly #settling = new Map<string, number>();

  /** The job's next state after a failed attempt (`why`), given the step of its newest checkpoint (0: none). */
  afterFailure(job: JobRecord, newestCheckpoint: number, why: string, nowMs: number): RestartOutcome {
    const max = job.spec.training.maxRestarts;
    const { action, run } = decideRestart(this.#failures.get(job.id), newestCheckpoint, max);
    this.#failures.set(job.id, run);
    for (const [id, until] of this.#settling) if (until <= nowMs) this.#settling.delete(id); // ended jobs' too
    this.#settling.set(job.id, nowMs + RESTART_SETTLE_MS);
    if (action === 'fail') {
      return { state: 'failed', reason: `${why}; ${run.failures} attempts in a row ended without a new checkpoint (training.maxRestarts ${max})` };
    }
    const from = newestCheckpoint > 0 ? `the checkpoint of step ${newestCheckpoint} or the last good one before it` : 'the start (no checkpoint yet)';
    return { state: 'queued', reason: `${why}; will resume from ${from} (restart ${run.failures} of ${max})` };
  }

  /** Whether the job is still settling after a failure at `nowMs` (those that are done settling are forgotten). */
  settling(jobId: string, nowMs: number): boolean {
    const until = this.#settling.get(jobId);
    if (until === undefined) return false;
    if (until > nowMs) return true;
    this.#settling.delete(jobId);
    return false;
  }
}
