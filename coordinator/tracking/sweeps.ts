/**
 * Runs hyper-parameter sweeps: the executor of sweep-plan.ts's decisions. A sweep submits its trials as ordinary
 * jobs (through the same function as POST /api/jobs), keeps `parallelTrials` of them in flight, hears each trial
 * job's state changes on the event bus, and when the last trial ends records the sweep's outcome. Everything it
 * knows is in SQLite (coordinator/store/sweep-store.ts; trial losses are read from the jobs' metrics history), so a coordinator that
 * restarts picks each running sweep up where it was: the runner re-queues the trial jobs that were running, and
 * the sweep goes on submitting the rest.
 */
import { randomBytes, randomInt } from 'node:crypto';
import type { Logger } from '../../common/log.ts';
import { validateSweepSpec } from '../../protocol/sweep-spec.ts';
import { CoordinatorError } from '../errors.ts';
import type { EventBus } from '../events.ts';
import { FINAL_STATES, type JobRecord, type JobStore } from '../store/job-store.ts';
import { digestMetrics } from './runs.ts';
import { bestTrial, decideSweep, planTrials, trialName, trialSpec, trialSpecs, type TrialParams, type TrialState } from './sweep-plan.ts';
import type { SweepRecord, SweepState, SweepStore } from '../store/sweep-store.ts';

export interface SweepTrialView extends TrialState {
  name: string;
  params: TrialParams;
  jobId: string;
  /** The last held-out loss, or null (then `loss` is the final train loss, flagged by lossKind 'train'). */
  evalLoss: number | null;
  trainLoss: number | null;
  modelVersion: number | null;
}

export interface SweepView extends SweepRecord {
  /** How many trials the sweep runs in all: the budget, or fewer when the grid has fewer combinations. */
  totalTrials: number;
  trials: SweepTrialView[];
  best: (Pick<SweepTrialView, 'idx' | 'name' | 'params' | 'jobId' | 'evalLoss' | 'loss' | 'lossKind' | 'modelVersion'> & { note: string }) | null;
}

export interface SweepRunnerOptions {
  sweeps: SweepStore;
  jobs: JobStore;
  /** Validates and submits a job spec exactly as POST /api/jobs does; throws CRD_ERR_BAD_REQUEST on a bad spec. */
  submitJob: (spec: unknown) => JobRecord;
  cancelJob: (jobId: string, reason: string) => void;
  bus: EventBus;
  log: Logger;
  now?: () => number;
}

export class SweepRunner {
  readonly #o: SweepRunnerOptions;
  readonly #now: () => number;
  readonly #unsubscribe: () => void;
  /** Sweeps to advance once the current advance is done: submitting a trial emits job events synchronously. */
  readonly #pending = new Set<string>();
  #advancing = false;

