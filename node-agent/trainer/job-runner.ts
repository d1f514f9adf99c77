/**
 * One rank of a training job, on the agent's main thread: `runJob(start, ctx)` fetches the data (and the checkpoint
 * to resume from), starts the compute worker (trainer-worker.ts) and drives the steps. The rank is one cell of a
 * data × pipeline × tensor layout (protocol/layout.ts); the worker holds its stage's blocks, cut to its
 * tensor-parallel shard. Per step:
 *
 *   worker begin: this replica's batch, cut into m micro-batches
 *   1F1B schedule (schedule.ts): for each action
 *     F(i): activations from the previous stage (mailbox) → worker fwd → activations to the next stage
 *     B(i): gradient from the next stage (mailbox)        → worker bwd → input gradient to the previous stage
 *     (inside fwd/bwd the worker asks for tensor-parallel all-reduces: main runs them on the 'tp' ring)
 *   tied:  first and last stage sum their wte gradients (the head is tied to the embedding)
 *   data:  all-reduce the shard's gradient over the replicas (ZeRO-1: reduce-scatter, each rank keeps its range)
 *   world: all-reduce [Σ squared gradient, Σ loss, tokens, per-stage busy and pipeline time] → the global norm
 *   worker update: clip, AdamW (ZeRO-1: own range, then all-gather the parameters over 'data' and upload)
 *   [every evalEvery steps and at the end: a forward-only pipeline over the held-out batches]
 *   world rank 0 → job.progress
 *   [every checkpointEvery steps and at the end: data-parallel rank 0 of every stage shard saves the shard's
 *    checkpoint (with ZeRO-1 the moments are all-gathered first), uploads it in the background while training
 *    goes on, and sends job.checkpoint; the coordinator merges the shards into one layout-free checkpoint]
 *
 * Every rank runs the same collectives in the same order on each ring (the schedule depends only on the step, the
 * spec and the layout), which the rings require. Any failure ends in job.finished {ok: false, error} and never
 * hangs: a peer that dies makes our next collective or receive time out, and `ctx.signal` (job.stop, lost control
 * connection, released group) terminates the worker at once and aborts the rings. An aborted ring stays broken; a
 * new attempt needs a new group. `runJob` itself never throws: it resolves with the job.finished message it sent.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Logger } from '../../common/log.ts';
import type { AgentMessage, JobStart } from '../../protocol/control.ts';
import { validateJobSpec, type ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { coordsOf, layoutName, rankOf, ringIds, worldSize, type Coords } from '../../protocol/layout.ts';
import { checkpointDirName, MANIFEST_FILE, type JsonValue } from '../../model/checkpoint.ts';
import { shardLayout, type ShardLayout, type ShardSpec } from '../../model/shard-layout.ts';
import { loraShardLayout, loraSpec } from '../../model/lora.ts';
import type { TensorMap } from '../../model/safetensors.ts';
import type { Ring } from '../collectives/ring.ts';
import type { Mailbox } from '../collectives/mailbox.ts';
import { prepareBackendEnv, terminateComputeWorker, type BackendChoice } from '../../model/compute/backend.ts';
import type { FromWorker, Placement, Ready, ResumeFiles, ToWorker } from './messages.ts';
import { encodeCheckpointFiles, uploadCheckpoint } from './checkpoint-upload.ts';
import { bubbleTheory, oneFOneB } from './schedule.ts';
import { parseTraceparent } from '../../common/tracing.ts';
import { epochMs, ringAllReduceSentBytes, type Phase, type PhaseName, type StepObserver, type StepReport, type TraceParent } from '../../common/step-report.ts';

/** The part of ArtifactClient a job uses (tests pass one over a folder). Files stream: none is held in one buffer. */
export interface ArtifactStore {
  /** Writes the artifact `digest` to the new file `path`; resolves with the sha256 of what it wrote (compared here too). */
  download(digest: string, path: string): Promise<string>;
  /** Uploads one file given as its chunks in order (never joined), whose sha256 the caller computed. */
  upload(chunks: readonly Uint8Array[], sha256: string): Promise<void>;
  /** Uploads the file at `path`, streamed from disk, whose sha256 the caller computed (it must not change meanwhile). */
  uploadFile(path: string, sha256: string): Promise<void>;
}

/** This rank's rings and pipeline links (protocol/layout.ts names them). */
export interface JobLinks {
  world: Ring; // every rank
  data: Ring; // the replicas of our stage shard
  tensor: Ring; // the tensor-parallel shards of our stage
  tied: Ring | null; // first ↔ last stage of our replica (p > 1, on those two stages only)
  prev: Mailbox | null; // to and from the previous stage
  next: Mailbox | null; // to and from the next stage
}

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

