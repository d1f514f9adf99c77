/**
 * One rank of a training job, on the agent's main thread, from job.start to job.finished: `runJob(start, ctx)`
 *
 *   set up:  check the spec and the plan, look up this rank's rings, fetch the data (and the checkpoint to resume
 *            from, a LoRA base, a dpo reference or distill teacher: artifacts.ts), start the compute worker
 *            (worker-client.ts) with its stage's blocks cut to its tensor-parallel shard
 *   steps:   for each step: the step itself (step.ts), then
 *            [every evalEvery steps and at the end: the held-out loss (step.ts evaluate)]
 *            world rank 0 → job.progress; every rank → job.rank
 *            [every checkpointEvery steps and at the end: data-parallel rank 0 of every stage shard saves the shard's
 *             checkpoint (with ZeRO-1 the moments are all-gathered first), uploads it in the background while
 *             training goes on, and sends job.checkpoint (artifacts.ts); the coordinator merges the shards into one
 *             layout-free checkpoint]
 *   end:     wait for the last upload; job.finished
 *
 * The rank is one cell of a data × pipeline × tensor layout (protocol/layout.ts). Any failure ends in job.finished
 * {ok: false, error} and never hangs: a peer that dies makes our next collective or receive time out, and
 * `ctx.signal` (job.stop, lost control connection, released group) terminates the worker at once and aborts the
 * rings (Stopper). An aborted ring stays broken; a new attempt needs a new group. `runJob` itself never throws: it
 * resolves with the job.finished message it sent.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { AgentMessage, JobStart } from '../../protocol/control.ts';
import { validateJobSpec, type ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { coordsOf, layoutName, rankOf, ringIds, worldSize, type Coords } from '../../protocol/layout.ts';
import { shardLayout, type ShardSpec } from '../../model/shard-layout.ts';
import { loraShardLayout, loraSpec } from '../../model/lora.ts';
import type { Ring } from '../collectives/ring.ts';
import type { Mailbox } from '../collectives/mailbox.ts';
import type { BackendChoice } from '../../model/compute/backend.ts';
import { parseTraceparent } from '../../common/tracing.ts';
import type { StepReport } from '../../common/step-report.ts';
import { AgentError } from '../errors.ts';
import type { Placement } from './messages.ts';
import { CheckpointSaver, errorText, fetchJobInputs, type ArtifactContext } from './artifacts.ts';
import { evaluate, runStep, type JobLinks, type RankStep, type StepFigures } from './step.ts';
import { bubbleTheory, oneFOneB } from './schedule.ts';
import { TrainerWorker } from './worker-client.ts';

export type { ArtifactStore } from './artifacts.ts';
export type { JobLinks } from './step.ts';

/** What a group offers; agent.ts passes its Group. */
export interface RingSource {
  ringOf(id: string): Ring;
  mailbox(id: string): Mailbox;
}

/** The links of `rank` in `placement`'s layout, looked up by the names both sides derive. */
export function jobLinks(group: RingSource, placement: Placement): JobLinks {
  const { layout, rank } = placement;
  const { dp, pp, tp } = coordsOf(rank, layout);
  const last = layout.pipeline - 1;
  return {
    world: group.ringOf(ringIds.world),
    data: group.ringOf(ringIds.data(pp, tp)),
    tensor: group.ringOf(ringIds.tensor(dp, pp)),
    tied: last > 0 && (pp === 0 || pp === last) ? group.ringOf(ringIds.tied(dp, tp)) : null,
    prev: pp > 0 ? group.mailbox(ringIds.pipe(dp, tp, pp - 1)) : null,
    next: pp < last ? group.mailbox(ringIds.pipe(dp, tp, pp)) : null,
  };
}

/** job.start's plan, or for a job.start without one, plain data parallelism over its world. */
export function placementOf(start: JobStart, spec: ResolvedJobSpec): Placement {
  const plan = start.plan;
  if (plan) return { layout: plan.layout, stages: plan.stages.map(([a, b]) => [a, b] as [number, number]), microBatches: plan.microBatches, zero: plan.zero, rank: start.rank };
  return { layout: { data: start.world, pipeline: 1, tensor: 1 }, stages: [[0, spec.model.nLayer]], microBatches: spec.training.microBatches, zero: spec.training.zero, rank: start.rank };
}

