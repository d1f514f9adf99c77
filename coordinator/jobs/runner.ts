/**
 * Runs training jobs on agents: the executor of coordinator/jobs/scheduler.ts's decisions. For a job that may start it prepares
 * the dataset (datasets.ts), forms a ring of the chosen agents (coordinator/cluster/groups.ts), and sends each `job.start` with its
 * rank, the dataset's files and the last checkpoint to resume from. It records what the agents report (progress
 * rows, checkpoints) and, when every rank has finished, registers rank 0's model files as a new version of the
 * job's model.
 *
 * Faults: a member that goes down (its connection drops or its heartbeats stop), a rank that fails on a link or a
 * deadline, or an attempt that reports no step within `stepTimeoutMs` stops the attempt everywhere and puts the job
 * back in the queue; the scheduler re-plans it for the agents there are and it resumes from its last good
 * checkpoint (elastic.ts decideRestart bounds the retries). Each time a checkpoint lands, elastic.ts decideReshape
 * may grow the job onto free agents or move work off a straggler; old checkpoints are pruned to
 * `training.keepCheckpoints`.
 */
import { agentProbe } from './cost-model.ts';
import { median } from './plan-report.ts';
import type { BackendChoice } from '../../protocol/backends.ts';
import { join } from 'node:path';
import type { Logger } from '../../common/log.ts';
import { startAttemptSpan, type AttemptSpan } from '../../common/tracing.ts';
import type { AgentMessage, JobProgress, JobStart } from '../../protocol/control.ts';
import { validateJobSpec } from '../../protocol/job-spec.ts';
import { jobRings, layoutName, type ParallelLayout } from '../../protocol/layout.ts';
import { CoordinatorError } from '../errors.ts';
import { flatFromStateDict, paramLayout } from '../../model/params.ts';
import type { LoraSpec } from '../../model/lora.ts';
import { exportHf } from '../../model/hf-format.ts';
import { allShards } from '../../model/shard-layout.ts';
import { Tokenizer } from '../../model/tokenizer.ts';
import type { AgentHub } from '../cluster/agent-hub.ts';
import type { ArtifactStore } from '../store/artifact-store.ts';
import { CheckpointSharder, checkpointKind, hfFilesAround, type FileSet } from './checkpoint-shards.ts';
import { prepareDataset } from './datasets.ts';
import { checkpointLayouts, initCheckpoint, refOf, startsFromVersion, tokenizerSource, trainedWeights, versionFiles, versionTokenizer } from './stage-inputs.ts';
import { registerAdapter } from '../registry/adapters.ts';
import type { GroupManager } from '../cluster/groups.ts';
import { decideJobs, type FreeAgent } from './scheduler.ts';
import { decideReshape, decideRestart, type FailureRun } from './elastic.ts';
import type { NodeRecord } from '../store/state-store.ts';
import { AttemptTelemetry, type Breakdown, type LinkLive, type PlacementCell, type RankLive, type Straggler } from './telemetry.ts';
import { EventBus } from '../events.ts';
import type { StoredPlan } from './plan-report.ts';
import { speedKey, type Candidate, type PlannerCalibration } from './planner.ts';
import type { SelfcheckReport } from '../cluster/selfcheck.ts';
import { FINAL_STATES, type CheckpointRecord, type JobRecord, type JobState, type JobStore } from '../store/job-store.ts';
import type { ModelRegistry, VersionFile } from '../registry/registry.ts';
import { jobLineage, parentOf } from '../tracking/lineage.ts';
import { evaluateStage, hasSuite } from './evaluator.ts';
import { decideEarlyStop, passCheck } from './eval-criteria.ts';
import type { RunStore } from '../store/run-store.ts';

interface Attempt {
  jobId: string;
  attempt: number;
  groupId: string | null;
  nodeIds: string[];
  /** The planner's step time for this attempt, its agents' speedKeys and the refits it was predicted with. */
  predictedStepMs: number;
  refitBase: Map<string, number>;
  /** The last REFIT_WINDOW step times after the first (which pays for warm-up), and whether the first came. */
  stepTimes: number[];
  warmedUp: boolean;
  layout: ParallelLayout;
  stages: Array<[number, number]>;
  microBatches: number;
  /** When an agent last reported anything (progress, a rank report, a checkpoint), or job.start went out. */
  lastActivityMs: number;
  data: FileSet | null; // the prepared dataset's files (tokenizer.json among them)
  finished: Map<number, Extract<AgentMessage, { type: 'job.finished' }>>;
  lastProgress: JobProgress | null;
  lastEvalLoss: number | null;
  stopping: boolean;
  /** Shard checkpoints received, by step, keyed "stage.tp", until every shard of the step is in. */
  shards: Map<number, Map<string, FileSet>>;
  /** The canonical (merged) checkpoint of each step, once every shard of it arrived. */
  merged: Map<number, Promise<FileSet>>;
  /** Every rank's own step reports, once the group is formed (rank → node known). */
  telemetry: AttemptTelemetry | null;
  /** The attempt's trace span (a no-op unless tracing is on). */
  span: AttemptSpan;
  /** Set when early stopping decided to end the job at this step: its merged checkpoint becomes the version. */
  earlyStopAt?: number;
  /** A periodic evaluation suite (eval.every) is running: the next one waits for it rather than piling up. */
  evaluating?: boolean;
}