export interface JobContext {
  links: JobLinks | ((placement: Placement) => JobLinks);
  artifacts: ArtifactStore;
  /** To the coordinator; dropped by the caller when the control connection is down. */
  send(msg: AgentMessage): void;
  log: Logger;
  backend: BackendChoice;
  /** job.stop, control connection lost, group released: stop now. Its reason goes into job.finished's error. */
  signal: AbortSignal;
  /** Parent of `<jobId>/data` and `<jobId>/resume`. */
  workDir: string;
  /** Keep `<workDir>/<jobId>` after the job (default: deleted; everything that matters is uploaded). */
  keepWorkDir?: boolean;
  /** How long a pipeline receive may wait (default 5 minutes; the rings have their own idle timeout). */
  recvTimeoutMs?: number;
  /** Told about every finished step and uploaded checkpoint (metrics, traces). */
  observers?: readonly StepObserver[];
}

export type JobFinished = Extract<AgentMessage, { type: 'job.finished' }>;

const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$/;

/** A failure of the job itself (an invalid spec or plan, a diverged loss): job.finished says `fatal`, no retry. */
class JobFault extends Error {}
const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err)).slice(0, 2048);

export async function runJob(start: JobStart, ctx: JobContext): Promise<JobFinished> {
  const { jobId, attempt, rank } = start;
  const log = ctx.log;
  const jobDir = join(ctx.workDir, jobId);
  const recvMs = ctx.recvTimeoutMs ?? 5 * 60_000;
  let step = start.resume?.step ?? 0;
  let worker: TrainerWorker | null = null;
  let links: JobLinks | null = null;
  let checkpointing: Promise<void> = Promise.resolve();

  // Everything awaited below races this, so a stop is acted on at once, whatever we are waiting for.
  let onAbort!: (err: Error) => void;
  const aborted = new Promise<never>((_, reject) => (onAbort = reject));
  aborted.catch(() => {});
  const abortError = () => new Error(`stopped: ${reasonOf(ctx.signal.reason)}`);
  const abortListener = () => {
    const err = abortError();
    worker?.terminate();
    // A collective in flight would otherwise wait for its idle timeout; these rings are done for this attempt.
    if (links) for (const r of [links.world, links.data, links.tensor, links.tied]) r?.abort(err);
    onAbort(err);
  };
  const race = <T>(p: Promise<T>): Promise<T> => Promise.race([p, aborted]);

  let finished: JobFinished;
  try {
    if (ctx.signal.aborted) throw abortError();
    ctx.signal.addEventListener('abort', abortListener, { once: true });

    const checked = validateJobSpec(start.spec);
    if (!checked.ok) throw new JobFault(`invalid job spec: ${checked.errors.join('; ')}`);
    const spec = checked.spec;
    const t = spec.training;
    const placement = placementOf(start, spec);
    const { layout, microBatches, zero } = placement;
    if (worldSize(layout) !== start.world) throw new JobFault(`layout ${layoutName(layout)} has ${worldSize(layout)} ranks, the job says ${start.world}`);
    const coords = coordsOf(rank, layout);
    const [firstLayer, endLayer] = placement.stages[coords.pp] ?? [];
    if (firstLayer === undefined || endLayer === undefined || placement.stages.length !== layout.pipeline) {
      throw new JobFault(`the plan gives ${placement.stages.length} stage bounds for ${layout.pipeline} stages`);
    }
    const shard: ShardSpec = { stage: coords.pp, stages: layout.pipeline, firstLayer, endLayer, tpRank: coords.tp, tpSize: layout.tensor };
    // Validates the shard against the model; with LoRA, what the checkpoints hold is the adapter's cut of it.
    const modelShard = shardLayout(spec.model, shard);
    const layoutOfShard = spec.lora ? loraShardLayout(spec.model, loraSpec(spec.lora, spec.model), shard) : modelShard;
    links = typeof ctx.links === 'function' ? ctx.links(placement) : ctx.links;
    const { world, data, tensor, tied, prev, next } = links;
    if (world.size !== start.world || world.rank !== rank) throw new Error(`the world ring is rank ${world.rank} of ${world.size}, the job says rank ${rank} of ${start.world}`);
    if (data.size !== layout.data || tensor.size !== layout.tensor) throw new Error(`the data/tensor rings have ${data.size}/${tensor.size} ranks, the layout ${layoutName(layout)}`);

    // 1. data and checkpoint
    const dataDir = join(jobDir, 'data');
    await race(download(ctx.artifacts, start.data, dataDir, 'data file'));
    let resume: ResumeFiles | undefined;
    if (start.resume) resume = await race(fetchResume(ctx.artifacts, start.resume, join(jobDir, 'resume')));
    // dpo's reference / distill's teacher runs on the last stage only: only it fetches the version's files.
    const frozenDir = start.frozen && shard.stage === shard.stages - 1 ? join(jobDir, 'frozen') : undefined;
    if (frozenDir) await race(download(ctx.artifacts, start.frozen!.files, frozenDir, `${start.frozen!.role} model file`));
    // A LoRA job's frozen base: every rank cuts its shard of it.
    const baseDir = start.base ? join(jobDir, 'base') : undefined;
    if (baseDir) await race(download(ctx.artifacts, start.base!.files, baseDir, 'LoRA base model file'));
    log.info(`job ${jobId} attempt ${attempt}: rank ${rank}/${start.world} of ${layoutName(layout)} (replica ${coords.dp}, stage ${coords.pp} ` +
      `blocks [${firstLayer}, ${endLayer}), shard ${coords.tp})${resume ? `, resuming after step ${resume.step}` : ''}`);

    // 2. the worker
    worker = new TrainerWorker(ctx.backend);
    if (ctx.signal.aborted) worker.terminate();
    const ready = await race(worker.request({ type: 'init', spec, placement, dataDir, ...(resume ? { resume } : {}), ...(frozenDir ? { frozenDir } : {}), ...(baseDir ? { baseDir } : {}) }, 'ready'));
    const params = new Float32Array(ready.params), grads = new Float32Array(ready.grads);
    worker.serveTensorParallel(ready, tensor);
    const optimizerBytes = 2 * 4 * (ready.optimizerRange[1] - ready.optimizerRange[0]);
    log.info(`job ${jobId}: worker ready on ${ready.backend}, ${ready.paramCount} parameters here (optimizer state ${(optimizerBytes / 1e6).toFixed(2)} MB), ` +
      `starting at step ${ready.step + 1} of ${t.steps}`);

    const schedule = oneFOneB(coords.pp, layout.pipeline, microBatches);
    const w = worker;
    const stageCount = layout.pipeline;
    const reportsStage = coords.dp === 0 && coords.tp === 0; // one voice per stage in the world sums
    const countsLoss = !next && coords.tp === 0; // the last stage's first shard, in every replica

    // 3. the steps
    const observers = ctx.observers ?? [];
    const attemptTrace = (start.trace && parseTraceparent(start.trace)) || null; // all-zero ids: not traced
    const dataSucc = rankOf({ dp: (coords.dp + 1) % layout.data, pp: coords.pp, tp: coords.tp }, layout);
    const gradBytes = grads.byteLength;
    for (let s = step + 1; s <= t.steps; s++) {
      const t0 = performance.now();
      const startMs = epochMs();
      const phases: Phase[] = [];
      // Records how long `p` took as a phase of this step; the timeline is what metrics and traces are built from.
      const timed = async <T>(name: PhaseName, attrs: Record<string, string | number> | undefined, p: Promise<T>): Promise<T> => {
        const from = epochMs();
        try {
          return await race(p);
        } finally {
          phases.push({ name, startMs: from, endMs: epochMs(), ...(attrs ? { attrs } : {}) });
        }
      };
      const sending = (key: string, bytes: number, p: Promise<void>): Promise<void> => {
        const from = epochMs();
        return p.then(() => void phases.push({ name: 'send', startMs: from, endMs: epochMs(), attrs: { key, bytes } }));
      };
      // A traced job: rank 0 picks this step's span context and the world ring carries it to every rank.
      const stepTrace = attemptTrace ? await race(agreeStepTrace(world, attemptTrace)) : null;

      const begun = await timed('begin', undefined, w.request({ type: 'begin', step: s }, 'begun'));
      const sends: Array<Promise<void>> = [];
      let busyMs = 0, lossSum = 0, tokens = 0;
      for (const a of schedule) {
        if (a.op === 'F') {
          const key = `a.${s}.${a.mb}`;
          const acts = prev ? await timed('recv', { key }, prev.recv(key, recvMs)) : undefined;
          const r = await timed('fwd', { mb: a.mb }, w.request({ type: 'fwd', mb: a.mb, ...(acts ? { acts } : {}) }, 'fwdDone', acts ? [acts.buffer as ArrayBuffer] : []));
          busyMs += r.busyMs;
          if (r.out && next) sends.push(sending(key, r.out.byteLength, next.send(key, r.out)));
        } else {
          const key = `g.${s}.${a.mb}`;
          const gradOut = next ? await timed('recv', { key }, next.recv(key, recvMs)) : undefined;
          const r = await timed('bwd', { mb: a.mb }, w.request({ type: 'bwd', mb: a.mb, ...(gradOut ? { gradOut } : {}) }, 'bwdDone', gradOut ? [gradOut.buffer as ArrayBuffer] : []));
          busyMs += r.busyMs;
          if (r.loss !== undefined) {
            lossSum += r.loss;
            tokens += r.tokens;
          }
          if (r.gradIn && prev) sends.push(sending(`g.${s}.${a.mb}`, r.gradIn.byteLength, prev.send(`g.${s}.${a.mb}`, r.gradIn)));
        }
      }
      await race(Promise.all(sends));
      const pipelineMs = performance.now() - t0;

      const r0 = performance.now();
      let dataRingMs = 0;
      if (tied && ready.tiedRange) {
        const tiedGrads = grads.subarray(ready.tiedRange[0], ready.tiedRange[1]);
        await timed('allreduce', { ring: 'tied', op: 'allreduce', bytes: tiedGrads.byteLength }, tied.allReduce(tiedGrads));
      }
      if (layout.data > 1) {
        const d0 = performance.now();
        await timed('allreduce', { ring: 'data', op: zero ? 'reducescatter' : 'allreduce', bytes: gradBytes }, zero ? data.reduceScatter(grads).then(() => {}) : data.allReduce(grads));
        dataRingMs = performance.now() - d0;
      }
      const u0 = performance.now();
      const normed = await race(w.request({ type: 'norm' }, 'normed'));
      let updateMs = performance.now() - u0;
      // [Σ g², Σ loss, tokens, busy ms per stage…, pipeline ms per stage…]
      const sums = new Float64Array(3 + 2 * stageCount);
      sums[0] = normed.sumsq;
      if (countsLoss) {
        sums[1] = lossSum;
        sums[2] = tokens;
      }
      if (reportsStage) {
        sums[3 + coords.pp] = busyMs;
        sums[3 + stageCount + coords.pp] = pipelineMs;
      }
      const reduced = Float32Array.from(sums);
      await timed('allreduce', { ring: 'world', op: 'allreduce', bytes: reduced.byteLength }, world.allReduce(reduced));
      const gradNorm = Math.sqrt(reduced[0]!);
      const u1 = epochMs();
      const updated = await race(w.request({ type: 'update', gradNorm }, 'updated'));
      phases.push({ name: 'update', startMs: u1, endMs: epochMs() });
      updateMs += updated.updateMs;
      if (zero && layout.data > 1) {
        const g0 = performance.now();
        await timed('allreduce', { ring: 'data', op: 'allgather', bytes: params.byteLength }, data.allGather(params));
        dataRingMs += performance.now() - g0;
        await race(w.request({ type: 'upload' }, 'uploaded'));
      }
      step = s;
      const stepMs = performance.now() - t0;
      const allreduceMs = performance.now() - r0 - updated.updateMs;
      const loss = reduced[1]! / (layout.data * microBatches);
      const globalTokens = reduced[2]!;
      const stageBusyMs = Array.from(reduced.subarray(3, 3 + stageCount));
      const stagePipelineMs = Array.from(reduced.subarray(3 + stageCount, 3 + 2 * stageCount));
      if (!Number.isFinite(loss)) throw new JobFault(`step ${s}: the loss is ${loss}; lower training.lr or raise warmupSteps`);

      // This rank's own breakdown of the step (the job.progress figures above are the global ones).
      const ringMs = phases.filter((p) => p.name === 'allreduce').reduce((a, p) => a + (p.endMs - p.startMs), 0);
      const rankBubbleMs = stageCount > 1 ? Math.max(0, pipelineMs - busyMs) : 0;
      const rankComputeMs = busyMs + updateMs;
      const rankWaitMs = Math.max(0, stepMs - rankComputeMs - ringMs - rankBubbleMs);
      // ZeRO-1's reduce-scatter of the gradients plus all-gather of the parameters sends what one all-reduce does.
      const sentBytes = ringAllReduceSentBytes(gradBytes, layout.data);
      const stepEndMs = epochMs();

      // held-out evaluation: a forward-only pipeline
      let evalLoss: number | undefined;
      const evalNow = s === t.steps || (t.evalEvery > 0 && s % t.evalEvery === 0);
      if (evalNow) {
        const e0 = epochMs();
        const begunEval = await race(w.request({ type: 'evalBegin' }, 'evalBegun'));
        if (begunEval.skipped) log.warn(`job ${jobId}: no held-out evaluation: ${begunEval.skipped}`);
        let evalSum = 0;
        for (let i = 0; i < begunEval.microBatches; i++) {
          const acts = prev ? await race(prev.recv(`e.${s}.${i}`, recvMs)) : undefined;
          const r = await race(w.request({ type: 'evalFwd', mb: i, ...(acts ? { acts } : {}) }, 'evalDone', acts ? [acts.buffer as ArrayBuffer] : []));
          if (r.out && next) sends.push(next.send(`e.${s}.${i}`, r.out));
          if (r.loss !== undefined) evalSum += r.loss;
        }
        await race(Promise.all(sends));
        const ev = Float32Array.of(countsLoss ? evalSum : 0, countsLoss ? begunEval.microBatches : 0);
        await race(world.allReduce(ev));
        if (ev[1]! > 0) evalLoss = ev[0]! / ev[1]!;
        phases.push({ name: 'eval', startMs: e0, endMs: epochMs(), attrs: { microBatches: begunEval.microBatches } });
      }

      const tokensPerS = globalTokens / Math.max(stepMs / 1000, 1e-9);
      const window = Math.max(...stagePipelineMs);
      const bubble = window > 0 ? 1 - stageBusyMs.reduce((a, b) => a + b, 0) / (stageCount * window) : 0;
      log.info(`job ${jobId} step ${s}/${t.steps} loss ${loss.toFixed(4)}${evalLoss !== undefined ? ` eval ${evalLoss.toFixed(4)}` : ''} ` +
        `${Math.round(tokensPerS)} tok/s (${stepMs.toFixed(0)} ms: pipeline ${pipelineMs.toFixed(0)}, busy ${busyMs.toFixed(0)}, reduce ${allreduceMs.toFixed(0)}` +
        `${stageCount > 1 ? `, bubble ${(bubble * 100).toFixed(1)}% vs ${(bubbleTheory(stageCount, microBatches) * 100).toFixed(1)}% in theory` : ''})`);
      if (rank === 0) {
        ctx.send({
          type: 'job.progress', jobId, attempt, rank, step: s, loss, ...(evalLoss !== undefined ? { evalLoss } : {}), lr: begun.lr,
          tokensPerS, stepMs, computeMs: busyMs + updated.updateMs, allreduceMs,
          pipelineMs: window, stageBusyMs, bubble, optimizerBytes, paramCount: ready.paramCount,
        });
      }
      ctx.send({
        type: 'job.rank', jobId, attempt, rank, step: s, stepMs, computeMs: rankComputeMs, allreduceMs: ringMs, bubbleMs: rankBubbleMs, waitMs: rankWaitMs,
        ...(layout.data > 1 ? { link: { toRank: dataSucc, bytes: sentBytes, ms: dataRingMs } } : {}),
      });

      const checkpointNow = s === t.steps || (t.checkpointEvery > 0 && s % t.checkpointEvery === 0);
      const where = { shard, layout: layoutOfShard, coords, placement };
      if (checkpointNow && zero && layout.data > 1) {
        // ZeRO-1: each replica holds a range of the moments. Every replica exports a snapshot (params + whole-length
        // moments), the ranges are gathered, and rank 0 encodes and uploads its snapshot from memory.
        const c0 = epochMs();
        const snap = await race(w.request({ type: 'export' }, 'exported'));
        await race(data.allGather(snap.expAvg)); // each rank's range → the whole shard's moments
        await race(data.allGather(snap.expAvgSq));
        if (coords.dp === 0) {
          await race(checkpointing); // one upload at a time; its failure fails the job here
          checkpointing = saveAndUpload(ctx, start, spec, where, snap, stepTrace?.step);
          checkpointing.catch(() => {}); // awaited (and its error raised) before the next one and at the end
        }
        phases.push({ name: 'checkpoint', startMs: c0, endMs: epochMs(), attrs: { step: s } });
      } else if (checkpointNow && coords.dp === 0) {
        // Only data-parallel rank 0 saves. The worker writes the checkpoint to this job's folder straight from the
        // live buffers (no snapshot in memory: GPT-2-small's is 1.5 GB), then it uploads while training goes on.
        const c0 = epochMs();
        const dir = join(jobDir, 'checkpoints', checkpointDirName(s));
        await rm(dir, { recursive: true, force: true });
        await mkdir(dir, { recursive: true });
        const spilled = await race(w.request({ type: 'spill', dir, state: checkpointState(start, spec, where) }, 'spilled'));
        await race(checkpointing); // one upload at a time; its failure fails the job here
        checkpointing = uploadSpilled(ctx, start, where, spilled, dir, stepTrace?.step);
        checkpointing.catch(() => {});
        phases.push({ name: 'checkpoint', startMs: c0, endMs: epochMs(), attrs: { step: s } });
      }

      const report: StepReport = {
        jobId, attempt, rank, world: start.world, coords: { ...coords }, step: s, startMs, endMs: stepEndMs,
        stepMs, computeMs: rankComputeMs, allreduceMs: ringMs, bubbleMs: rankBubbleMs, waitMs: rankWaitMs,
        dataRing: layout.data > 1 ? { toRank: dataSucc, sentBytes, ms: dataRingMs, bufferBytes: gradBytes, size: layout.data } : null,
        ...(rank === 0 ? { global: { loss, ...(evalLoss !== undefined ? { evalLoss } : {}), tokensPerS, tokens: globalTokens, bubble, lr: begun.lr } } : {}),
        phases,
        ...(stepTrace ? { trace: stepTrace } : {}),
      };
      for (const o of observers) {
        try {
          o.onStep(report);
        } catch (err) {
          log.warn(`job ${jobId}: a step observer failed: ${errorText(err)}`);
        }
      }
    }

    // 4. the end: the coordinator registers the model from the final checkpoint's merged shards
    await race(checkpointing);
    finished = { type: 'job.finished', jobId, attempt, rank, ok: true, step };
    log.info(`job ${jobId}: finished ${step} steps`);
  } catch (err) {
    const error = ctx.signal.aborted ? abortError().message : errorText(err);
    log.warn(`job ${jobId}: failed at step ${step}: ${error}`);
    const fatal = !ctx.signal.aborted && err instanceof JobFault;
    finished = { type: 'job.finished', jobId, attempt, rank, ok: false, step, error, ...(fatal ? { fatal } : {}) };
  } finally {
    ctx.signal.removeEventListener('abort', abortListener);
    await worker?.terminate();
    await checkpointing.catch(() => {});
    if (!ctx.keepWorkDir) await rm(jobDir, { recursive: true, force: true }).catch(() => {});
  }
  ctx.send(finished);
  return finished;
}

