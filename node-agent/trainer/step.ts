/**
 * One training step on one rank, read top to bottom (the rank's runner, job-runner.ts, calls it once per step):
 *
 *   begin:    the worker reads this replica's batch and cuts it into m micro-batches
 *   pipeline: the 1F1B schedule (schedule.ts) — F(i): activations from the previous stage → worker fwd → to the
 *             next stage; B(i): gradient from the next stage → worker bwd → input gradient to the previous stage
 *             (inside fwd/bwd the worker asks for tensor-parallel all-reduces: worker-client.ts runs them)
 *   tied:     first and last stage sum their wte gradients (the head is tied to the embedding)
 *   data:     all-reduce the shard's gradient over the replicas (ZeRO-1: reduce-scatter, each rank keeps its range),
 *             on the wire in training.gradientWire (bf16/f16 halve the bytes; sums stay float32)
 *   world:    all-reduce [Σ squared gradient, Σ loss, tokens, per-stage busy and pipeline time] → the global norm
 *   update:   clip, AdamW (ZeRO-1: own range, then all-gather the parameters over 'data' and upload)
 *
 * DiLoCo (training.diloco; pipeline = tensor = 1, so a replica is one rank): an inner step is the same without 'data'
 * and 'world' — nothing crosses the network, not even the traced step's ids (derived from the attempt's, not
 * broadcast) — and the norm, clipping, loss and tokens are this replica's own (the loss reported is world rank 0's;
 * tokens are its own × the replica count). After a round's last step (every innerSteps steps, and the job's last):
 *
 *   outer:    Δ = outer weights − own weights (worker), all-reduced over 'data' in training.gradientWire, and the
 *             outer momentum step on every replica alike (worker; model/diloco.ts): all continue from the same weights
 *
 * and `evaluate`, the forward-only pipeline over the held-out batches. Every rank runs the same collectives in the
 * same order on each ring (the schedule depends only on the step, the spec and the layout), which the rings
 * require. Each wait races the job's stop (`race`), so a stopped job never waits out a timeout here.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from '../../common/log.ts';
import type { Coords, ParallelLayout } from '../../protocol/layout.ts';
import type { Ring } from '../collectives/ring.ts';
import type { Mailbox } from '../collectives/mailbox.ts';
import { epochMs, ringAllReduceSentBytes, type Phase, type PhaseName, type TraceParent } from '../../common/step-report.ts';
import type { GradientWire } from '../../protocol/job-spec.ts';
import { bytesPerElement } from '../collectives/wire.ts';
import { createHash } from 'node:crypto';
import type { Ready } from './messages.ts';
import type { PipeAction } from './schedule.ts';
import type { TrainerWorker } from './worker-client.ts';

/** This rank's rings and pipeline links (protocol/layout.ts names them). */
export interface JobLinks {
  world: Ring; // every rank
  data: Ring; // the replicas of our stage shard
  tensor: Ring; // the tensor-parallel shards of our stage
  tied: Ring | null; // first ↔ last stage of our replica (p > 1, on those two stages only)
  prev: Mailbox | null; // to and from the previous stage
  next: Mailbox | null; // to and from the next stage
}

/** Waits for `p` unless the job is stopped first, then rejects with the stop's reason (job-runner.ts). */
export type Race = <T>(p: Promise<T>) => Promise<T>;

/** What every step of an attempt on this rank uses. */
export interface RankStep {
  jobId: string;
  worker: TrainerWorker;
  links: JobLinks;
  ready: Ready; // the worker's answer to init: tiedRange, paramCount
  params: Float32Array; // the shard's parameters, shared with the worker
  grads: Float32Array; // its gradient, shared with the worker
  layout: ParallelLayout;
  coords: Coords;
  microBatches: number; // per replica per step
  zero: 0 | 1;
  schedule: readonly PipeAction[]; // this stage's 1F1B order
  recvMs: number; // how long a pipeline receive may wait
  attemptTrace: TraceParent | null; // the attempt's span context, when the job is traced
  gradientWire: GradientWire; // training.gradientWire: how the gradient crosses the data ring (collectives/wire.ts)
  diloco: DilocoRun | null; // training.diloco; null: plain data parallelism
  log: Logger;
  race: Race;
}