/** What a job needs of the agent (artifacts, send, log, signal and observers: see ArtifactContext). */
export interface JobContext extends ArtifactContext {
  links: JobLinks | ((placement: Placement) => JobLinks);
  backend: BackendChoice;
  /** Parent of `<jobId>/data` and `<jobId>/resume`. */
  workDir: string;
  /** Keep `<workDir>/<jobId>` after the job (default: deleted; everything that matters is uploaded). */
  keepWorkDir?: boolean;
  /** How long a pipeline receive may wait (default 5 minutes; the rings have their own idle timeout). */
  recvTimeoutMs?: number;
}

export type JobFinished = Extract<AgentMessage, { type: 'job.finished' }>;

/** A failure of the job itself (an invalid spec or plan, a diverged loss): job.finished says `fatal`, no retry. */
class JobFault extends AgentError {
  constructor(code: 'AGT_ERR_JOB_SPEC' | 'AGT_ERR_DIVERGED', message: string) {
    super(code, message);
  }
}


export async function runJob(start: JobStart, ctx: JobContext): Promise<JobFinished> {
  const { jobId, attempt, rank } = start;
  const jobDir = join(ctx.workDir, jobId);
  const stopper = new Stopper(ctx.signal);
  let run: RankRun | null = null;
  let finished: JobFinished;
  try {
    stopper.listen();
    run = await setUp(start, ctx, jobDir, stopper);
    for (let s = run.step + 1; s <= run.spec.training.steps; s++) await trainStep(run, s);
    // the end: the coordinator registers the model from the final checkpoint's merged shards
    await run.checkpoints.finished();
    finished = { type: 'job.finished', jobId, attempt, rank, ok: true, step: run.step };
    ctx.log.info(`job ${jobId}: finished ${run.step} steps`);
  } catch (err) {
    const step = run?.step ?? start.resume?.step ?? 0;
    const error = ctx.signal.aborted ? stopper.error().message : errorText(err);
    ctx.log.warn(`job ${jobId}: failed at step ${step}: ${error}`);
    const fatal = !ctx.signal.aborted && err instanceof JobFault;
    finished = { type: 'job.finished', jobId, attempt, rank, ok: false, step, error, ...(fatal ? { fatal } : {}) };
  } finally {
    stopper.dispose();
    await stopper.worker?.terminate();
    await run?.checkpoints.settled();
    if (!ctx.keepWorkDir) await rm(jobDir, { recursive: true, force: true }).catch(() => {});
  }
  ctx.send(finished);
  return finished;
}

/**
 * Acts on the job's stop signal at once, whatever we are waiting for: terminates the worker, aborts the rings (a
 * collective in flight would otherwise wait for its idle timeout) and rejects every `race` in progress.
 */
class Stopper {
  readonly #signal: AbortSignal;
  readonly #aborted: Promise<never>;
  #reject!: (err: Error) => void;
  /** Set as soon as they exist, so that a stop reaches them. */
  worker: TrainerWorker | null = null;
  links: JobLinks | null = null;

  constructor(signal: AbortSignal) {
    this.#signal = signal;
    this.#aborted = new Promise<never>((_, reject) => (this.#reject = reject));
    this.#aborted.catch(() => {});
  }

  /** The error a stop fails the job with. */
  error(): AgentError {
    return new AgentError('AGT_ERR_STOPPED', `stopped: ${reasonOf(this.#signal.reason)}`);
  }