  constructor(o: SweepRunnerOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
    this.#unsubscribe = o.bus.on('job', ({ jobId, state }) => {
      if (!FINAL_STATES.has(state)) return;
      const sweepId = o.sweeps.sweepOfJob(jobId);
      if (sweepId) this.advance(sweepId);
    });
    // Sweeps that were running when the coordinator stopped go on from where their trials are.
    for (const s of o.sweeps.list()) if (s.state === 'running') this.advance(s.id);
  }

  close(): void {
    this.#unsubscribe();
  }

  /** Validates a sweep (its spec and every trial's job spec) and starts it; a 400 lists every problem. */
  create(raw: unknown): SweepView {
    const checked = validateSweepSpec(raw, randomInt(2 ** 31 - 1));
    if (!checked.ok) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `invalid sweep: ${checked.errors.join('; ')}`, { details: checked.errors });
    const spec = checked.spec;
    const trials = trialSpecs(spec, planTrials(spec));
    if (!trials.ok) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `invalid sweep: ${trials.errors.join('; ')}`, { details: trials.errors });
    const id = `sweep-${randomBytes(5).toString('hex')}`;
    this.#o.sweeps.create(id, spec, this.#now());
    this.#o.log.info(`sweep ${id} (${spec.name}): ${trials.specs.length} ${spec.strategy} trials over ${Object.keys(spec.parameters).join(', ')}, ${spec.parallelTrials} at a time`);
    this.advance(id);
    return this.view(id)!;
  }

  list(): SweepView[] {
    return this.#o.sweeps.list().map((s) => this.#view(s));
  }

  view(id: string): SweepView | undefined {
    const s = this.#o.sweeps.get(id);
    return s && this.#view(s);
  }

  /** Cancels the sweep and every trial job of it that has not finished. */
  cancel(id: string): SweepView {
    const s = this.#o.sweeps.get(id);
    if (!s) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no sweep ${id}`);
    if (s.state !== 'running') throw new CoordinatorError('CRD_ERR_CONFLICT', `sweep ${id} already ${s.state}`);
    this.#setState(id, 'cancelled', 'cancelled by request');
    for (const t of this.#o.sweeps.trials(id)) {
      const job = this.#o.jobs.get(t.jobId);
      if (job && !FINAL_STATES.has(job.state)) this.#o.cancelJob(job.id, `sweep ${id} cancelled`);
    }
    return this.view(id)!;
  }

  /** Does what decideSweep says for a running sweep: submit trials, or record its end. */
  advance(id: string): void {
    this.#pending.add(id);
    if (this.#advancing) return; // the loop below picks it up
    this.#advancing = true;
    try {
      for (const next of this.#pending) {
        this.#pending.delete(next);
        try {
          this.#advanceOne(next);
        } catch (err) {
          this.#o.log.warn(`sweep ${next}: ${(err as Error).message}`);
          this.#setState(next, 'failed', `could not submit a trial: ${(err as Error).message}`);
        }
      }
    } finally {
      this.#advancing = false;
    }
  }

  #advanceOne(id: string): void {
    const s = this.#o.sweeps.get(id);
    if (!s || s.state !== 'running') return;
    const planned = planTrials(s.spec);
    const decision = decideSweep(planned.length, s.spec.parallelTrials, this.#trialViews(s.id));
    if (decision.action === 'wait') return;
    if (decision.action === 'finish') {
      this.#setState(id, decision.state, decision.reason);
      this.#o.log.info(`sweep ${id} ${decision.state}: ${decision.reason}`);
      return;
    }
    for (const idx of decision.idxs) {
      const params = planned[idx - 1]!;
      const built = trialSpec(s.spec.base, params, trialName(s.name, idx));
      if ('error' in built) throw new Error(`trial ${idx}: ${built.error}`); // checked at create: only a changed schema gets here
      const jobId = this.#o.sweeps.addTrial(id, idx, params, () => this.#o.submitJob(built.spec).id);
      this.#setState(id, 'running', `trial ${idx} of ${planned.length} submitted (${jobId})`);
    }
  }

  #setState(id: string, state: SweepState, reason: string): void {
    this.#o.sweeps.setState(id, state, reason, this.#now());
  }

  #trialViews(sweepId: string): SweepTrialView[] {
    return this.#o.sweeps.trials(sweepId).map((t) => {
      const job = this.#o.jobs.get(t.jobId);
      const d = digestMetrics(job ? this.#o.jobs.metrics(t.jobId) : []);
      const evalLoss = d.lastEval?.loss ?? null, trainLoss = d.lastTrain?.loss ?? null;
      return {
        idx: t.idx,
        name: job?.name ?? '',
        params: t.params,
        jobId: t.jobId,
        jobState: job?.state ?? 'failed',
        loss: evalLoss ?? trainLoss,
        lossKind: evalLoss !== null ? 'eval' : trainLoss !== null ? 'train' : null,
        evalLoss,
        trainLoss,
        modelVersion: job?.modelVersion ?? null,
      };
    });
  }

  #view(s: SweepRecord): SweepView {
    const trials = this.#trialViews(s.id);
    const best = bestTrial(trials);
    return {
      ...s,
      totalTrials: planTrials(s.spec).length,
      trials,
      best: best
        ? {
            idx: best.idx, name: best.name, params: best.params, jobId: best.jobId, evalLoss: best.evalLoss, loss: best.loss, lossKind: best.lossKind, modelVersion: best.modelVersion,
            note: best.lossKind === 'eval' ? 'lowest held-out loss (the last eval row)' : 'no trial recorded a held-out loss: ranked by final train loss (set training.evalEvery)',
          }
        : null,
    };
  }
}