/** How a DiLoCo job's rounds fall: a synchronisation after every `innerSteps`-th step and after `lastStep`. */
export interface DilocoRun {
  innerSteps: number;
  lastStep: number;
  roundStartMs: number; // performance.now() when this rank's current round began
}

/**
 * The least a synchronisation waits for slower replicas before it fails. Replicas drift apart over a round (a 5%
 * slower one is 25 s behind after 500 one-second steps) while the ring's idle timeout is sized for a step's spread:
 * the pseudo-gradient all-reduce waits up to twice the round so far, and at least this.
 */
export const SYNC_WAIT_MIN_MS = 60_000;

/** Whether step `s` ends a DiLoCo round. */
export const endsRound = (d: DilocoRun, s: number): boolean => s % d.innerSteps === 0 || s === d.lastStep;

/** What one step did: the global figures every rank agrees on, and this rank's own breakdown. */
export interface StepFigures {
  lr: number;
  loss: number; // mean over replicas and micro-batches
  tokens: number; // trained on in this step, all replicas
  tokensPerS: number;
  startMs: number; // epoch ms
  endMs: number; // epoch ms, before evaluation and checkpoint
  stepMs: number;
  pipelineMs: number; // this rank's pipeline section (begin to the last send)
  busyMs: number; // this rank's forward and backward compute
  workerUpdateMs: number; // the worker's update (clip + AdamW)
  allreduceMs: number; // after the pipeline, less the worker's update: the reductions and the norm
  stageBusyMs: number[]; // per stage (replica 0, shard 0)
  window: number; // the slowest stage's pipeline section, ms
  bubble: number; // share of the window the stages were idle
  rank: { computeMs: number; ringMs: number; bubbleMs: number; waitMs: number; dataRingMs: number; sentBytes: number };
  outer: OuterSync | null; // DiLoCo: the synchronisation this step ended with, if it ended a round
  phases: Phase[];
  trace: { step: TraceParent; attemptParent: TraceParent } | null;
}

