/**
 * The compute worker's side of a training step (worker thread; trainer-worker.ts imports this once the compute
 * backend is loaded): one handler per request of messages.ts, each working on the job `init` built (worker-job.ts).
 *
 *   begin {step}   read this replica's rows of the global batch, cut them into micro-batches, zero the gradient
 *   fwd {mb}       this stage's forward of a micro-batch (the last stage defers it to the backward)
 *   bwd {mb}       its backward: into the shared gradient; the last stage computes the loss (objectives.ts)
 *   norm           average the reduced gradient over the replicas; Σ g² of what this rank counts in the norm
 *                  (DiLoCo: the replica's own gradient, unreduced; Σ g² of all of it)
 *   update         clip and AdamW over this rank's range, then the model's weights
 *   pseudoGrad     DiLoCo: Δ = outer weights − own weights, into the gradient buffer for main to all-reduce
 *   outerStep      DiLoCo: the outer step with the summed Δ; the outer weights become this replica's
 *   evalBegin/Fwd  the held-out batches through the same stages, forward only
 *
 * Handlers throw AgentErrors; trainer-worker.ts answers `failed` with their code, and main re-creates them.
 */
import * as tf from '@tensorflow/tfjs';
import type { TransferListItem } from 'node:worker_threads';
import { lrAt } from '../../model/optim.ts';
import { outerStep as applyOuterStep, pseudoGradient, weightsChecksum } from '../../model/diloco.ts';
import { tokenBatch } from '../../model/train-step.ts';
import { TokenShardReader } from '../../model/token-shard-reader.ts';
import { ExampleReader } from '../../model/examples.ts';
import { rowLogprobs, type Objective } from '../../model/objectives.ts';
import { copyOf, takeValues } from '../../model/tensor-values.ts';
import { AgentError } from '../errors.ts';
import type { FromWorker } from './messages.ts';
import type { Job, TokenBatch } from './worker-job.ts';

/** Splits this replica's rows of a global batch (and their target weights, with examples) into micro-batches of `rows` rows. */
function microBatchesOf(tokens: Int32Array, count: number, rows: number, seqLen: number, weights?: Float32Array): TokenBatch[] {
  const row = seqLen + 1;
  return Array.from({ length: count }, (_, i) => ({
    ...tokenBatch(tokens.subarray(i * rows * row, (i + 1) * rows * row), rows, seqLen),
    ...(weights ? { weights: weights.subarray(i * rows * seqLen, (i + 1) * rows * seqLen) } : {}),
  }));
}

/**
 * What the last stage optimises for micro-batch `mb` (model/objectives.ts). The frozen model's forward runs here,
 * without a tape: dpo needs the reference's log-probability of each row, distill the teacher's logits.
 */
async function objectiveFor(j: Job, mb: TokenBatch): Promise<Objective> {
  const weights = mb.weights;
  const { kind } = j.spec;
  if (kind !== 'dpo' && kind !== 'distill') return { kind: 'lm', ...(weights ? { weights } : {}) };
  const frozen = j.frozen!;
  const B = mb.batch, T = mb.seq, V = frozen.config.vocabSize;
  const logits = tf.tidy(() => frozen.forward(tf.tensor2d(mb.ids, [B, T], 'int32')).reshape([B * T, V]) as ReturnType<typeof tf.tensor2d>);
  try {
    if (kind === 'dpo') {
      if (!weights) throw new AgentError('AGT_ERR_JOB_INPUT', 'dpo needs example data (chosen/rejected pairs)');
      return { kind: 'dpo', weights, refLogp: await takeValues(rowLogprobs(logits, mb.targets, weights, B, T)), beta: j.spec.dpo!.beta, rpoAlpha: j.spec.dpo!.rpoAlpha ?? 0 };
    }
    const { temperature, alpha } = j.spec.distill!;
    return { kind: 'distill', teacherLogits: await copyOf(logits), temperature, alpha, ...(weights ? { weights } : {}) };
  } finally {
    logits.dispose();
  }
}

export function begin(j: Job, n: number): FromWorker {
  if (n !== j.step + 1) throw new AgentError('AGT_ERR_TRAINER', `asked for step ${n} after step ${j.step}`);
  const t = j.spec.training;
  const batch = j.train.next(); // every stage reads it, so every stage's cursor moves alike
  j.micro = microBatchesOf(batch.tokens, j.placement.microBatches, j.rows, t.seqLen, 'weights' in batch ? batch.weights : undefined);
  for (const mb of j.micro) checkIds(mb, j.spec.model.vocabSize);
  j.inputs.clear();
  j.backwards = 0;
  j.model.discardGrads();
  j.grads.fill(0); // j.step becomes n when the update is applied
  return { type: 'begun', lr: lrAt(n - 1, { maxLr: t.lr, minLr: t.minLr, warmupSteps: t.warmupSteps, decaySteps: t.steps }) };
}