/**
 * This step's span context, the same on every rank: rank 0 draws fresh ids and broadcasts them over the world
 * ring as 16-bit integers in float32s (exact, unlike raw bytes reinterpreted as floats, which a NaN could alter).
 */
async function agreeStepTrace(world: Ring, attempt: TraceParent): Promise<{ step: TraceParent; attemptParent: TraceParent }> {
  const words = new Float32Array(12); // 8 words of trace id, 4 of span id
  if (world.rank === 0) {
    const ids = randomBytes(24);
    for (let i = 0; i < 12; i++) words[i] = ids.readUInt16BE(2 * i);
  }
  if (world.size > 1) await world.broadcast(words, 0);
  const bytes = Buffer.alloc(24);
  for (let i = 0; i < 12; i++) bytes.writeUInt16BE(words[i]!, 2 * i);
  const hex = bytes.toString('hex');
  return { step: { traceId: hex.slice(0, 32), spanId: hex.slice(32), sampled: attempt.sampled }, attemptParent: attempt };
}

function reasonOf(reason: unknown): string {
  if (reason instanceof Error) return reason.message;
  return typeof reason === 'string' ? reason : 'aborted';
}

/** Fetches each file by sha256 into `dir` under its name (streamed to disk), checking the bytes against the name's address. */
async function download(store: ArtifactStore, files: Record<string, string>, dir: string, what: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [name, digest] of Object.entries(files)) {
    if (!SAFE_NAME.test(name)) throw new Error(`${what} name ${JSON.stringify(name)} is not a plain file name`);
    let actual: string;
    try {
      actual = await store.download(digest, join(dir, name));
    } catch (err) {
      throw new Error(`${what} ${name}: ${errorText(err)}`, { cause: err });
    }
    if (actual !== digest) throw new Error(`${what} ${name}: its bytes hash to ${actual}, not ${digest} (corrupted in the store or in transit)`);
  }
}