/** Runs step `s` on this rank. */
export async function runStep(r: RankStep, s: number): Promise<StepFigures> {
  const { worker: w, links: { world, tied }, layout, race } = r;
  const stageCount = layout.pipeline;
  const t0 = performance.now();
  const startMs = epochMs();
  const timeline = new Timeline(race);
  // A traced job: rank 0 picks this step's span context and the world ring carries it to every rank (DiLoCo: each
  // rank derives the same one from the attempt's, with no message).
  const alone = r.diloco !== null;
  const trace = !r.attemptTrace ? null : alone ? derivedStepTrace(r.attemptTrace, s) : await race(agreeStepTrace(world, r.attemptTrace));

  const begun = await timeline.timed('begin', undefined, w.request({ type: 'begin', step: s }, 'begun'));
  const pipe = await runPipeline(r, s, timeline);
  const pipelineMs = performance.now() - t0;

  // the gradient: summed over the tied copies, then over the replicas
  const r0 = performance.now();
  let dataRingMs = 0;
  if (tied && r.ready.tiedRange) {
    const tiedGrads = r.grads.subarray(r.ready.tiedRange[0], r.ready.tiedRange[1]);
    await timeline.timed('allreduce', { ring: 'tied', op: 'allreduce', bytes: tiedGrads.byteLength }, tied.allReduce(tiedGrads));
  }
  if (layout.data > 1 && !alone) {
    const d0 = performance.now();
    const { data } = r.links;
    const wire = { wire: r.gradientWire };
    await timeline.timed('allreduce', { ring: 'data', op: r.zero ? 'reducescatter' : 'allreduce', bytes: r.grads.byteLength, wire: r.gradientWire },
      r.zero ? data.reduceScatter(r.grads, wire).then(() => {}) : data.allReduce(r.grads, wire));
    dataRingMs = performance.now() - d0;
  }

  // the global norm, loss, tokens and stage times, in one world all-reduce
  const u0 = performance.now();
  const normed = await race(w.request({ type: 'norm' }, 'normed'));
  let updateMs = performance.now() - u0;
  const mine = { sumsq: normed.sumsq, ...pipe, pipelineMs };
  const reduced = alone ? ownSums(r, mine) : await sumOverWorld(r, timeline, mine);
  const gradNorm = Math.sqrt(reduced[0]!);

  // the update
  const u1 = epochMs();
  const updated = await race(w.request({ type: 'update', gradNorm }, 'updated'));
  timeline.phases.push({ name: 'update', startMs: u1, endMs: epochMs() });
  updateMs += updated.updateMs;
  if (r.zero && layout.data > 1) {
    const g0 = performance.now();
    // Always float32, whatever gradientWire: these are the weights every replica trains on. Rounded to 16 bits,
    // the replicas would hold other weights than the owner's float32 master copy, and an AdamW step (≈ lr, often
    // under bf16's 0.4% resolution of the weight) would vanish from their copies.
    await timeline.timed('allreduce', { ring: 'data', op: 'allgather', bytes: r.params.byteLength }, r.links.data.allGather(r.params));
    dataRingMs += performance.now() - g0;
    await race(w.request({ type: 'upload' }, 'uploaded'));
  }
  // DiLoCo: the end of a round
  const outer = r.diloco && endsRound(r.diloco, s) ? await syncReplicas(r, timeline, r.gradientWire) : null;
  if (outer) {
    dataRingMs += outer.ms;
    updateMs += outer.workerMs;
  }

  // the figures
  const stepMs = performance.now() - t0;
  const allreduceMs = performance.now() - r0 - updated.updateMs - (outer?.workerMs ?? 0);
  const loss = reduced[1]! / (layout.data * r.microBatches);
  const tokens = reduced[2]!;
  const stageBusyMs = Array.from(reduced.subarray(3, 3 + stageCount));
  const stagePipelineMs = Array.from(reduced.subarray(3 + stageCount, 3 + 2 * stageCount));
  // This rank's own breakdown of the step (the job.progress figures are the global ones).
  const ringMs = timeline.phases.filter((p) => p.name === 'allreduce').reduce((a, p) => a + (p.endMs - p.startMs), 0);
  const bubbleMs = stageCount > 1 ? Math.max(0, pipelineMs - pipe.busyMs) : 0;
  const computeMs = pipe.busyMs + updateMs;
  const waitMs = Math.max(0, stepMs - computeMs - ringMs - bubbleMs);
  // DiLoCo sends only at the end of a round.
  const sentBytes = alone ? (outer?.sentBytes ?? 0) : dataRingSentBytes(r);
  const endMs = epochMs();
  const window = Math.max(...stagePipelineMs);
  return {
    lr: begun.lr, loss, tokens, tokensPerS: tokens / Math.max(stepMs / 1000, 1e-9), startMs, endMs, stepMs, pipelineMs,
    busyMs: pipe.busyMs, workerUpdateMs: updated.updateMs, allreduceMs, stageBusyMs, window,
    bubble: window > 0 ? 1 - stageBusyMs.reduce((a, b) => a + b, 0) / (stageCount * window) : 0,
    rank: { computeMs, ringMs, bubbleMs, waitMs, dataRingMs, sentBytes },
    outer,
    phases: timeline.phases,
    trace,
  };
}

/**
 * What this rank sends its successor on the data ring in a step, on the wire: the gradient all-reduce in
 * gradientWire; with ZeRO-1, half of that (the reduce-scatter) plus a float32 all-gather of the parameters.
 */
function dataRingSentBytes(r: RankStep): number {
  const gradBytes = r.grads.length * bytesPerElement(r.gradientWire);
  const n = r.layout.data;
  return r.zero ? (ringAllReduceSentBytes(gradBytes, n) + ringAllReduceSentBytes(r.params.byteLength, n)) / 2 : ringAllReduceSentBytes(gradBytes, n);
}

/** What this rank's pipeline section did: compute time, and on the loss-counting ranks the loss sum and tokens. */
interface PipelineSums {
  busyMs: number;
  lossSum: number;
  tokens: number;
}