/** A node's part in a running job, as the dashboard and GET /api/nodes show it. */
export interface NodeRole {
  jobId: string;
  attempt: number;
  rank: number;
  dp: number;
  pp: number;
  tp: number;
  layers: [number, number];
}

/** What GET /api/jobs/:id/live answers: the job as it runs now (or as its last attempt left it). */
export interface JobLive {
  jobId: string;
  state: JobState;
  step: number;
  attempt: number | null;
  layout: ParallelLayout | null;
  stages: Array<[number, number]> | null;
  microBatches: number | null;
  placement: PlacementCell[];
  ranks: RankLive[];
  breakdown: Breakdown | null;
  links: LinkLive[];
  straggler: Straggler | null;
  tokensPerS: number | null;
  loss: number | null;
  evalLoss: number | null;
}

export interface JobRunnerOptions {
  jobs: JobStore;
  hub: AgentHub;
  groups: GroupManager;
  artifacts: ArtifactStore;
  registry: ModelRegistry;
  /** Where each run's dataset is recorded for experiment tracking (and read back into the model's lineage). */
  runs?: RunStore;
  dataDir: string;
  segmentBytes: number;
  log: Logger;
  /** Where changes are announced (the live stream, metrics); default: a bus nobody listens to. */
  bus?: EventBus;
  now?: () => number;
  tickMs?: number;
  /** A running attempt that reports no step (nor anything else) for this long is stopped and resumed (default 5 min). */
  stepTimeoutMs?: number;
  /** What the evaluation suites compute on (default cpu). */
  backend?: BackendChoice;
}

/**
 * A failed attempt's job waits this long before it is planned again: a member killed outright makes its peers'
 * ranks fail on their closed links at the same moment as its own connection drops, and the next plan must not be
 * made before the coordinator has seen the drop (it would place work on the dead agent).
 */
const RESTART_SETTLE_MS = 1000;

/** How long a straggler's measured slowdown is believed when it is not measured again. */
const SLOWDOWN_TTL_MS = 10 * 60_000;
/** How long a step-time refit of the cost model is believed (a machine's load changes; the probe stays). */
const REFIT_TTL_MS = 60 * 60_000;
/** Steps whose median refits the cost model: the most recent ones (a long job's history is not re-sorted each step). */
const REFIT_WINDOW = 16;

export class JobRunner {
  readonly #o: JobRunnerOptions;
  readonly #now: () => number;
  readonly #attempts = new Map<string, Attempt>(); // by job id, while running
  /** The last attempt of recently finished jobs, so their page still shows how they ran. */
  readonly #ended = new Map<string, Attempt>();
  readonly #bus: EventBus;
  readonly #timer: NodeJS.Timeout;
  readonly #sharder: CheckpointSharder;
  #calibration: Partial<PlannerCalibration> = {};
  #ticking = false;
  /** Failed attempts in a row per job (decideRestart). */
  readonly #failures = new Map<string, FailureRun>();
  /** Jobs whose attempt just failed, and when they may be planned again (RESTART_SETTLE_MS). */
  readonly #settling = new Map<string, number>();
  /** Nodes seen straggling: how many times slower than their peers, and when that was measured. */
  readonly #slowdowns = new Map<string, { factor: number; atMs: number }>();
  /** By speedKey (planner.ts): measured step time ÷ predicted, from the last attempt its agents ran (see #refit). */
  readonly #refits = new Map<string, { factor: number; atMs: number }>();

  constructor(o: JobRunnerOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
    this.#bus = o.bus ?? new EventBus();
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

  #setState(jobId: string, state: JobState, reason: string): void {
    this.#o.jobs.setState(jobId, state, reason, this.#now());
    this.#bus.emit('job', { jobId, state });
  }

  /** Each busy node's part in its job (rank, coordinates, layers). */
  roles(): Map<string, NodeRole> {
    const out = new Map<string, NodeRole>();
    for (const a of this.#attempts.values()) {
      for (const cell of a.telemetry?.placement() ?? []) {
        out.set(cell.nodeId, { jobId: a.jobId, attempt: a.attempt, rank: cell.rank, dp: cell.dp, pp: cell.pp, tp: cell.tp, layers: cell.layers });
      }
    }
    return out;
  }