/**
 * Downloads a checkpoint's files into `<root>/step-NNNNNN`. The trainer worker reads and verifies them at init
 * (resume-checkpoint.ts: sha256 against the manifest, the step, the model, our shard), off the main thread.
 */
async function fetchResume(store: ArtifactStore, resume: NonNullable<JobStart['resume']>, root: string): Promise<ResumeFiles> {
  const dir = join(root, checkpointDirName(resume.step));
  await rm(dir, { recursive: true, force: true });
  if (!Object.hasOwn(resume.files, MANIFEST_FILE)) throw new Error(`resume checkpoint of step ${resume.step}: its files lack ${MANIFEST_FILE}`);
  await download(store, resume.files, dir, `resume checkpoint file`);
  return { dir, step: resume.step };
}

/** Named tensors (local shapes) of a flat shard buffer. */
function tensorsOf(flat: Float32Array, layout: ShardLayout): TensorMap {
  return Object.fromEntries(layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape, data: flat.subarray(s.offset, s.offset + s.size) }]));
}

/**
 * Data-parallel rank 0 of a ZeRO-1 stage shard: encodes the gathered snapshot as a shard checkpoint (files, manifest,
 * sha256 each) off the main thread, streams it straight to the coordinator's store and tells the coordinator
 * (checkpoint-upload.ts); a checkpoint counts only once the coordinator has recorded it. `snap`'s arrays are handed
 * over (detached here).
 */
