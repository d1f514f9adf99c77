/**
 * Runs training jobs on agents: the executor of scheduler.ts's decisions, and the one owner of every attempt's
 * state (attempt.ts). Each tick it asks decideJobs what may start on the free agents and launches it (launch.ts:
 * dataset, ring, `job.start` to each rank with the checkpoint to resume from). What the agents report goes to the
 * attempt it belongs to: progress becomes the job's metric rows (live.ts) and refits the planner's costs
 * (planner-feedback.ts); shard checkpoints are merged, pruned and may reshape the job (checkpoint-intake.ts); a
 * held-out loss may stop it early, and when every rank has finished the model is registered from the merged final
 * checkpoint (completion.ts).
 *
 * Faults: a member that goes down (its connection drops or its heartbeats stop), a rank that fails on a link or a
 * deadline, or an attempt that reports no step within `stepTimeoutMs` stops the attempt everywhere and puts the job
 * back in the queue; the scheduler re-plans it for the agents there are and it resumes from its last good
 * checkpoint (restarts.ts bounds the retries). A rank failing through the job's own fault fails the job.
 */
import { join } from 'node:path';
import { startAttemptSpan } from '../../common/tracing.ts';
import type { AgentMessage } from '../../protocol/control.ts';
import { validateJobSpec } from '../../protocol/job-spec.ts';
import { layoutName } from '../../protocol/layout.ts';
import type { SelfcheckReport } from '../cluster/selfcheck.ts';
import { CoordinatorError } from '../errors.ts';
import { EventBus } from '../events.ts';
import { FINAL_STATES, type JobRecord, type JobState } from '../store/job-store.ts';
import { newAttempt, type Attempt, type RunnerContext, type RunnerServices } from './attempt.ts';
import { takeShardCheckpoint } from './checkpoint-intake.ts';
import { CheckpointSharder } from './checkpoint-shards.ts';
import { complete, considerEarlyStop, periodicEval, stopEarly } from './completion.ts';
import { isFatalStartError, launchAttempt } from './launch.ts';
import { liveView, nodeRoles, progressRows, stragglersOf, type JobLive, type NodeRole } from './live.ts';
import type { StoredPlan } from './plan-report.ts';
import { PlannerFeedback } from './planner-feedback.ts';
import type { Candidate } from './planner.ts';
import { RestartPolicy } from './restarts.ts';
import { decideJobs } from './scheduler.ts';

export type { JobLive, NodeRole } from './live.ts';

export interface JobRunnerOptions extends RunnerServices {
  /** Where changes are announced (the live stream, metrics); default: a bus nobody listens to. */
  bus?: EventBus;
  now?: () => number;
  tickMs?: number;
  /** A running attempt that reports no step (nor anything else) for this long is stopped and resumed (default 5 min). */
  stepTimeoutMs?: number;
}

/** Finished attempts kept for their job pages: the last one of this many jobs. */
const ENDED_KEPT = 64;

export class JobRunner {
  readonly #o: JobRunnerOptions;
  readonly #ctx: RunnerContext;
  readonly #attempts = new Map<string, Attempt>(); // by job id, while running
  /** The last attempt of recently finished jobs, so their page still shows how they ran. */
  readonly #ended = new Map<string, Attempt>();
  readonly #feedback: PlannerFeedback;
  readonly #restarts = new RestartPolicy();
  readonly #timer: NodeJS.Timeout;
  #ticking = false;