function checkIds(mb: TokenBatch, vocabSize: number): void {
  // an id outside the vocabulary would one-hot to a zero row and silently train on nothing
  for (const arr of [mb.ids, mb.targets]) {
    for (let i = 0; i < arr.length; i++) if (!(arr[i]! >= 0 && arr[i]! < vocabSize)) throw new AgentError('AGT_ERR_JOB_INPUT', `token ${arr[i]} is outside the vocabulary [0, ${vocabSize})`);
  }
}

function stageInput(j: Job, mb: TokenBatch, acts: Float32Array | undefined) {
  if (j.model.hasEmbed) return { ids: mb.ids };
  if (!acts) throw new AgentError('AGT_ERR_TRAINER', `stage ${j.coords.pp} needs the previous stage's activations`);
  return { acts };
}

export async function forward(j: Job, i: number, acts?: Float32Array): Promise<[FromWorker, TransferListItem[]]> {
  const mb = j.micro[i];
  if (!mb) throw new AgentError('AGT_ERR_TRAINER', `no micro-batch ${i} in this step`);
  const t0 = performance.now();
  const input = stageInput(j, mb, acts);
  if (acts) j.inputs.set(i, acts);
  if (j.model.hasHead) return [{ type: 'fwdDone', busyMs: performance.now() - t0 }, []]; // the backward does it all
  const out = await j.model.forward(input, mb.batch, mb.seq, dropoutSeed(j, i));
  return [{ type: 'fwdDone', out, busyMs: performance.now() - t0 }, [out.buffer as ArrayBuffer]];
}

export async function backward(j: Job, i: number, gradOut?: Float32Array): Promise<[FromWorker, TransferListItem[]]> {
  const mb = j.micro[i];
  if (!mb) throw new AgentError('AGT_ERR_TRAINER', `no micro-batch ${i} in this step`);
  const t0 = performance.now();
  const input = stageInput(j, mb, j.inputs.get(i));
  j.inputs.delete(i);
  if (!j.model.hasHead && !gradOut) throw new AgentError('AGT_ERR_TRAINER', `stage ${j.coords.pp} needs the next stage's gradient`);
  const upstream = j.model.hasHead ? { targets: mb.targets, scale: 1 / j.placement.microBatches, objective: await objectiveFor(j, mb) } : { gradOut: gradOut! };
  // The gradients go into j.grads by the end of the step's last micro-batch: main all-reduces them next.
  const last = ++j.backwards === j.micro.length;
  const r = await j.model.backward(input, mb.batch, mb.seq, upstream, j.grads, dropoutSeed(j, i), { flush: last });
  const reply: FromWorker = { type: 'bwdDone', tokens: mb.batch * mb.seq, busyMs: performance.now() - t0, ...r };
  return [reply, r.gradIn ? [r.gradIn.buffer as ArrayBuffer] : []];
}

/** Adapter dropout's seed for micro-batch `i` of this step: one per replica, equal across a stage's TP ranks and its two passes. */
function dropoutSeed(j: Job, i: number): number {
  return ((j.step + 1) * 4099 + i * 31 + j.coords.dp) % 2 ** 31;
}

/**
 * After main summed the gradient over the data-parallel ranks (all of it, or with ZeRO-1 only our range): divide
 * by their number, then sum the squares this rank is responsible for in the global norm — each parameter element
 * exactly once over the whole job: tensor-parallel replicas and the tied head copy are not counted
 * (countsForNorm), and of the data-parallel replicas only rank 0 counts, or with ZeRO-1 each rank its range.
 */
export function norm(j: Job): FromWorker {
  // A DiLoCo inner step: main reduced nothing, the gradient is this replica's own and all of it counts.
  const alone = j.outer !== null;
  const d = alone ? 1 : j.placement.layout.data;
  const [lo, hi] = j.range;
  const g = j.grads;
  if (d > 1) for (let i = lo; i < hi; i++) g[i] = g[i]! / d;
  // A replicated LoRA factor's local gradient is one rank's term of a sum over the TP group (lora.ts
  // LORA_TP_RULES): sum it, in the same order on every rank of the group (their ranges are equal).
  for (const [offset, size] of j.partialSums) {
    const a = Math.max(lo, offset), b = Math.min(hi, offset + size);
    for (let x = a; x < b; x += j.tp.chunk) j.tp.allReduce(g.subarray(x, Math.min(b, x + j.tp.chunk)));
  }
  let sumsq = 0;
  if (j.placement.zero || j.coords.dp === 0 || alone) {
    for (const s of j.model.layout.specs) {
      if (!s.countsForNorm) continue;
      const a = Math.max(lo, s.offset), b = Math.min(hi, s.offset + s.size);
      for (let i = a; i < b; i++) sumsq += g[i]! * g[i]!;
    }
  }
  return { type: 'normed', sumsq };
}

