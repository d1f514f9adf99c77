/**
 * Runs training jobs on agents: the executor of job-scheduler.ts's decisions. For a job that may start it prepares
 * the dataset (datasets.ts), forms a ring of the chosen agents (groups.ts), and sends each `job.start` with its
 * rank, the dataset's files and the last checkpoint to resume from. It records what the agents report (progress
 * rows, checkpoints) and, when every rank has finished, registers rank 0's model files as a new version of the
 * job's model. A member that goes down stops the attempt everywhere and puts the job back in the queue, so it
 * resumes from its last checkpoint when agents are free again.
 */
import { join } from 'node:path';
import type { Logger } from '../common/log.ts';
import type { AgentMessage, JobProgress, JobStart } from '../protocol/control.ts';
import { validateJobSpec } from '../protocol/job-spec.ts';
import { jobRings, layoutName, type ParallelLayout } from '../protocol/layout.ts';
import { CoordinatorError } from './errors.ts';
import { flatFromStateDict, paramLayout } from '../model/gpt.ts';
import { exportHf } from '../model/hf-format.ts';
import { allShards } from '../model/shard-layout.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import type { AgentHub } from './agent-hub.ts';
import type { ArtifactStore } from './artifact-store.ts';
import { CheckpointSharder, type FileSet } from './checkpoint-shards.ts';
import { prepareDataset } from './datasets.ts';
import type { GroupManager } from './groups.ts';
import { decideJobs } from './job-scheduler.ts';
import type { StoredPlan } from './plan-report.ts';
import type { Candidate, PlannerCalibration } from './planner.ts';
import type { SelfcheckReport } from './selfcheck.ts';
import { FINAL_STATES, type CheckpointRecord, type JobRecord, type JobStore } from './job-store.ts';
import type { ModelRegistry } from './registry.ts';

interface Attempt {
  jobId: string;
  attempt: number;
  groupId: string | null;
  nodeIds: string[];
  layout: ParallelLayout;
  data: FileSet | null; // the prepared dataset's files (tokenizer.json among them)
  finished: Map<number, Extract<AgentMessage, { type: 'job.finished' }>>;
  lastProgress: JobProgress | null;
  lastEvalLoss: number | null;
  stopping: boolean;
  /** Shard checkpoints received, by step, keyed "stage.tp", until every shard of the step is in. */
  shards: Map<number, Map<string, FileSet>>;
  /** The canonical (merged) checkpoint of each step, once every shard of it arrived. */
  merged: Map<number, Promise<FileSet>>;
}

export interface JobRunnerOptions {
  jobs: JobStore;
  hub: AgentHub;
  groups: GroupManager;
  artifacts: ArtifactStore;
  registry: ModelRegistry;
  dataDir: string;
  segmentBytes: number;
  log: Logger;
  now?: () => number;
  tickMs?: number;
}

export class JobRunner {
  readonly #o: JobRunnerOptions;
  readonly #now: () => number;
  readonly #attempts = new Map<string, Attempt>(); // by job id, while running
  readonly #timer: NodeJS.Timeout;
  readonly #sharder: CheckpointSharder;
  #calibration: Partial<PlannerCalibration> = {};
  #ticking = false;