/** Forwards and backwards over this step's micro-batches in the 1F1B order, to and from the neighbouring stages. */
async function runPipeline(r: RankStep, s: number, timeline: Timeline): Promise<PipelineSums> {
  const { worker: w, links: { prev, next }, recvMs } = r;
  const sends: Array<Promise<void>> = [];
  let busyMs = 0, lossSum = 0, tokens = 0;
  for (const a of r.schedule) {
    if (a.op === 'F') {
      const key = `a.${s}.${a.mb}`;
      const acts = prev ? await timeline.timed('recv', { key }, prev.recv(key, recvMs)) : undefined;
      const f = await timeline.timed('fwd', { mb: a.mb }, w.request({ type: 'fwd', mb: a.mb, ...(acts ? { acts } : {}) }, 'fwdDone', acts ? [acts.buffer as ArrayBuffer] : []));
      busyMs += f.busyMs;
      if (f.out && next) sends.push(timeline.sending(key, f.out.byteLength, next.send(key, f.out)));
    } else {
      const key = `g.${s}.${a.mb}`;
      const gradOut = next ? await timeline.timed('recv', { key }, next.recv(key, recvMs)) : undefined;
      const b = await timeline.timed('bwd', { mb: a.mb }, w.request({ type: 'bwd', mb: a.mb, ...(gradOut ? { gradOut } : {}) }, 'bwdDone', gradOut ? [gradOut.buffer as ArrayBuffer] : []));
      busyMs += b.busyMs;
      if (b.loss !== undefined) {
        lossSum += b.loss;
        tokens += b.tokens;
      }
      if (b.gradIn && prev) sends.push(timeline.sending(key, b.gradIn.byteLength, prev.send(key, b.gradIn)));
    }
  }
  await r.race(Promise.all(sends));
  return { busyMs, lossSum, tokens };
}

/**
 * All-reduces over every rank: [Σ g², Σ loss, tokens, busy ms per stage…, pipeline ms per stage…]. Each figure is
 * counted once: the loss by the last stage's first shard of each replica, the stage times by replica 0's shard 0.
 */
async function sumOverWorld(r: RankStep, timeline: Timeline, mine: PipelineSums & { sumsq: number; pipelineMs: number }): Promise<Float32Array> {
  const stageCount = r.layout.pipeline;
  const countsLoss = countsLossOf(r);
  const reportsStage = r.coords.dp === 0 && r.coords.tp === 0; // one voice per stage in the world sums
  const sums = new Float64Array(3 + 2 * stageCount);
  sums[0] = mine.sumsq;
  if (countsLoss) {
    sums[1] = mine.lossSum;
    sums[2] = mine.tokens;
  }
  if (reportsStage) {
    sums[3 + r.coords.pp] = mine.busyMs;
    sums[3 + stageCount + r.coords.pp] = mine.pipelineMs;
  }
  const reduced = Float32Array.from(sums);
  await timeline.timed('allreduce', { ring: 'world', op: 'allreduce', bytes: reduced.byteLength }, r.links.world.allReduce(reduced));
  return reduced;
}

/**
 * A DiLoCo inner step's figures in sumOverWorld's layout, from this rank alone: its own Σ g² (the norm of its own
 * gradient) and stage times, and its loss and tokens counted once per replica, as if every replica had its figures.
 */
function ownSums(r: RankStep, mine: PipelineSums & { sumsq: number; pipelineMs: number }): Float32Array {
  const d = r.layout.data;
  return Float32Array.of(mine.sumsq, mine.lossSum * d, mine.tokens * d, mine.busyMs, mine.pipelineMs);
}

/** What a DiLoCo synchronisation did: the outer steps so far, the pseudo-gradient all-reduce's time and bytes sent. */
export interface OuterSync {
  outerSteps: number;
  checksum: number; // of the new outer weights: the same on every replica (model/diloco.ts weightsChecksum)
  ms: number; // the all-reduce of Δ over the data ring, waiting for slower replicas included
  sentBytes: number; // what this rank sent its successor in it
  bufferBytes: number; // Δ's bytes on the wire
  workerMs: number; // Δ and the outer step, in the worker
}

/**
 * DiLoCo's synchronisation (model/diloco.ts): the worker writes Δ = outer weights − own weights into the gradient
 * buffer, the data ring all-reduces it in `wire` (every rank ends with the same bits), and each worker takes the same
 * outer step with it and continues from the new outer weights.
 */