export function update(j: Job, gradNorm: number): FromWorker {
  const t0 = performance.now();
  const t = j.spec.training;
  const [lo, hi] = j.range;
  if (t.gradClip > 0) {
    const coeff = t.gradClip / (gradNorm + 1e-6); // torch.nn.utils.clip_grad_norm_, as optim.ts clipGradNorm
    if (coeff < 1) for (let i = lo; i < hi; i++) j.grads[i] = j.grads[i]! * coeff;
  }
  const lr = lrAt(j.step, { maxLr: t.lr, minLr: t.minLr, warmupSteps: t.warmupSteps, decaySteps: t.steps });
  j.optimizer.update(j.params, j.grads, lr);
  j.step++;
  if (!j.placement.zero || j.placement.layout.data === 1) j.model.writeParams(j.params);
  return { type: 'updated', updateMs: performance.now() - t0 };
}

/** DiLoCo, after a round's last inner update: Δ = θ_outer − θ into the gradient buffer, which main all-reduces next. */
export function pseudoGrad(j: Job): FromWorker {
  const t0 = performance.now();
  const outer = needOuter(j);
  pseudoGradient(outer.weights, j.params, j.grads);
  return { type: 'pseudoGradDone', ms: performance.now() - t0 };
}

/**
 * DiLoCo, once main summed Δ over the `replicas`: the outer step (model/diloco.ts), and every replica continues from
 * the new outer weights. Inner AdamW moments stay as they are (per replica, as in the paper).
 */
export function outerStep(j: Job, replicas: number): FromWorker {
  const t0 = performance.now();
  const outer = needOuter(j);
  applyOuterStep(outer.weights, outer.momentum, j.grads, replicas, outer.settings);
  j.params.set(outer.weights);
  j.model.writeParams(j.params);
  outer.steps++;
  return { type: 'outerStepped', ms: performance.now() - t0, outerSteps: outer.steps, checksum: weightsChecksum(outer.weights) };
}

function needOuter(j: Job): NonNullable<Job['outer']> {
  if (!j.outer) throw new AgentError('AGT_ERR_TRAINER', 'an outer step was asked of a job without training.diloco');
  return j.outer;
}

export function evalBegin(j: Job): FromWorker {
  const t = j.spec.training;
  if (j.heldOut === null) {
    try {
      const options = {
        split: 'heldOut', batchSize: t.batchSize / j.placement.layout.data, seqLen: t.seqLen, rank: j.coords.dp, worldSize: j.placement.layout.data,
        tokenizerSha256: j.tokenizerSha256,
      } as const;
      j.heldOut = j.examples ? new ExampleReader(j.dataDir, options) : new TokenShardReader(j.dataDir, options);
    } catch (err) {
      // Too small a held-out split for one global batch: the same on every rank, so every rank skips alike
      // instead of failing a finished training.
      if ((err as { code?: string }).code === 'MDL_ERR_BATCH') return { type: 'evalBegun', microBatches: 0, skipped: (err as Error).message };
      throw err;
    }
  }
  let cursor = { shard: 0, offset: 0 }; // every evaluation sees the same held-out data
  j.evalMicro = [];
  for (let b = 0; b < t.evalBatches; b++) {
    const batch = j.heldOut.batchAt(cursor);
    cursor = batch.next;
    j.evalMicro.push(...microBatchesOf(batch.tokens, j.placement.microBatches, j.rows, t.seqLen, 'weights' in batch ? batch.weights : undefined));
  }
  return { type: 'evalBegun', microBatches: j.evalMicro.length };
}

export async function evalForward(j: Job, i: number, acts?: Float32Array): Promise<[FromWorker, TransferListItem[]]> {
  const mb = j.evalMicro[i];
  if (!mb) throw new AgentError('AGT_ERR_TRAINER', `no held-out micro-batch ${i}`);
  const input = stageInput(j, mb, acts);
  if (j.model.hasHead) return [{ type: 'evalDone', loss: await j.model.loss(input, mb.batch, mb.seq, mb.targets, await objectiveFor(j, mb)) }, []];
  const out = await j.model.forward(input, mb.batch, mb.seq);
  return [{ type: 'evalDone', out }, [out.buffer as ArrayBuffer]];
}