async function saveAndUpload(
  ctx: JobContext,
  start: JobStart,
  spec: ResolvedJobSpec,
  where: { shard: ShardSpec; layout: ShardLayout; coords: Coords; placement: Placement },
  snap: Extract<FromWorker, { type: 'exported' }>,
  trace: TraceParent | undefined,
): Promise<void> {
  const t0 = performance.now();
  const startMs = epochMs();
  const { shard, layout, placement } = where;
  const buffers = [snap.params.buffer, snap.expAvg.buffer, snap.expAvgSq.buffer] as ArrayBuffer[];
  const encoded = await encodeCheckpointFiles(snap.step, {
    model: tensorsOf(snap.params, layout),
    optimizer: { step: snap.optimizerStep, expAvg: tensorsOf(snap.expAvg, layout), expAvgSq: tensorsOf(snap.expAvgSq, layout) },
    state: { step: snap.step, cursor: { shard: snap.cursor.shard, offset: snap.cursor.offset }, ...checkpointState(start, spec, where) },
  }, buffers);
  if (ctx.signal.aborted) return;
  const files = await uploadCheckpoint(ctx.artifacts, encoded);
  if (ctx.signal.aborted) return;
  checkpointUploaded(ctx, start, shard, snap.step, files, { startMs, ms: performance.now() - t0, bytes: encoded.bytes, trace });
}