  constructor(o: JobRunnerOptions) {
    this.#o = o;
    const now = o.now ?? Date.now;
    this.#ctx = {
      ...o, now, bus: o.bus ?? new EventBus(), sharder: new CheckpointSharder(o.artifacts, join(o.dataDir, 'scratch')),
      setState: (jobId, state, reason) => this.#setState(jobId, state, reason),
      isCurrent: (a) => this.#attempts.get(a.jobId) === a,
      running: () => this.#attempts.values(),
      endAttempt: (a, state, reason) => this.#endAttempt(a, state, reason),
      attemptFailed: (a, why) => this.#attemptFailed(a, why),
      requeue: (a, reason) => {
        this.#stopAttempt(a, reason);
        this.#setState(a.jobId, 'queued', reason);
        void this.tick();
      },
    };
    this.#feedback = new PlannerFeedback(o.hub, now);
    o.hub.onAgentMessage((nodeId, msg) => this.#onMessage(nodeId, msg));
    o.hub.onNodeDown((nodeId, reason) => this.#onNodeDown(nodeId, reason));
    // A coordinator that stopped mid-job finds it 'running' with no attempt: queue it to resume.
    for (const job of o.jobs.list()) {
      if (job.state === 'running') o.jobs.setState(job.id, 'queued', 'coordinator restarted; resuming from the last checkpoint', now());
    }
    this.#timer = setInterval(() => void this.tick(), o.tickMs ?? 500);
    this.#timer.unref();
  }

  close(): void {
    clearInterval(this.#timer);
  }

  /** Each busy node's part in its job (rank, coordinates, layers). */
  roles(): Map<string, NodeRole> {
    return nodeRoles(this.#attempts.values());
  }

  /** The nodes named as stragglers of the running jobs. */
  stragglers(): Set<string> {
    return stragglersOf(this.#attempts.values());
  }

  /** The job as it runs now, or as its last attempt left it; undefined for an unknown job. */
  live(jobId: string): JobLive | undefined {
    const job = this.#o.jobs.get(jobId);
    return job && liveView(job, this.#attempts.get(jobId) ?? this.#ended.get(jobId));
  }

  /** The link bandwidth a self-check measured becomes the planner's (planner-feedback.ts). */
  observeSelfcheck(report: SelfcheckReport): void {
    this.#feedback.observeSelfcheck(report, this.#o.log);
  }

  /** Starts whatever the scheduler says can start now. */
  async tick(): Promise<void> {
    if (this.#ticking) return;
    this.#ticking = true;
    try {
      this.#checkStalls();
      const now = this.#ctx.now();
      const queued = this.#o.jobs.list().filter((j) => j.state === 'queued' && !this.#restarts.settling(j.id, now));
      if (queued.length === 0) return;
      const free = this.#feedback.freeAgents(new Set([...this.#attempts.values()].flatMap((a) => a.nodeIds)));
      for (const d of decideJobs(queued.map((j) => ({ id: j.id, spec: j.spec, createdMs: j.createdMs })), free, this.#feedback.calibration)) {
        const job = queued.find((j) => j.id === d.jobId)!;
        if (d.action === 'wait') {
          if (job.stateReason !== d.reason) {
            this.#setState(job.id, 'queued', d.reason);
            if (d.plan) this.#o.jobs.setPlan(job.id, { ...d.plan, plannedAtMs: this.#ctx.now() } satisfies StoredPlan, this.#ctx.now());
          }
          continue;
        }
        this.#o.jobs.setPlan(job.id, { ...d.plan, plannedAtMs: this.#ctx.now() } satisfies StoredPlan, this.#ctx.now());
        await this.#launch(job, d.chosen);
      }
    } finally {
      this.#ticking = false;
    }
  }

  /**
   * Changes a job's layout (`parallel`: pinned degrees or 'auto'). A running attempt is stopped and the job queued
   * again: it resumes from its last checkpoint under the new layout (the checkpoint is resharded for it).
   */
  replan(jobId: string, parallel: unknown): JobRecord {
    const { jobs } = this.#o;
    const job = jobs.get(jobId);
    if (!job) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no job ${jobId}`);
    if (FINAL_STATES.has(job.state)) throw new CoordinatorError('CRD_ERR_CONFLICT', `job ${job.id} already ${job.state}`);
    const checked = validateJobSpec({ ...job.spec, parallel });
    if (!checked.ok) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `invalid layout: ${checked.errors.join('; ')}`, { details: checked.errors });
    const name = checked.spec.parallel === 'auto' ? 'auto' : layoutName(checked.spec.parallel);
    const reason = `re-planned to ${name}; resuming from the last checkpoint`;
    jobs.setSpec(job.id, checked.spec, this.#ctx.now());
    const attempt = this.#attempts.get(job.id);
    if (attempt) this.#stopAttempt(attempt, reason);
    this.#setState(job.id, 'queued', reason);
    this.#o.log.info(`job ${job.id}: ${reason}`);
    const queued = jobs.get(job.id)!; // before the tick below may already start the next attempt
    void this.tick();
    return queued;
  }

  /** Cancels a job; a running attempt is stopped on its agents. */
  cancel(jobId: string, reason: string): void {
    const attempt = this.#attempts.get(jobId);
    this.#setState(jobId, 'cancelled', reason);
    if (attempt) this.#stopAttempt(attempt, reason);
  }

  async #launch(job: JobRecord, chosen: Candidate): Promise<void> {
    const { jobs, groups, log } = this.#o;
    const attemptNo = jobs.nextAttempt(job.id, this.#ctx.now());
    const span = startAttemptSpan(job.id, attemptNo, { 'meshtrain.job.name': job.name, 'meshtrain.layout': layoutName(chosen.layout) });
    const attempt = newAttempt(job.id, attemptNo, chosen, this.#feedback.refitBase(chosen.placement), span, this.#ctx.now());
    this.#attempts.set(job.id, attempt);
    this.#setState(job.id, 'running', `attempt ${attemptNo}: preparing data`);
    try {
      await launchAttempt(this.#ctx, attempt, job, chosen);
    } catch (err) {
      this.#attempts.delete(job.id);
      if (attempt.groupId) groups.release(attempt.groupId);
      const why = (err as Error).message;
      attempt.span.end('failed', why);
      log.warn(`job ${job.id} attempt ${attemptNo} could not start: ${why}`);
      if (FINAL_STATES.has(jobs.get(job.id)!.state) || attempt.stopping) return;
      if (isFatalStartError(err)) return this.#setState(job.id, 'failed', `attempt ${attemptNo} could not start: ${why}`);
      const { state, reason } = this.#restartOrFail(job.id, `attempt ${attemptNo} could not start: ${why}`);
      this.#setState(job.id, state, reason);
    }
  }

  #onMessage(nodeId: string, msg: AgentMessage): void {
    if (msg.type !== 'job.progress' && msg.type !== 'job.rank' && msg.type !== 'job.checkpoint' && msg.type !== 'job.finished') return;
    const attempt = this.#attempts.get(msg.jobId);
    // Messages from an older attempt (or a job that ended) are stale: counting them could count a step twice.
    if (!attempt || attempt.attempt !== msg.attempt || !attempt.nodeIds.includes(nodeId)) return;
    const now = this.#ctx.now();
    attempt.lastActivityMs = now;
    switch (msg.type) {
      case 'job.progress': {
        attempt.lastProgress = msg;
        if (msg.evalLoss !== undefined) attempt.lastEvalLoss = msg.evalLoss;
        const rows = progressRows(msg, attempt.layout, now);
        this.#o.jobs.recordStep(msg.jobId, msg.step, rows, now);
        if (Number.isFinite(msg.stepMs)) this.#feedback.refit(attempt, msg.stepMs);
        this.#ctx.bus.emit('progress', { jobId: msg.jobId, attempt: msg.attempt, progress: msg, rows: rows.map((r) => ({ ...r, step: msg.step })) });
        if (msg.evalLoss !== undefined) considerEarlyStop(this.#ctx, attempt, msg.step);
        return;
      }
      case 'job.rank':
        attempt.telemetry?.record(msg);
        this.#ctx.bus.emit('rank', { jobId: msg.jobId, attempt: msg.attempt, nodeId, report: msg });
        return;
      case 'job.checkpoint':
        if (!takeShardCheckpoint(this.#ctx, this.#feedback, attempt, msg)) return;
        if (attempt.earlyStopAt === msg.step) stopEarly(this.#ctx, attempt, msg.step);
        else periodicEval(this.#ctx, attempt, this.#o.jobs.get(attempt.jobId)!, msg.step);
        return;
      case 'job.finished':
        if (attempt.earlyStopAt !== undefined) return; // stopped on purpose: the checkpoint of that step ends the job
        attempt.finished.set(msg.rank, msg);
        if (!msg.ok) {
          this.#o.log.warn(`job ${msg.jobId}: rank ${msg.rank} failed${msg.fatal ? ' (the job itself is at fault)' : ''}: ${msg.error}`);
          const why = `rank ${msg.rank} (${nodeId}) failed: ${msg.error ?? 'unknown error'}`;
          // A fault of the job itself (an invalid spec, a diverged loss) would fail the same way again.
          return msg.fatal ? this.#endAttempt(attempt, 'failed', why) : this.#attemptFailed(attempt, why);
        }
        if (attempt.finished.size === attempt.nodeIds.length) void complete(this.#ctx, attempt);
        return;
    }
  }

  #onNodeDown(nodeId: string, reason: string): void {
    for (const attempt of [...this.#attempts.values()]) {
      if (!attempt.nodeIds.includes(nodeId)) continue;
      this.#o.log.warn(`job ${attempt.jobId}: member ${nodeId} went down (${reason}); stopping attempt ${attempt.attempt}`);
      this.#attemptFailed(attempt, `member ${nodeId} went down (${reason})`);
    }
  }

  /** Attempts that went quiet: no agent reported anything within stepTimeoutMs (a hang no deadline caught). */
  #checkStalls(): void {
    const limit = this.#o.stepTimeoutMs ?? 300_000;
    const now = this.#ctx.now();
    for (const a of [...this.#attempts.values()]) {
      if (a.stopping || a.groupId === null || now - a.lastActivityMs <= limit) continue;
      this.#o.log.warn(`job ${a.jobId} attempt ${a.attempt}: nothing reported for ${Math.round((now - a.lastActivityMs) / 1000)} s; stopping it`);
      this.#attemptFailed(a, `no step reported within ${limit / 1000} s (stepTimeoutMs)`);
    }
  }

  /** An attempt failed through no fault of the job's own: queue it to resume, unless it keeps failing. */
  #attemptFailed(attempt: Attempt, why: string): void {
    if (this.#attempts.get(attempt.jobId) !== attempt) return;
    const { state, reason } = this.#restartOrFail(attempt.jobId, why);
    this.#endAttempt(attempt, state, reason);
  }

  #restartOrFail(jobId: string, why: string): { state: 'queued' | 'failed'; reason: string } {
    const newest = this.#o.jobs.checkpoints(jobId)[0]?.step ?? 0;
    return this.#restarts.afterFailure(this.#o.jobs.get(jobId)!, newest, why, this.#ctx.now());
  }

  #endAttempt(attempt: Attempt, state: 'queued' | 'failed' | 'succeeded', reason: string): void {
    if (this.#attempts.get(attempt.jobId) !== attempt) return;
    this.#attempts.delete(attempt.jobId);
    this.#remember(attempt);
    attempt.span.end(state, reason);
    if (state !== 'succeeded') this.#stopAttempt(attempt, reason);
    else if (attempt.groupId) this.#o.groups.release(attempt.groupId);
    const current = this.#o.jobs.get(attempt.jobId);
    if (current && !FINAL_STATES.has(current.state)) this.#setState(attempt.jobId, state, reason);
  }

  /** Keeps an ended attempt's telemetry for its job page, and tells watchers its nodes are free. */
  #remember(attempt: Attempt): void {
    this.#feedback.noteSlowdowns(attempt);
    this.#ended.delete(attempt.jobId);
    this.#ended.set(attempt.jobId, attempt);
    if (this.#ended.size > ENDED_KEPT) this.#ended.delete(this.#ended.keys().next().value!);
    this.#ctx.bus.emit('attempt', { jobId: attempt.jobId, attempt: attempt.attempt, phase: 'ended', nodeIds: attempt.nodeIds });
    for (const nodeId of attempt.nodeIds) this.#ctx.bus.emit('node', { nodeId });
  }

  #stopAttempt(attempt: Attempt, reason: string): void {
    attempt.stopping = true;
    if (this.#attempts.get(attempt.jobId) === attempt) {
      this.#attempts.delete(attempt.jobId);
      this.#remember(attempt);
      attempt.span.end('stopped', reason);
    }
    for (const nodeId of attempt.nodeIds) {
      if (this.#o.hub.isConnected(nodeId)) this.#o.hub.send(nodeId, { type: 'job.stop', jobId: attempt.jobId, reason: reason.slice(0, 1000) });
    }
    if (attempt.groupId) this.#o.groups.release(attempt.groupId);
  }

  #setState(jobId: string, state: JobState, reason: string): void {
    this.#o.jobs.setState(jobId, state, reason, this.#ctx.now());
    this.#ctx.bus.emit('job', { jobId, state });
  }
}