  /** The nodes named as stragglers of the running jobs. */
  stragglers(): Set<string> {
    return new Set([...this.#attempts.values()].flatMap((a) => a.telemetry?.straggler()?.nodeId ?? []));
  }

  /** The job as it runs now, or as its last attempt left it; undefined for an unknown job. */
  live(jobId: string): JobLive | undefined {
    const job = this.#o.jobs.get(jobId);
    if (!job) return undefined;
    const a = this.#attempts.get(jobId) ?? this.#ended.get(jobId);
    const t = a?.telemetry ?? null;
    const p = a?.lastProgress ?? null;
    return {
      jobId, state: job.state, step: job.step, attempt: a?.attempt ?? null,
      layout: a ? { ...a.layout } : null,
      stages: t ? t.stages.map(([x, y]) => [x, y] as [number, number]) : null,
      microBatches: a?.microBatches ?? null,
      placement: t?.placement() ?? [],
      ranks: t?.ranks() ?? [],
      breakdown: t?.breakdown() ?? null,
      links: t?.links() ?? [],
      straggler: t?.straggler() ?? null,
      tokensPerS: p?.tokensPerS ?? null,
      loss: p?.loss ?? null,
      evalLoss: a?.lastEvalLoss ?? null,
    };
  }

  /** Starts whatever the scheduler says can start now. */
  async tick(): Promise<void> {
    if (this.#ticking) return;
    this.#ticking = true;
    try {
      this.#checkStalls();
      const now = this.#now();
      for (const [id, at] of this.#settling) if (at <= now) this.#settling.delete(id);
      const queued = this.#o.jobs.list().filter((j) => j.state === 'queued' && !this.#settling.has(j.id));
      if (queued.length === 0) return;
      const free = this.#freeAgents();
      for (const d of decideJobs(queued.map((j) => ({ id: j.id, spec: j.spec, createdMs: j.createdMs })), free, this.#calibration)) {
        const job = queued.find((j) => j.id === d.jobId)!;
        if (d.action === 'wait') {
          if (job.stateReason !== d.reason) {
            this.#setState(job.id, 'queued', d.reason);
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

  /** Connected agents no attempt is using, as the planner sees them (with any slowdown measured lately). */
  #freeAgents(): FreeAgent[] {
    const busy = new Set([...this.#attempts.values()].flatMap((a) => a.nodeIds));
    return this.#o.hub.availableNodes().filter((n) => !busy.has(n.id)).map((n) => this.#plannerAgent(n));
  }

  /**
   * The planner's costs refitted from what it measures: once an attempt has run three steps past its first, the
   * median of them over the prediction becomes the refit of its agents' speedKeys (on top of the refit it was
   * predicted with, each update at most ×2 or ÷2, the whole within ×4 or ÷4), and later plans scale those agents'
   * compute by it. Agents of one host and backend are alike, so what one job measured rates them all.
   */
  #refit(a: Attempt, stepMs: number): void {
    if (!a.warmedUp) {
      a.warmedUp = true;
      return;
    }
    a.stepTimes.push(stepMs);
    if (a.stepTimes.length > REFIT_WINDOW) a.stepTimes.shift();
    if (a.stepTimes.length < 3 || !(a.predictedStepMs > 0)) return;
    const ratio = Math.min(2, Math.max(0.5, median(a.stepTimes)! / a.predictedStepMs));
    for (const [key, base] of a.refitBase) this.#refits.set(key, { factor: Math.min(4, Math.max(0.25, base * ratio)), atMs: this.#now() });
  }

  #refitOf(key: string): number | undefined {
    const r = this.#refits.get(key);
    return r && this.#now() - r.atMs < REFIT_TTL_MS ? r.factor : undefined;
  }

  #plannerAgent(n: NodeRecord): FreeAgent {
    const probe = agentProbe(n.capabilities.probeMs, n.capabilities.matmulGflops);
    const refit = this.#refitOf(speedKeyOf(n));
    const seen = this.#slowdowns.get(n.id);
    const fresh = seen && this.#now() - seen.atMs < SLOWDOWN_TTL_MS;
    return {
      id: n.id,
      host: hostOf(n.peerAddress),
      cores: n.capabilities.cores,
      memoryBytes: n.capabilities.memoryBytes,
      matmulGflops: n.capabilities.matmulGflops,
      backend: n.capabilities.backend,
      ...(n.capabilities.gpu ? { maxBindingBytes: n.capabilities.gpu.maxStorageBufferBindingSize } : {}),
      ...(probe ? { probe } : {}),
      ...(refit !== undefined ? { refit } : {}),
      firstSeenMs: n.firstSeenMs,
      ...(fresh ? { slowdown: seen.factor } : {}),
    };
  }

  /** Attempts that went quiet: no agent reported anything within stepTimeoutMs (a hang no deadline caught). */
  #checkStalls(): void {
    const limit = this.#o.stepTimeoutMs ?? 300_000;
    const now = this.#now();
    for (const a of [...this.#attempts.values()]) {
      if (a.stopping || a.groupId === null || now - a.lastActivityMs <= limit) continue;
      this.#o.log.warn(`job ${a.jobId} attempt ${a.attempt}: nothing reported for ${Math.round((now - a.lastActivityMs) / 1000)} s; stopping it`);
      this.#attemptFailed(a, `no step reported within ${limit / 1000} s (stepTimeoutMs)`);
    }
  }

  /**
   * A straggler named by an attempt's telemetry is remembered as that many times slower, so the planner gives it
   * less work or leaves it out; its peers, judged and not named, are forgotten as stragglers.
   */
  #noteSlowdowns(attempt: Attempt): void {
    const t = attempt.telemetry;
    if (!t) return;
    const straggler = t.straggler();
    for (const id of t.judged()) if (id !== straggler?.nodeId) this.#slowdowns.delete(id);
    if (straggler) this.#slowdowns.set(straggler.nodeId, { factor: straggler.ratio, atMs: this.#now() });
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
    const nodeIds = chosen.placement;
    const layout = chosen.layout;
    const attemptNo = jobs.nextAttempt(job.id, this.#now());
    const attempt: Attempt = {
      jobId: job.id, attempt: attemptNo, groupId: null, nodeIds, layout, stages: chosen.stages, microBatches: chosen.microBatches, lastActivityMs: this.#now(),
      predictedStepMs: chosen.predicted.stepMs, stepTimes: [], warmedUp: false,
      refitBase: new Map(this.#o.hub.availableNodes().filter((n) => nodeIds.includes(n.id)).map((n) => [speedKeyOf(n), this.#refitOf(speedKeyOf(n)) ?? 1])),
      data: null, finished: new Map(), lastProgress: null, lastEvalLoss: null,
      stopping: false, shards: new Map(), merged: new Map(), telemetry: null,
      span: startAttemptSpan(job.id, attemptNo, { 'meshtrain.job.name': job.name, 'meshtrain.layout': layoutName(layout) }),
    };
    this.#attempts.set(job.id, attempt);
    this.#setState(job.id, 'running', `attempt ${attemptNo}: preparing data`);
    try {
      const { registry, artifacts } = this.#o;
      const source = tokenizerSource(job.spec);
      const data = await prepareDataset(job.spec, this.#o.dataDir, artifacts, log.child(job.id), source ? versionTokenizer(registry, source) : undefined);
      attempt.data = data;
      this.#o.runs?.setData(job.id, { corpus: job.spec.data.corpus, files: data });
      if (attempt.stopping) return;
      this.#setState(job.id, 'running', `attempt ${attemptNo}: linking ${nodeIds.length} agents`);
      const group = await groups.form({ nodeIds, segmentBytes: this.#o.segmentBytes, rings: jobRings(layout) });
      attempt.groupId = group.id;
      if (attempt.stopping) return groups.release(group.id);
      const nodeOfRank = [...group.members].sort((a, b) => a.rank - b.rank).map((m) => m.nodeId);
      const names = new Map(this.#o.hub.views().map((n) => [n.id, n.name])); // a node keeps its name while it holds its id
      attempt.telemetry = new AttemptTelemetry(layout, chosen.stages, nodeOfRank, (id) => names.get(id) ?? id);
      if (startsFromVersion(job.spec) && jobs.checkpoints(job.id).length === 0) {
        // Starting from a version is resuming from its weights at step 0 (stage-inputs.ts).
        jobs.putCheckpoint(job.id, { step: 0, attempt: attemptNo, files: await initCheckpoint(registry, artifacts, job.spec, job.id), createdMs: this.#now() });
      }
      const frozenRef = job.spec.kind === 'dpo' ? refOf(job.spec.init!.from) : job.spec.kind === 'distill' ? refOf(job.spec.distill!.teacher) : null;
      const frozen = frozenRef ? { role: job.spec.kind === 'dpo' ? 'reference' as const : 'teacher' as const, files: await versionFiles(registry, artifacts, frozenRef) } : null;
      const base = job.spec.lora ? { files: await versionFiles(registry, artifacts, refOf(job.spec.init!.from)) } : null;
      const checkpoint = await this.#lastGoodCheckpoint(job.id);
      const resume = checkpoint ? await this.#resumeFiles(job, checkpoint.step, checkpoint.files, layout, chosen.stages) : null;
      if (attempt.stopping) return;
      // What attempts before this one recorded past the checkpoint is about to be recomputed: each step once.
      jobs.rewindTo(job.id, checkpoint?.step ?? 0, this.#now());
      attempt.lastActivityMs = this.#now();
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
          ...(frozen ? { frozen } : {}),
          ...(base ? { base } : {}),
          ...(attempt.span.traceparent ? { trace: attempt.span.traceparent } : {}),
          ...(resume ? { resume: { step: checkpoint!.step, files: resume.get(`${stage}.${tp}`)! } } : {}),
        });
      }
      const from = checkpoint ? `resuming from step ${checkpoint.step}` : 'from scratch';
      this.#setState(job.id, 'running', `attempt ${attemptNo}: ${layoutName(layout)} (data × pipeline × tensor) on ${group.size} agent${group.size === 1 ? '' : 's'}, ${from}`);
      log.info(`job ${job.id} attempt ${attemptNo} started as ${layoutName(layout)} on ${group.members.map((m) => m.nodeId).join(', ')} (${from})`);
      this.#bus.emit('attempt', { jobId: job.id, attempt: attemptNo, phase: 'started', nodeIds });
      for (const nodeId of nodeIds) this.#bus.emit('node', { nodeId });
    } catch (err) {
      this.#attempts.delete(job.id);
      if (attempt.groupId) groups.release(attempt.groupId);
      const why = (err as Error).message;
      attempt.span.end('failed', why);
      log.warn(`job ${job.id} attempt ${attemptNo} could not start: ${why}`);
      // A dataset that cannot be prepared will not fix itself; agents that failed to link may.
      const fatal = (err as { code?: string }).code?.startsWith('MDL_ERR') || (err as NodeJS.ErrnoException).code === 'ENOENT';
      if (FINAL_STATES.has(jobs.get(job.id)!.state) || attempt.stopping) return;
      if (fatal) return this.#setState(job.id, 'failed', `attempt ${attemptNo} could not start: ${why}`);
      const { state, reason } = this.#restartOrFail(job.id, `attempt ${attemptNo} could not start: ${why}`);
      this.#setState(job.id, state, reason);
    }
  }

  /**
   * Each shard's resume files ("stage.tp" → files) for `layout`, cut from the canonical checkpoint. With one stage
   * and one tensor shard the canonical checkpoint is the shard checkpoint, so it goes as it is.
   */
  async #resumeFiles(job: JobRecord, step: number, files: FileSet, layout: ParallelLayout, stages: Array<[number, number]>): Promise<Map<string, FileSet>> {
    if (layout.pipeline === 1 && layout.tensor === 1) return new Map([['0.0', files]]);
    const t0 = this.#now();
    const shards = allShards(stages, layout.tensor);
    const cut = await this.#sharder.reshard(checkpointKind(job.spec), files, shards);
    const out = new Map(shards.map((shard, i) => [`${shard.stage}.${shard.tpRank}`, cut[i]!]));
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
        for (const digest of Object.values(cp.files)) await this.#o.artifacts.verify(digest); // streamed: no whole-file buffer
        return cp;
      } catch (err) {
        this.#o.log.warn(`job ${jobId}: checkpoint of step ${cp.step} is unusable (${(err as Error).message}); trying the one before`);
      }
    }
    return undefined;
  }

  #onMessage(nodeId: string, msg: AgentMessage): void {
    if (msg.type !== 'job.progress' && msg.type !== 'job.rank' && msg.type !== 'job.checkpoint' && msg.type !== 'job.finished') return;
    const attempt = this.#attempts.get(msg.jobId);
    // Messages from an older attempt (or a job that ended) are stale: counting them could count a step twice.
    if (!attempt || attempt.attempt !== msg.attempt || !attempt.nodeIds.includes(nodeId)) return;
    const { jobs } = this.#o;
    const now = this.#now();
    attempt.lastActivityMs = now;
    switch (msg.type) {
      case 'job.progress': {
        attempt.lastProgress = msg;
        const train: Record<string, number> = { loss: msg.loss, lr: msg.lr, tokensPerS: msg.tokensPerS, stepMs: msg.stepMs, computeMs: msg.computeMs, allreduceMs: msg.allreduceMs };
        if (msg.pipelineMs !== undefined) train.pipelineMs = msg.pipelineMs;
        if (msg.bubble !== undefined) train.bubble = msg.bubble;
        if (msg.optimizerBytes !== undefined) train.optimizerBytes = msg.optimizerBytes;
        if (msg.paramCount !== undefined) train.paramCount = msg.paramCount;
        msg.stageBusyMs?.forEach((ms, stage) => (train[`stage${stage}BusyMs`] = ms));
        // The step split four ways, adding up to stepMs: with one stage the "pipeline section" is only the
        // messages to the worker, which is waiting, not a bubble.
        train.bubbleMs = attempt.layout.pipeline > 1 ? (msg.bubble ?? 0) * (msg.pipelineMs ?? 0) : 0;
        train.waitMs = Math.max(0, msg.stepMs - msg.computeMs - msg.allreduceMs - train.bubbleMs);
        const rows: Parameters<JobStore['recordStep']>[2] = [{ kind: 'train', atMs: now, values: train }];
        if (msg.evalLoss !== undefined) {
          attempt.lastEvalLoss = msg.evalLoss;
          rows.push({ kind: 'eval', atMs: now, values: { loss: msg.evalLoss, perplexity: Math.exp(msg.evalLoss) } });
        }
        jobs.recordStep(msg.jobId, msg.step, rows, now);
        if (Number.isFinite(msg.stepMs)) this.#refit(attempt, msg.stepMs);
        this.#bus.emit('progress', { jobId: msg.jobId, attempt: msg.attempt, progress: msg, rows: rows.map((r) => ({ ...r, step: msg.step })) });
        if (msg.evalLoss !== undefined) this.#considerEarlyStop(attempt, msg.step);
        return;
      }
      case 'job.rank':
        attempt.telemetry?.record(msg);
        this.#bus.emit('rank', { jobId: msg.jobId, attempt: msg.attempt, nodeId, report: msg });
        return;
      case 'job.checkpoint':
        return this.#onShardCheckpoint(attempt, msg);
      case 'job.finished':
        if (attempt.earlyStopAt !== undefined) return; // stopped on purpose: the checkpoint of that step ends the job
        attempt.finished.set(msg.rank, msg);
        if (!msg.ok) {
          this.#o.log.warn(`job ${msg.jobId}: rank ${msg.rank} failed${msg.fatal ? ' (the job itself is at fault)' : ''}: ${msg.error}`);
          const why = `rank ${msg.rank} (${nodeId}) failed: ${msg.error ?? 'unknown error'}`;
          // A fault of the job itself (an invalid spec, a diverged loss) would fail the same way again.
          return msg.fatal ? this.#endAttempt(attempt, 'failed', why) : this.#attemptFailed(attempt, why);
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
      const files = needed === 1 ? msg.files : await this.#sharder.mergeShards(checkpointKind(job.spec), [...got.values()], { layout: { ...layout } });
      const checkpoint = { step: msg.step, attempt: msg.attempt, files, createdMs: this.#now() };
      this.#o.jobs.putCheckpoint(msg.jobId, checkpoint);
      const bytes = Object.values(files).reduce((sum, digest) => sum + (this.#o.artifacts.sizeOf(digest) ?? 0), 0);
      this.#bus.emit('checkpoint', { jobId: msg.jobId, checkpoint, bytes, mergeMs: this.#now() - t0, shards: needed });
      this.#o.log.info(`job ${msg.jobId}: checkpoint at step ${msg.step}${needed > 1 ? ` (${needed} shards merged in ${this.#now() - t0} ms)` : ''}`);
      // The shard files were only the way in: a merged checkpoint does not use them (one shard: it is them).
      await this.#prune(job, needed > 1 ? [...got.values()].flatMap((f) => Object.values(f)) : []);
      this.#considerReshape(attempt, msg.step);
      return files;
    });
    merged.catch((err: Error) => this.#o.log.warn(`job ${msg.jobId}: could not merge the checkpoint of step ${msg.step}: ${err.message}`));
    attempt.merged.set(msg.step, merged);
    if (attempt.earlyStopAt === msg.step) this.#stopEarly(attempt, msg.step);
    else this.#periodicEval(attempt, job, msg.step);
  }

  /** A held-out loss arrived: with eval.earlyStopping, end the job at this step when the loss stopped improving (decideEarlyStop). */
  #considerEarlyStop(attempt: Attempt, step: number): void {
    const job = this.#o.jobs.get(attempt.jobId)!;
    const rule = job.spec.eval?.earlyStopping;
    if (!rule || attempt.earlyStopAt !== undefined || attempt.stopping || step >= job.spec.training.steps) return;
    if (!decideEarlyStop(this.#evalLosses(job.id, step).map(([, loss]) => loss), rule)) return;
    // The job spec makes evalEvery a multiple of checkpointEvery, so this step's checkpoint is on its way (it is
    // sent after the progress report). No reshape, stall check or rank report may end the attempt meanwhile.
    attempt.earlyStopAt = step;
    attempt.stopping = true;
    this.#o.log.info(`job ${job.id}: held-out loss has not improved by more than ${rule.minDelta ?? 0} in ${rule.patience} evaluations; stopping early at step ${step}`);
    if (attempt.merged.has(step)) this.#stopEarly(attempt, step);
  }

  /** The job's held-out losses recorded up to `step`, as [step, loss] in step order. */
  #evalLosses(jobId: string, step: number): Array<[number, number]> {
    return this.#o.jobs.metrics(jobId).filter((r) => r.kind === 'eval' && r.step <= step && r.values.loss !== undefined).map((r) => [r.step, r.values.loss!]);
  }

  /** Stops the agents and registers the model from the checkpoint of the early-stopping step (once it is merged). */
  #stopEarly(attempt: Attempt, step: number): void {
    const reason = `stopped early at step ${step}: no held-out improvement`;
    attempt.merged.get(step)!.then(
      () => {
        for (const nodeId of attempt.nodeIds) if (this.#o.hub.isConnected(nodeId)) this.#o.hub.send(nodeId, { type: 'job.stop', jobId: attempt.jobId, reason });
        return this.#complete(attempt, step);
      },
      (err: Error) => this.#attemptFailed(attempt, `early stopping at step ${step}: its checkpoint could not be merged (${err.message})`),
    );
  }

  /** eval.every: the suite on a merged checkpoint at a multiple of it, off the training path; skipped while one runs. */
  #periodicEval(attempt: Attempt, job: JobRecord, step: number): void {
    const every = job.spec.eval?.every ?? 0;
    if (!(every > 0) || step % every !== 0 || step >= job.spec.training.steps || !hasSuite(job.spec) || attempt.evaluating || !attempt.data) return;
    attempt.evaluating = true;
    const { log } = this.#o;
    void attempt.merged.get(step)!
      .then(async () => {
        const suite = await evaluateStage({ spec: job.spec, data: attempt.data!, model: filesForWorker((await this.#trained(attempt, job, step)).files), artifacts: this.#o.artifacts, registry: this.#o.registry, backend: this.#o.backend ?? 'cpu' });
        if (suite) this.#recordSuite(job.id, step, suite.values);
      })
      .catch((err: Error) => log.warn(`job ${job.id}: evaluation at step ${step} failed: ${err.message}`))
      .finally(() => (attempt.evaluating = false));
  }

  /** The suite's numbers join the step's 'eval' row (beside its held-out loss, which the row keeps). */
  #recordSuite(jobId: string, step: number, values: Record<string, number>): void {
    const existing = this.#o.jobs.metrics(jobId, step - 1).find((r) => r.step === step && r.kind === 'eval')?.values ?? {};
    this.#o.jobs.putMetrics(jobId, step, [{ kind: 'eval', atMs: this.#now(), values: { ...existing, ...values } }]);
    this.#o.log.info(`job ${jobId}: evaluation at step ${step}: ${Object.entries(values).map(([k, v]) => `${k} ${Number(v.toPrecision(4))}`).join(', ')}`);
  }

  /**
   * The model's files (config.json, model.safetensors, tokenizer.json) from the canonical checkpoint of `step`;
   * with LoRA the base with the adapter merged in (what the suites judge), and the
   * adapter's own values (what is registered).
   */
  async #trained(attempt: Attempt, job: JobRecord, step: number): Promise<{ files: Record<string, VersionFile>; adapter: Float32Array | null }> {
    const final = attempt.merged.get(step);
    if (!final) throw new Error(`no checkpoint of step ${step} arrived`);
    const checkpoint = await final;
    const tokenizerDigest = attempt.data?.['tokenizer.json'];
    if (!tokenizerDigest) throw new Error('the dataset has no tokenizer.json');
    const tokenizer = Tokenizer.fromJSON(JSON.parse(Buffer.from(await this.#o.artifacts.get(tokenizerDigest)).toString('utf8')));
    // A whole-model checkpoint's model.safetensors is already the HF file exportHf would write: it is copied into
    // the version as it is, never loaded (for GPT-2-small, 500 MB the event loop would otherwise hash and copy).
    const asIs = job.spec.lora ? undefined : await this.#sharder.hfModelFile(job.spec.model, checkpoint);
    if (asIs) return { files: hfFilesAround(job.spec.model, tokenizer, asIs), adapter: null };
    const canonical = await this.#sharder.load(checkpoint);
    const layout = paramLayout(job.spec.model);
    const flat = trainedWeights(this.#o.registry, job.spec, canonical.model);
    const adapter = job.spec.lora ? checkpointLayouts(job.spec).full : null;
    const files = { ...exportHf({ config: job.spec.model, layout }, tokenizer, flat) };
    return { files, adapter: adapter ? flatFromStateDict(canonical.model, adapter) : null };
  }

  /**
   * Registers the model from the checkpoint of `step` (the final one, or the early-stopping one), after the stage's
   * evaluation suite: its numbers are recorded and go into the lineage, and a spec's unmet pass criterion fails
   * the job instead, with nothing registered.
   */
  async #complete(attempt: Attempt, step = this.#o.jobs.get(attempt.jobId)!.spec.training.steps): Promise<void> {
    const { jobs, registry, log } = this.#o;
    const job = jobs.get(attempt.jobId)!;
    attempt.stopping = true; // training is over: no stall check or reshape may end the attempt while the suite runs
    try {
      const { files: bytes, adapter } = await this.#trained(attempt, job, step);
      const metrics: Record<string, number> = { steps: step };
      if (attempt.lastProgress) metrics.loss = attempt.lastProgress.loss;
      const evalLoss = this.#evalLosses(job.id, step).at(-1)?.[1] ?? attempt.lastEvalLoss;
      if (evalLoss !== null) {
        metrics.evalLoss = evalLoss;
        metrics.evalPerplexity = Math.exp(evalLoss);
      }
      if (attempt.earlyStopAt !== undefined) {
        metrics.earlyStopped = step;
        const trained = jobs.metrics(job.id, step - 1).find((r) => r.step === step && r.kind === 'train')?.values.loss;
        if (trained !== undefined) metrics.loss = trained; // training went on a little past the step the model is from
      }
      const suite = attempt.data && hasSuite(job.spec) ? await evaluateStage({ spec: job.spec, data: attempt.data, model: filesForWorker(bytes), artifacts: this.#o.artifacts, registry, backend: this.#o.backend ?? 'cpu' }) : null;
      if (suite) {
        this.#recordSuite(job.id, step, suite.values);
        Object.assign(metrics, suite.values);
        for (const s of suite.samples) log.info(`job ${job.id}: sample ${JSON.stringify(s.prompt)} → ${JSON.stringify(s.got)} (expected ${JSON.stringify(s.expected)})`);
      }
      const unmet = passCheck(job.spec.eval?.pass, metrics);
      if (unmet.length) {
        this.#endAttempt(attempt, 'failed', `pass criteria not met, no version registered: ${unmet.join('; ')}`);
        log.warn(`job ${job.id} failed its pass criteria: ${unmet.join('; ')}`);
        return;
      }
      const lineage = {
        ...jobLineage({ jobId: job.id, spec: job.spec, metrics, attempt: attempt.attempt, run: this.#o.runs?.get(job.id), parent: parentOf(job.spec, registry) }),
        ...(job.spec.distill ? { teacher: refOf(job.spec.distill.teacher) } : {}),
      };
      // A LoRA job registers its adapter alone (PEFT files, a few percent of the base), on its frozen base.
      const version = adapter
        ? await registerAdapter(registry, { name: job.name, base: refOf(job.spec.init!.from), spec: job.spec.lora as LoraSpec, flat: adapter, lineage })
        : await registry.register(job.name, bytes, lineage);
      jobs.setModelVersion(job.id, version.version, this.#now());
      this.#bus.emit('model', { name: job.name, version: version.version });
      this.#endAttempt(attempt, 'succeeded', `registered ${job.name} v${version.version}${attempt.earlyStopAt !== undefined ? ` (stopped early at step ${step})` : ''}`);
      log.info(`job ${job.id} succeeded: registered ${job.name} v${version.version}`);
    } catch (err) {
      this.#endAttempt(attempt, 'failed', `could not register the model: ${(err as Error).message}`);
    }
  }

  #onNodeDown(nodeId: string, reason: string): void {
    for (const attempt of [...this.#attempts.values()]) {
      if (!attempt.nodeIds.includes(nodeId)) continue;
      this.#o.log.warn(`job ${attempt.jobId}: member ${nodeId} went down (${reason}); stopping attempt ${attempt.attempt}`);
      this.#attemptFailed(attempt, `member ${nodeId} went down (${reason})`);
    }
  }

  /** An attempt failed through no fault of the job's own: queue it to resume, unless it keeps failing (decideRestart). */
  #attemptFailed(attempt: Attempt, why: string): void {
    if (this.#attempts.get(attempt.jobId) !== attempt) return;
    const { state, reason } = this.#restartOrFail(attempt.jobId, why);
    this.#endAttempt(attempt, state, reason);
  }

  #restartOrFail(jobId: string, why: string): { state: 'queued' | 'failed'; reason: string } {
    const job = this.#o.jobs.get(jobId)!;
    const newest = this.#o.jobs.checkpoints(jobId)[0]?.step ?? 0;
    const max = job.spec.training.maxRestarts;
    const { action, run } = decideRestart(this.#failures.get(jobId), newest, max);
    this.#failures.set(jobId, run);
    this.#settling.set(jobId, this.#now() + RESTART_SETTLE_MS);
    if (action === 'fail') {
      return { state: 'failed', reason: `${why}; ${run.failures} attempts in a row ended without a new checkpoint (training.maxRestarts ${max})` };
    }
    const from = newest > 0 ? `the checkpoint of step ${newest} or the last good one before it` : 'the start (no checkpoint yet)';
    return { state: 'queued', reason: `${why}; will resume from ${from} (restart ${run.failures} of ${max})` };
  }

  /**
   * A checkpoint of a running attempt landed: the moment a restart costs nothing. Grow onto free agents, move
   * work off a straggler, or re-plan, as decideReshape says.
   */
  #considerReshape(attempt: Attempt, step: number): void {
    if (attempt.stopping || this.#attempts.get(attempt.jobId) !== attempt) return;
    const job = this.#o.jobs.get(attempt.jobId);
    if (!job || FINAL_STATES.has(job.state)) return;
    this.#noteSlowdowns(attempt);
    const nodes = new Map(this.#o.hub.availableNodes().map((n) => [n.id, n]));
    if (!attempt.nodeIds.every((id) => nodes.has(id))) return; // a member is going down: that path re-plans
    const decision = decideReshape({
      spec: job.spec,
      layout: attempt.layout,
      stages: attempt.stages,
      members: attempt.nodeIds.map((id) => this.#plannerAgent(nodes.get(id)!)),
      free: this.#freeAgents(),
      straggler: attempt.telemetry?.straggler()?.nodeId ?? null,
      step,
      steps: job.spec.training.steps,
      calibration: this.#calibration,
    });
    if (decision.action === 'keep') return;
    const reason = `${decision.reason}; resuming from the checkpoint of step ${step}`;
    this.#o.log.info(`job ${job.id}: ${reason}`);
    this.#stopAttempt(attempt, reason);
    this.#setState(job.id, 'queued', reason);
    void this.tick();
  }

  /**
   * Retention: the newest `training.keepCheckpoints` checkpoints of the job stay (0: all), older ones are dropped
   * from the record and their files from the store, unless something still recorded uses them. `extra` are more
   * digests to drop on the same terms (shard files a merge has consumed).
   */
  async #prune(job: JobRecord, extra: string[]): Promise<void> {
    const { jobs, artifacts, log } = this.#o;
    const keep = job.spec.training.keepCheckpoints;
    const old = keep > 0 ? jobs.checkpoints(job.id).slice(keep) : [];
    for (const cp of old) jobs.deleteCheckpoint(job.id, cp.step);
    const candidates = new Set([...old.flatMap((cp) => Object.values(cp.files)), ...extra]);
    if (candidates.size === 0) return;
    const used = jobs.checkpointDigests();
    for (const a of this.#attempts.values()) for (const d of Object.values(a.data ?? {})) used.add(d);
    let removed = 0;
    for (const digest of candidates) {
      if (used.has(digest)) continue;
      await artifacts.delete(digest).then(() => removed++, (err: Error) => log.warn(`could not delete artifact ${digest}: ${err.message}`));
    }
    if (old.length) log.info(`job ${job.id}: pruned ${old.length} old checkpoint${old.length === 1 ? '' : 's'} (steps ${old.map((c) => c.step).join(', ')}; keepCheckpoints ${keep}), ${removed} files removed`);
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
    this.#noteSlowdowns(attempt);
    this.#ended.delete(attempt.jobId);
    this.#ended.set(attempt.jobId, attempt);
    if (this.#ended.size > ENDED_KEPT) this.#ended.delete(this.#ended.keys().next().value!);
    this.#bus.emit('attempt', { jobId: attempt.jobId, attempt: attempt.attempt, phase: 'ended', nodeIds: attempt.nodeIds });
    for (const nodeId of attempt.nodeIds) this.#bus.emit('node', { nodeId });
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
}

/** Finished attempts kept for their job pages: the last one of this many jobs. */
const ENDED_KEPT = 64;

/** The host part of an agent's peer address (ws://host:port): agents on one host share its cores and loopback. */
function hostOf(peerAddress: string): string {
  try {
    return new URL(peerAddress).hostname;
  } catch {
    return peerAddress;
  }
}

/** The planner's speedKey of a node, from its record. */
function speedKeyOf(n: NodeRecord): string {
  return speedKey({ id: n.id, host: hostOf(n.peerAddress), backend: n.capabilities.backend });
}

/** A version's files as a worker thread takes them: small ones as bytes, stored ones by path (the worker reads them). */
function filesForWorker(files: Record<string, VersionFile>): Record<string, Uint8Array | string> {
  return Object.fromEntries(Object.entries(files).map(([name, f]) => [name, f instanceof Uint8Array ? f : f.path]));
}