  /** Starts listening; throws at once if the job is already stopped. */
  listen(): void {
    if (this.#signal.aborted) throw this.error();
    this.#signal.addEventListener('abort', this.#onAbort, { once: true });
  }

  dispose(): void {
    this.#signal.removeEventListener('abort', this.#onAbort);
  }

  /** `p`, unless the job is stopped first. */
  race = <T>(p: Promise<T>): Promise<T> => Promise.race([p, this.#aborted]);

  #onAbort = (): void => {
    const err = this.error();
    this.worker?.terminate();
    // These rings are done for this attempt.
    const links = this.links;
    if (links) for (const r of [links.world, links.data, links.tensor, links.tied]) r?.abort(err);
    this.#reject(err);
  };
}

function reasonOf(reason: unknown): string {
  if (reason instanceof Error) return reason.message;
  return typeof reason === 'string' ? reason : 'aborted';
}

/** A job on this rank once set up: what every step uses, the last step done, the checkpoints it saves. */
interface RankRun extends RankStep {
  start: JobStart;
  ctx: JobContext;
  spec: ResolvedJobSpec;
  /** The last step done (the resumed one before the first). */
  step: number;
  checkpoints: CheckpointSaver;
  optimizerBytes: number;
  /** This rank's successor on the data ring (job.rank's link). */
  dataSucc: number;
}

/** Checks the spec and the plan, finds the rings, fetches the files and starts the worker. */
async function setUp(start: JobStart, ctx: JobContext, jobDir: string, stopper: Stopper): Promise<RankRun> {
  const { jobId, attempt, rank } = start;
  const race = stopper.race;
  const { spec, placement, coords, shard } = checkPlan(start);
  const { layout, microBatches, zero } = placement;
  // Validates the shard against the model; with LoRA, what the checkpoints hold is the adapter's cut of it.
  const modelShard = shardLayout(spec.model, shard);
  const layoutOfShard = spec.lora ? loraShardLayout(spec.model, loraSpec(spec.lora, spec.model), shard) : modelShard;
  const links = (stopper.links = typeof ctx.links === 'function' ? ctx.links(placement) : ctx.links);
  checkRings(start, placement, links);

  const inputs = await fetchJobInputs(ctx.artifacts, start, jobDir, shard.stage === shard.stages - 1, race);
  const { resume } = inputs;
  ctx.log.info(`job ${jobId} attempt ${attempt}: rank ${rank}/${start.world} of ${layoutName(layout)} (replica ${coords.dp}, stage ${coords.pp} ` +
    `blocks [${shard.firstLayer}, ${shard.endLayer}), shard ${coords.tp})${resume ? `, resuming after step ${resume.step}` : ''}`);

  const worker = (stopper.worker = new TrainerWorker(ctx.backend));
  if (ctx.signal.aborted) worker.terminate();
  const ready = await race(worker.request({ type: 'init', spec, placement, ...inputs }, 'ready'));
  worker.serveTensorParallel(ready, links.tensor);
  const optimizerBytes = 2 * 4 * (ready.optimizerRange[1] - ready.optimizerRange[0]);
  ctx.log.info(`job ${jobId}: worker ready on ${ready.backend}, ${ready.paramCount} parameters here (optimizer state ${(optimizerBytes / 1e6).toFixed(2)} MB), ` +
    `starting at step ${ready.step + 1} of ${spec.training.steps}`);

  const where = { shard, layout: layoutOfShard, coords, placement };
  return {
    jobId, worker, links, ready, params: new Float32Array(ready.params), grads: new Float32Array(ready.grads),
    layout, coords, microBatches, zero, schedule: oneFOneB(coords.pp, layout.pipeline, microBatches),
    recvMs: ctx.recvTimeoutMs ?? 5 * 60_000,
    attemptTrace: (start.trace && parseTraceparent(start.trace)) || null, // all-zero ids: not traced
    gradientWire: spec.training.gradientWire,
    diloco: spec.training.diloco
      ? { innerSteps: spec.training.diloco.innerSteps, lastStep: spec.training.steps, roundStartMs: performance.now() }
      : null,
    log: ctx.log, race,
    start, ctx, spec, step: start.resume?.step ?? 0, optimizerBytes,
    dataSucc: rankOf({ dp: (coords.dp + 1) % layout.data, pp: coords.pp, tp: coords.tp }, layout),
    checkpoints: new CheckpointSaver(ctx, start, spec, where, { dir: jobDir, worker, data: links.data, race }),
  };
}

/** The job's spec and this rank's place in its plan, or a JobFault saying what does not add up. */
function checkPlan(start: JobStart): { spec: ResolvedJobSpec; placement: Placement; coords: Coords; shard: ShardSpec } {
  const checked = validateJobSpec(start.spec);
  if (!checked.ok) throw new JobFault('AGT_ERR_JOB_SPEC', `invalid job spec: ${checked.errors.join('; ')}`);
  const spec = checked.spec;
  const placement = placementOf(start, spec);
  const { layout } = placement;
  if (worldSize(layout) !== start.world) throw new JobFault('AGT_ERR_JOB_SPEC', `layout ${layoutName(layout)} has ${worldSize(layout)} ranks, the job says ${start.world}`);
  const coords = coordsOf(start.rank, layout);
  const [firstLayer, endLayer] = placement.stages[coords.pp] ?? [];
  if (firstLayer === undefined || endLayer === undefined || placement.stages.length !== layout.pipeline) {
    throw new JobFault('AGT_ERR_JOB_SPEC', `the plan gives ${placement.stages.length} stage bounds for ${layout.pipeline} stages`);
  }
  const perReplica = spec.training.batchSize / layout.data;
  if (!Number.isInteger(perReplica) || !Number.isInteger(perReplica / placement.microBatches)) {
    throw new JobFault('AGT_ERR_JOB_SPEC', `batchSize ${spec.training.batchSize} does not split into ${layout.data} replicas × ${placement.microBatches} micro-batches`);
  }
  if (spec.training.diloco && (layout.pipeline > 1 || layout.tensor > 1 || placement.zero)) {
    // A DiLoCo replica is one rank holding the whole model and its own optimizer state (step.ts).
    throw new JobFault('AGT_ERR_JOB_SPEC', `training.diloco needs whole-model replicas without ZeRO-1; the plan is ${layoutName(layout)}${placement.zero ? ' with zero 1' : ''}`);
  }
  const shard: ShardSpec = { stage: coords.pp, stages: layout.pipeline, firstLayer, endLayer, tpRank: coords.tp, tpSize: layout.tensor };
  return { spec, placement, coords, shard };
}

/** The rings the group gave us must be the ones the layout says. */
function checkRings(start: JobStart, placement: Placement, { world, data, tensor }: JobLinks): void {
  const { layout } = placement;
  if (world.size !== start.world || world.rank !== start.rank) {
    throw new AgentError('AGT_ERR_GROUP', `the world ring is rank ${world.rank} of ${world.size}, the job says rank ${start.rank} of ${start.world}`);
  }
  if (data.size !== layout.data || tensor.size !== layout.tensor) {
    throw new AgentError('AGT_ERR_GROUP', `the data/tensor rings have ${data.size}/${tensor.size} ranks, the layout ${layoutName(layout)}`);
  }
}

/** Step `s` and what follows it: evaluation, progress, checkpoint, observers. */
async function trainStep(run: RankRun, s: number): Promise<void> {
  const t = run.spec.training;
  const f = await runStep(run, s);
  run.step = s;
  if (!Number.isFinite(f.loss)) throw new JobFault('AGT_ERR_DIVERGED', `step ${s}: the loss is ${f.loss}; lower training.lr or raise warmupSteps`);

  let evalLoss: number | undefined;
  if (s === t.steps || (t.evalEvery > 0 && s % t.evalEvery === 0)) {
    const e = await evaluate(run, s);
    evalLoss = e.evalLoss;
    f.phases.push(e.phase);
  }
  reportProgress(run, s, f, evalLoss);
  if (s === t.steps || (t.checkpointEvery > 0 && s % t.checkpointEvery === 0)) {
    const phase = await run.checkpoints.save(s, f.trace?.step);
    if (phase) f.phases.push(phase);
  }
  tellObservers(run, s, f, evalLoss);
}

/** The step's log line, job.progress (world rank 0: the global figures) and job.rank (this rank's breakdown). */
function reportProgress(run: RankRun, s: number, f: StepFigures, evalLoss: number | undefined): void {
  const { jobId, attempt, rank } = run.start;
  const stageCount = run.layout.pipeline;
  run.log.info(`job ${jobId} step ${s}/${run.spec.training.steps} loss ${f.loss.toFixed(4)}${evalLoss !== undefined ? ` eval ${evalLoss.toFixed(4)}` : ''} ` +
    `${Math.round(f.tokensPerS)} tok/s (${f.stepMs.toFixed(0)} ms: pipeline ${f.pipelineMs.toFixed(0)}, busy ${f.busyMs.toFixed(0)}, reduce ${f.allreduceMs.toFixed(0)}` +
    `${stageCount > 1 ? `, bubble ${(f.bubble * 100).toFixed(1)}% vs ${(bubbleTheory(stageCount, run.microBatches) * 100).toFixed(1)}% in theory` : ''}` +
    `${f.outer ? `; DiLoCo outer step ${f.outer.outerSteps}, Δ all-reduce ${f.outer.ms.toFixed(0)} ms, weights #${f.outer.checksum.toString(16).padStart(8, '0')}` : ''})`);
  if (rank === 0) {
    run.ctx.send({
      type: 'job.progress', jobId, attempt, rank, step: s, loss: f.loss, ...(evalLoss !== undefined ? { evalLoss } : {}), lr: f.lr,
      tokensPerS: f.tokensPerS, stepMs: f.stepMs, computeMs: f.busyMs + f.workerUpdateMs, allreduceMs: f.allreduceMs,
      pipelineMs: f.window, stageBusyMs: f.stageBusyMs, bubble: f.bubble, optimizerBytes: run.optimizerBytes, paramCount: run.ready.paramCount,
      ...(f.outer ? { outerSteps: f.outer.outerSteps, outerSyncMs: f.outer.ms, outerSyncBytes: f.outer.sentBytes } : {}),
    });
  }
  const r = f.rank;
  run.ctx.send({
    type: 'job.rank', jobId, attempt, rank, step: s, stepMs: f.stepMs, computeMs: r.computeMs, allreduceMs: r.ringMs, bubbleMs: r.bubbleMs, waitMs: r.waitMs,
    ...(usedDataRing(run, f) ? { link: { toRank: run.dataSucc, bytes: r.sentBytes, ms: r.dataRingMs } } : {}),
    ...(f.outer ? { outer: { steps: f.outer.outerSteps, checksum: f.outer.checksum } } : {}),
  });
}

/** Whether the step sent anything over the data ring: every step with replicas, or with DiLoCo only a round's last. */
const usedDataRing = (run: RankRun, f: StepFigures): boolean => run.layout.data > 1 && (!run.diloco || f.outer !== null);

/** The step's timeline to every observer (metrics, traces); an observer that throws is logged, not fatal. */
function tellObservers(run: RankRun, s: number, f: StepFigures, evalLoss: number | undefined): void {
  const { jobId, attempt, rank, world } = run.start;
  const { layout } = run;
  const r = f.rank;
  const report: StepReport = {
    jobId, attempt, rank, world, coords: { ...run.coords }, step: s, startMs: f.startMs, endMs: f.endMs,
    stepMs: f.stepMs, computeMs: r.computeMs, allreduceMs: r.ringMs, bubbleMs: r.bubbleMs, waitMs: r.waitMs,
    dataRing: usedDataRing(run, f) ? { toRank: run.dataSucc, sentBytes: r.sentBytes, ms: r.dataRingMs, bufferBytes: f.outer?.bufferBytes ?? run.grads.byteLength, size: layout.data } : null,
    ...(f.outer ? { outer: { steps: f.outer.outerSteps, ms: f.outer.ms } } : {}),
    ...(rank === 0 ? { global: { loss: f.loss, ...(evalLoss !== undefined ? { evalLoss } : {}), tokensPerS: f.tokensPerS, tokens: f.tokens, bubble: f.bubble, lr: f.lr } } : {}),
    phases: f.phases,
    ...(f.trace ? { trace: f.trace } : {}),
  };
  for (const o of run.ctx.observers ?? []) {
    try {
      o.onStep(report);
    } catch (err) {
      run.log.warn(`job ${jobId}: a step observer failed: ${errorText(err)}`);
    }
  }
}