/** state.json of a shard checkpoint, less the step and the data cursor (the trainer worker's). */
function checkpointState(start: JobStart, spec: ResolvedJobSpec, where: { shard: ShardSpec; placement: Placement }): Record<string, JsonValue> {
  return { spec: spec as never, shard: { ...where.shard }, layout: { ...where.placement.layout }, world: start.world, jobId: start.jobId, attempt: start.attempt };
}

/**
 * Uploads a checkpoint the trainer worker wrote to `dir` (a `spill`), streaming each file from disk, tells the
 * coordinator, and removes the folder whatever happens.
 */
async function uploadSpilled(
  ctx: JobContext, start: JobStart, where: { shard: ShardSpec }, spilled: Extract<FromWorker, { type: 'spilled' }>, dir: string, trace: TraceParent | undefined,
): Promise<void> {
  const t0 = performance.now();
  const startMs = epochMs();
  try {
    const entries = Object.entries(spilled.files);
    await Promise.all(entries.map(([, f]) => ctx.artifacts.uploadFile(f.path, f.sha256)));
    if (ctx.signal.aborted) return;
    const files = Object.fromEntries(entries.map(([name, f]) => [name, f.sha256]));
    const bytes = entries.reduce((n, [, f]) => n + f.bytes, 0);
    checkpointUploaded(ctx, start, where.shard, spilled.step, files, { startMs, ms: performance.now() - t0, bytes, trace });
  } finally {
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}

/** Observers, the coordinator (job.checkpoint) and the log hear of an uploaded checkpoint. */
function checkpointUploaded(
  ctx: JobContext, start: JobStart, shard: ShardSpec, step: number, files: Record<string, string>,
  how: { startMs: number; ms: number; bytes: number; trace: TraceParent | undefined },
): void {
  for (const o of ctx.observers ?? []) {
    try {
      o.onCheckpoint?.({ jobId: start.jobId, attempt: start.attempt, rank: start.rank, step, startMs: how.startMs, endMs: epochMs(), bytes: how.bytes, ...(how.trace ? { trace: how.trace } : {}) });
    } catch (err) {
      ctx.log.warn(`job ${start.jobId}: a checkpoint observer failed: ${errorText(err)}`);
    }
  }
  ctx.send({ type: 'job.checkpoint', jobId: start.jobId, attempt: start.attempt, step, files, shard: { stage: shard.stage, tp: shard.tpRank } });
  ctx.log.info(`job ${start.jobId}: checkpoint of step ${step} (stage ${shard.stage}, shard ${shard.tpRank}) uploaded (${how.ms.toFixed(0)} ms, ${(how.bytes / 1e6).toFixed(1)} MB)`);
}

type Reply<K extends FromWorker['type']> = Extract<FromWorker, { type: K }>;

/** The compute worker: one request at a time, plus the tensor-parallel all-reduces it asks for meanwhile. */
class TrainerWorker {
  readonly #worker: Worker;
  #pending: { expect: string; resolve(m: FromWorker): void; reject(e: Error): void } | null = null;
  #dead: Error | null = null;
  #exited: Promise<void>;
  #tp: { data: Float32Array; flag: Int32Array; ring: Ring } | null = null;
  #tpError: Error | null = null;

  readonly #backend: BackendChoice;

  constructor(backend: BackendChoice) {
    this.#backend = backend;
    prepareBackendEnv(backend);
    this.#worker = new Worker(new URL('../../common/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./trainer-worker.ts', import.meta.url).href, backend },
    });
    this.#exited = new Promise((resolve) => this.#worker.once('exit', () => resolve()));
    this.#worker.on('message', (m: FromWorker) => this.#onMessage(m));
    this.#worker.on('error', (err) => this.#fail(new Error(`trainer worker crashed: ${err.message}`)));
    this.#worker.on('exit', (code) => this.#fail(new Error(`trainer worker exited (code ${code})`)));
  }

  /** From now on, the worker's `tp` requests run on `ring` over the shared scratch buffer. */
  serveTensorParallel(ready: Ready, ring: Ring): void {
    this.#tp = { data: new Float32Array(ready.tpData), flag: new Int32Array(ready.tpFlag), ring };
  }

  request<K extends FromWorker['type']>(msg: ToWorker, expect: K, transfer: ArrayBuffer[] = []): Promise<Reply<K>> {
    if (this.#dead) return Promise.reject(this.#dead);
    if (this.#pending) return Promise.reject(new Error(`trainer worker is busy with a ${this.#pending.expect} request`));
    return new Promise<Reply<K>>((resolve, reject) => {
      this.#pending = { expect, resolve: resolve as (m: FromWorker) => void, reject };
      this.#worker.postMessage(msg, transfer);
    });
  }

  terminate(): Promise<void> {
    this.#fail(new Error('trainer worker stopped'));
    void terminateComputeWorker(this.#worker, this.#backend);
    return this.#exited;
  }

  #onMessage(m: FromWorker): void {
    if (m.type === 'tp') return this.#allReduceForWorker(m.elems);
    const p = this.#pending;
    if (!p) return;
    if (m.type === 'failed') return this.#settle(this.#tpError ?? new Error(m.error));
    if (m.type !== p.expect) return this.#settle(new Error(`the worker answered ${m.type} to a request for ${p.expect}`));
    this.#pending = null;
    p.resolve(m);
  }

  #allReduceForWorker(elems: number): void {
    const tp = this.#tp;
    const wake = (value: 1 | 2) => {
      if (!tp) return;
      Atomics.store(tp.flag, 0, value);
      Atomics.notify(tp.flag, 0);
    };
    if (!tp || elems > tp.data.length) {
      this.#settle(new Error(`the worker asked for a tensor-parallel all-reduce of ${elems} floats it cannot have`));
      return wake(2);
    }
    tp.ring.allReduce(tp.data.subarray(0, elems)).then(
      () => wake(1),
      (err: Error) => {
        this.#tpError = err; // the worker fails its request with a generic message; this is the one worth reporting
        this.#settle(err);
        wake(2);
      },
    );
  }

  #settle(err: Error): void {
    const p = this.#pending;
    this.#pending = null;
    p?.reject(err);
  }

  #fail(err: Error): void {
    this.#dead ??= err;
    this.#settle(this.#dead);
  }
}