async function syncReplicas(r: RankStep, timeline: Timeline, wire: GradientWire): Promise<OuterSync> {
  const { worker: w, layout, race } = r;
  const u0 = epochMs();
  const delta = await race(w.request({ type: 'pseudoGrad' }, 'pseudoGradDone'));
  timeline.phases.push({ name: 'update', startMs: u0, endMs: epochMs(), attrs: { op: 'pseudoGrad' } });
  const bufferBytes = r.grads.length * bytesPerElement(wire);
  let ms = 0;
  if (layout.data > 1) {
    const d0 = performance.now();
    const idleTimeoutMs = Math.max(SYNC_WAIT_MIN_MS, 2 * (d0 - r.diloco!.roundStartMs));
    await timeline.timed('allreduce', { ring: 'data', op: 'outer', bytes: r.grads.byteLength, wire }, r.links.data.allReduce(r.grads, { wire, idleTimeoutMs }));
    ms = performance.now() - d0;
  }
  const u1 = epochMs();
  const stepped = await race(w.request({ type: 'outerStep', replicas: layout.data }, 'outerStepped'));
  timeline.phases.push({ name: 'update', startMs: u1, endMs: epochMs(), attrs: { op: 'outer' } });
  r.diloco!.roundStartMs = performance.now();
  return { outerSteps: stepped.outerSteps, checksum: stepped.checksum, ms, sentBytes: ringAllReduceSentBytes(bufferBytes, layout.data), bufferBytes, workerMs: delta.ms + stepped.ms };
}

/** Whether this rank's loss goes into the world sums: the last stage's first shard, in every replica. */
const countsLossOf = (r: RankStep): boolean => !r.links.next && r.coords.tp === 0;

/** The held-out loss after step `s` (a forward-only pipeline; the same on every rank), and the phase it took. */
export async function evaluate(r: RankStep, s: number): Promise<{ evalLoss: number | undefined; phase: Phase }> {
  const { worker: w, links: { prev, next, world }, race } = r;
  const countsLoss = countsLossOf(r);
  const e0 = epochMs();
  const begun = await race(w.request({ type: 'evalBegin' }, 'evalBegun'));
  if (begun.skipped) r.log.warn(`job ${r.jobId}: no held-out evaluation: ${begun.skipped}`);
  const sends: Array<Promise<void>> = [];
  let evalSum = 0;
  for (let i = 0; i < begun.microBatches; i++) {
    const acts = prev ? await race(prev.recv(`e.${s}.${i}`, r.recvMs)) : undefined;
    const e = await race(w.request({ type: 'evalFwd', mb: i, ...(acts ? { acts } : {}) }, 'evalDone', acts ? [acts.buffer as ArrayBuffer] : []));
    if (e.out && next) sends.push(next.send(`e.${s}.${i}`, e.out));
    if (e.loss !== undefined) evalSum += e.loss;
  }
  await race(Promise.all(sends));
  const ev = Float32Array.of(countsLoss ? evalSum : 0, countsLoss ? begun.microBatches : 0);
  await race(world.allReduce(ev));
  const evalLoss = ev[1]! > 0 ? ev[0]! / ev[1]! : undefined;
  return { evalLoss, phase: { name: 'eval', startMs: e0, endMs: epochMs(), attrs: { microBatches: begun.microBatches } } };
}

/** A step's phases as they happen: the timeline that metrics and traces are built from (common/step-report.ts). */
class Timeline {
  readonly phases: Phase[] = [];
  readonly #race: Race;

  constructor(race: Race) {
    this.#race = race;
  }

  /** Waits for `p` (racing the stop) and records how long it took as a phase of this step. */
  async timed<T>(name: PhaseName, attrs: Record<string, string | number> | undefined, p: Promise<T>): Promise<T> {
    const from = epochMs();
    try {
      return await this.#race(p);
    } finally {
      this.phases.push({ name, startMs: from, endMs: epochMs(), ...(attrs ? { attrs } : {}) });
    }
  }

  /** A pipeline send, recorded when it completes (sends overlap the schedule). */
  sending(key: string, bytes: number, p: Promise<void>): Promise<void> {
    const from = epochMs();
    return p.then(() => void this.phases.push({ name: 'send', startMs: from, endMs: epochMs(), attrs: { key, bytes } }));
  }
}

/**
 * This step's span context, the same on every rank with no message: ids hashed from the attempt's trace and the step
 * (DiLoCo's inner steps send nothing; a step is run once per attempt, so the ids are fresh).
 */
function derivedStepTrace(attempt: TraceParent, s: number): { step: TraceParent; attemptParent: TraceParent } {
  const hex = createHash('sha256').update(`${attempt.traceId}.${attempt.spanId}.step.${s}`).digest('hex');
  return { step: { traceId: hex.slice(0, 32), spanId: hex.slice(32, 48), sampled: attempt.sampled }, attemptParent: attempt };
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