  constructor(o: JobRunnerOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
    this.#sharder = new CheckpointSharder(o.artifacts, join(o.dataDir, 'scratch'));
    o.hub.onAgentMessage((nodeId, msg) => this.#onMessage(nodeId, msg));
    o.hub.onNodeDown((nodeId, reason) => this.#onNodeDown(nodeId, reason));
    // A coordinator that stopped mid-job finds it 'running' with no attempt: queue it to resume.
    for (const job of o.jobs.list()) {
      if (job.state === 'running') o.jobs.setState(job.id, 'queued', 'coordinator restarted; resuming from the last checkpoint', this.#now());
    }
    this.#timer = setInterval(() => void this.tick(), o.tickMs ?? 500);
    this.#timer.unref();
  }

  close(): void {
    clearInterval(this.#timer);
  }

  /** Starts whatever the scheduler says can start now. */
  async tick(): Promise<void> {
    if (this.#ticking) return;
    this.#ticking = true;
    try {
      const queued = this.#o.jobs.list().filter((j) => j.state === 'queued');
      if (queued.length === 0) return;
      const busy = new Set([...this.#attempts.values()].flatMap((a) => a.nodeIds));
      const free = this.#o.hub
        .availableNodes()
        .filter((n) => !busy.has(n.id))
        .map((n) => ({
          id: n.id,
          host: hostOf(n.peerAddress),
          cores: n.capabilities.cores,
          memoryBytes: n.capabilities.memoryBytes,
          matmulGflops: n.capabilities.matmulGflops,
          firstSeenMs: n.firstSeenMs,
        }));
      for (const d of decideJobs(queued.map((j) => ({ id: j.id, spec: j.spec, createdMs: j.createdMs })), free, this.#calibration)) {
        const job = queued.find((j) => j.id === d.jobId)!;
        if (d.action === 'wait') {
          if (job.stateReason !== d.reason) {
            this.#o.jobs.setState(job.id, 'queued', d.reason, this.#now());
            if (d.plan) this.#o.jobs.setPlan(job.id, { ...d.plan, plannedAtMs: this.#now() } satisfies StoredPlan, this.#now());
          }
          continue;
        }
        this.#o.jobs.setPlan(job.id, { ...d.plan, plannedAtMs: this.#now() } satisfies StoredPlan, this.#now());
        await this.#launch(job, d.chosen);
      }
    } finally {
      this.#ticking = false;
    }
  }

  /**
   * Link bandwidth measured by a self-check (its best all-reduce bus bandwidth, which is what each ring link
   * carried) replaces the planner's default for links of that kind: loopback when every agent of the ring shares a
   * host, else between hosts.
   */
  observeSelfcheck(report: SelfcheckReport): void {
    const best = Math.max(0, ...report.cases.filter((c) => c.ok && c.op === 'allreduce' && c.busbwGbps !== null).map((c) => c.busbwGbps!));
    if (!(best > 0)) return;
    const hosts = new Set(report.ring.map((m) => hostOf(this.#o.hub.availableNodes().find((n) => n.id === m.nodeId)?.peerAddress ?? m.nodeId)));
    const key = hosts.size <= 1 ? 'loopbackBytesPerS' : 'linkBytesPerS';
    this.#calibration = { ...this.#calibration, [key]: best * 1e9 };
    this.#o.log.info(`planner: ${key === 'loopbackBytesPerS' ? 'loopback' : 'inter-host'} links measured at ${best} GB/s by the self-check`);
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
    jobs.setSpec(job.id, checked.spec, this.#now());
    const attempt = this.#attempts.get(job.id);
    if (attempt) this.#stopAttempt(attempt, reason);
    jobs.setState(job.id, 'queued', reason, this.#now());
    this.#o.log.info(`job ${job.id}: ${reason}`);
    const queued = jobs.get(job.id)!; // before the tick below may already start the next attempt
    void this.tick();
    return queued;
  }

  /** Cancels a job; a running attempt is stopped on its agents. */
  cancel(jobId: string, reason: string): void {
    const attempt = this.#attempts.get(jobId);
    this.#o.jobs.setState(jobId, 'cancelled', reason, this.#now());
    if (attempt) this.#stopAttempt(attempt, reason);
  }

  async #launch(job: JobRecord, chosen: Candidate): Promise<void> {
    const { jobs, groups, log } = this.#o;
    const nodeIds = chosen.placement;
    const layout = chosen.layout;
    const attemptNo = jobs.nextAttempt(job.id, this.#now());
    const attempt: Attempt = {
      jobId: job.id, attempt: attemptNo, groupId: null, nodeIds, layout, data: null, finished: new Map(), lastProgress: null, lastEvalLoss: null,
      stopping: false, shards: new Map(), merged: new Map(),
    };
    this.#attempts.set(job.id, attempt);
    jobs.setState(job.id, 'running', `attempt ${attemptNo}: preparing data`, this.#now());
    try {
      const data = await prepareDataset(job.spec, this.#o.dataDir, this.#o.artifacts, log.child(job.id));
      attempt.data = data;
      if (attempt.stopping) return;
      jobs.setState(job.id, 'running', `attempt ${attemptNo}: linking ${nodeIds.length} agents`, this.#now());
      const group = await groups.form({ nodeIds, segmentBytes: this.#o.segmentBytes, rings: jobRings(layout) });
      attempt.groupId = group.id;
      if (attempt.stopping) return groups.release(group.id);
      const checkpoint = await this.#lastGoodCheckpoint(job.id);
      const resume = checkpoint ? await this.#resumeFiles(job, checkpoint.step, checkpoint.files, layout, chosen.stages) : null;
      if (attempt.stopping) return;
      const plan: NonNullable<JobStart['plan']> = { layout, stages: chosen.stages, microBatches: chosen.microBatches, zero: job.spec.training.zero };
      for (const m of group.members) {
        const stage = Math.floor(m.rank / layout.tensor) % layout.pipeline, tp = m.rank % layout.tensor;
        this.#o.hub.send(m.nodeId, {
          type: 'job.start',
          jobId: job.id,
          attempt: attemptNo,
          groupId: group.id,
          rank: m.rank,
          world: group.size,
          spec: job.spec,
          data,
          plan,
          ...(resume ? { resume: { step: checkpoint!.step, files: resume.get(`${stage}.${tp}`)! } } : {}),
        });
      }
      const from = checkpoint ? `resuming from step ${checkpoint.step}` : 'from scratch';
      jobs.setState(job.id, 'running', `attempt ${attemptNo}: ${layoutName(layout)} (data × pipeline × tensor) on ${group.size} agent${group.size === 1 ? '' : 's'}, ${from}`, this.#now());
      log.info(`job ${job.id} attempt ${attemptNo} started as ${layoutName(layout)} on ${group.members.map((m) => m.nodeId).join(', ')} (${from})`);
    } catch (err) {
      this.#attempts.delete(job.id);
      if (attempt.groupId) groups.release(attempt.groupId);
      const why = (err as Error).message;
      log.warn(`job ${job.id} attempt ${attemptNo} could not start: ${why}`);
      // A dataset that cannot be prepared will not fix itself; agents that failed to link may.
      const fatal = (err as { code?: string }).code?.startsWith('MDL_ERR') || (err as NodeJS.ErrnoException).code === 'ENOENT';
      if (!FINAL_STATES.has(jobs.get(job.id)!.state)) jobs.setState(job.id, fatal ? 'failed' : 'queued', `attempt ${attemptNo} could not start: ${why}`, this.#now());
    }
  }

  /**
   * Each shard's resume files ("stage.tp" → files) for `layout`, cut from the canonical checkpoint. With one stage
   * and one tensor shard the canonical checkpoint is the shard checkpoint, so it goes as it is.
   */
  async #resumeFiles(job: JobRecord, step: number, files: FileSet, layout: ParallelLayout, stages: Array<[number, number]>): Promise<Map<string, FileSet>> {
    if (layout.pipeline === 1 && layout.tensor === 1) return new Map([['0.0', files]]);
    const t0 = this.#now();
    const canonical = await this.#sharder.load(files);
    const out = new Map<string, FileSet>();
    for (const shard of allShards(stages, layout.tensor)) out.set(`${shard.stage}.${shard.tpRank}`, await this.#sharder.reshard(job.spec.model, canonical, shard));
    this.#o.log.info(`job ${job.id}: checkpoint of step ${step} resharded for ${layoutName(layout)} (${out.size} shards, ${this.#now() - t0} ms)`);
    return out;
  }

  /**
   * The newest checkpoint whose every file is intact in the artifact store (each read back and hashed); one that
   * fails is skipped, with the reason logged, in favour of the one before it.
   */
  async #lastGoodCheckpoint(jobId: string): Promise<CheckpointRecord | undefined> {
    for (const cp of this.#o.jobs.checkpoints(jobId)) {
      try {
        for (const digest of Object.values(cp.files)) await this.#o.artifacts.get(digest);
        return cp;
      } catch (err) {
        this.#o.log.warn(`job ${jobId}: checkpoint of step ${cp.step} is unusable (${(err as Error).message}); trying the one before`);
      }
    }
    return undefined;
  }

  #onMessage(nodeId: string, msg: AgentMessage): void {
    if (msg.type !== 'job.progress' && msg.type !== 'job.checkpoint' && msg.type !== 'job.finished') return;
    const attempt = this.#attempts.get(msg.jobId);
    // Messages from an older attempt (or a job that ended) are stale: counting them could count a step twice.
    if (!attempt || attempt.attempt !== msg.attempt || !attempt.nodeIds.includes(nodeId)) return;
    const { jobs } = this.#o;
    const now = this.#now();
    switch (msg.type) {
      case 'job.progress': {
        attempt.lastProgress = msg;
        const train: Record<string, number> = { loss: msg.loss, lr: msg.lr, tokensPerS: msg.tokensPerS, stepMs: msg.stepMs, computeMs: msg.computeMs, allreduceMs: msg.allreduceMs };
        if (msg.pipelineMs !== undefined) train.pipelineMs = msg.pipelineMs;
        if (msg.bubble !== undefined) train.bubble = msg.bubble;
        if (msg.optimizerBytes !== undefined) train.optimizerBytes = msg.optimizerBytes;
        if (msg.paramCount !== undefined) train.paramCount = msg.paramCount;
        msg.stageBusyMs?.forEach((ms, stage) => (train[`stage${stage}BusyMs`] = ms));
        const rows: Parameters<JobStore['recordStep']>[2] = [{ kind: 'train', atMs: now, values: train }];
        if (msg.evalLoss !== undefined) {
          attempt.lastEvalLoss = msg.evalLoss;
          rows.push({ kind: 'eval', atMs: now, values: { loss: msg.evalLoss, perplexity: Math.exp(msg.evalLoss) } });
        }
        jobs.recordStep(msg.jobId, msg.step, rows, now);
        return;
      }
      case 'job.checkpoint':
        return this.#onShardCheckpoint(attempt, msg);
      case 'job.finished':
        attempt.finished.set(msg.rank, msg);
        if (!msg.ok) {
          this.#o.log.warn(`job ${msg.jobId}: rank ${msg.rank} failed: ${msg.error}`);
          return this.#endAttempt(attempt, 'failed', `rank ${msg.rank} (${nodeId}) failed: ${msg.error ?? 'unknown error'}`);
        }
        if (attempt.finished.size === attempt.nodeIds.length) void this.#complete(attempt);
        return;
    }
  }

  /**
   * A shard checkpoint (from data-parallel rank 0 of one stage shard). When every shard of its step is in, they
   * are merged into the canonical checkpoint, which is what the job records (one merge at a time per attempt).
   */
  #onShardCheckpoint(attempt: Attempt, msg: Extract<AgentMessage, { type: 'job.checkpoint' }>): void {
    const { layout } = attempt;
    const key = `${msg.shard?.stage ?? 0}.${msg.shard?.tp ?? 0}`;
    const got = attempt.shards.get(msg.step) ?? new Map<string, FileSet>();
    attempt.shards.set(msg.step, got.set(key, msg.files));
    const needed = layout.pipeline * layout.tensor;
    if (got.size < needed) return;
    attempt.shards.delete(msg.step);
    const job = this.#o.jobs.get(attempt.jobId)!;
    const previous = [...attempt.merged.values()].at(-1) ?? Promise.resolve({});
    const merged = previous.catch(() => ({})).then(async () => {
      const t0 = this.#now();
      const files = needed === 1 ? msg.files : await this.#sharder.mergeShards(job.spec.model, [...got.values()], { layout: { ...layout } });
      this.#o.jobs.putCheckpoint(msg.jobId, { step: msg.step, attempt: msg.attempt, files, createdMs: this.#now() });
      this.#o.log.info(`job ${msg.jobId}: checkpoint at step ${msg.step}${needed > 1 ? ` (${needed} shards merged in ${this.#now() - t0} ms)` : ''}`);
      return files;
    });
    merged.catch((err: Error) => this.#o.log.warn(`job ${msg.jobId}: could not merge the checkpoint of step ${msg.step}: ${err.message}`));
    attempt.merged.set(msg.step, merged);
  }

  /** The model version's files (config.json, model.safetensors, tokenizer.json) from the final canonical checkpoint. */
  async #modelFiles(attempt: Attempt, job: JobRecord): Promise<Record<string, Uint8Array>> {
    const final = attempt.merged.get(job.spec.training.steps);
    if (!final) throw new Error(`no checkpoint of the final step ${job.spec.training.steps} arrived`);
    const canonical = await this.#sharder.load(await final);
    const layout = paramLayout(job.spec.model);
    const flat = flatFromStateDict(canonical.model, layout);
    const tokenizerDigest = attempt.data?.['tokenizer.json'];
    if (!tokenizerDigest) throw new Error('the dataset has no tokenizer.json');
    const tokenizer = Tokenizer.fromJSON(JSON.parse(Buffer.from(await this.#o.artifacts.get(tokenizerDigest)).toString('utf8')));
    return { ...exportHf({ config: job.spec.model, layout }, tokenizer, flat) };
  }

  async #complete(attempt: Attempt): Promise<void> {
    const { jobs, registry, log } = this.#o;
    const job = jobs.get(attempt.jobId)!;
    try {
      const bytes = await this.#modelFiles(attempt, job);
      const metrics: Record<string, number> = { steps: job.spec.training.steps };
      if (attempt.lastProgress) metrics.loss = attempt.lastProgress.loss;
      if (attempt.lastEvalLoss !== null) {
        metrics.evalLoss = attempt.lastEvalLoss;
        metrics.evalPerplexity = Math.exp(attempt.lastEvalLoss);
      }
      const version = await registry.register(job.name, bytes, { jobId: job.id, spec: job.spec, metrics, attempt: attempt.attempt });
      jobs.setModelVersion(job.id, version.version, this.#now());
      this.#endAttempt(attempt, 'succeeded', `registered ${job.name} v${version.version}`);
      log.info(`job ${job.id} succeeded: registered ${job.name} v${version.version}`);
    } catch (err) {
      this.#endAttempt(attempt, 'failed', `could not register the model: ${(err as Error).message}`);
    }
  }

  #onNodeDown(nodeId: string, reason: string): void {
    for (const attempt of this.#attempts.values()) {
      if (!attempt.nodeIds.includes(nodeId)) continue;
      this.#o.log.warn(`job ${attempt.jobId}: member ${nodeId} went down (${reason}); stopping attempt ${attempt.attempt}`);
      this.#endAttempt(attempt, 'queued', `member ${nodeId} went down (${reason}); will resume from the last checkpoint`);
    }
  }

  #endAttempt(attempt: Attempt, state: 'queued' | 'failed' | 'succeeded', reason: string): void {
    if (this.#attempts.get(attempt.jobId) !== attempt) return;
    this.#attempts.delete(attempt.jobId);
    if (state !== 'succeeded') this.#stopAttempt(attempt, reason);
    else if (attempt.groupId) this.#o.groups.release(attempt.groupId);
    const current = this.#o.jobs.get(attempt.jobId);
    if (current && !FINAL_STATES.has(current.state)) this.#o.jobs.setState(attempt.jobId, state, reason, this.#now());
  }

  #stopAttempt(attempt: Attempt, reason: string): void {
    attempt.stopping = true;
    this.#attempts.delete(attempt.jobId);
    for (const nodeId of attempt.nodeIds) {
      if (this.#o.hub.isConnected(nodeId)) this.#o.hub.send(nodeId, { type: 'job.stop', jobId: attempt.jobId, reason: reason.slice(0, 1000) });
    }
    if (attempt.groupId) this.#o.groups.release(attempt.groupId);
  }
}

/** The host part of an agent's peer address (ws://host:port): agents on one host share its cores and loopback. */
function hostOf(peerAddress: string): string {
  try {
    return new URL(peerAddress).hostname;
  } catch {
    return peerAddress;
  }
}
