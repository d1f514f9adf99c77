/**
 * One optimisation step with gradient accumulation, read top to bottom like nanoGPT's training loop:
 * micro-batch forward/backward → accumulate one flat gradient → all-reduce hook → average over ranks → clip →
 * AdamW → upload the parameters.
 *
 * Sums and means, so that N ranks with batch b each give the same update as 1 rank with batch N·b:
 *   - every micro-batch, on every rank, has the same shape [b, T]; its loss L is the mean over its b·T tokens;
 *   - a rank with M micro-batches accumulates g_r = (1/M)·Σᵢ ∇Lᵢ (the gradient of its local mean loss);
 *   - `reduceGrads(flat)` must overwrite `flat` with the element-wise SUM Σ_r g_r over the N ranks, bit-identical
 *     on every rank (a ring reduce-scatter + all-gather is; ranks summing in different orders would drift apart);
 *   - trainStep then multiplies by 1/worldSize: g = (1/(N·M))·Σ_{r,i} ∇L_{r,i}, the gradient of the mean loss over
 *     the global batch of N·M·b sequences, identical on every rank;
 *   - clipping and AdamW run on that same g with the same state on every rank, so replicas stay identical.
 * With worldSize 1 and no hook this is plain single-process training.
 */
import * as tf from '@tensorflow/tfjs';
import { type GPT } from './gpt.ts';
import { flattenGrads } from './params.ts';
import { clipGradNorm, type AdamW } from './optim.ts';

/** Token ids for one micro-batch, row-major [batch, seq]; targets are the ids shifted left by one. */
export interface TokenBatch {
  readonly ids: Int32Array;
  readonly targets: Int32Array;
  readonly batch: number;
  readonly seq: number;
}

/**
 * Splits rows of seq + 1 tokens (model/token-shard-reader.ts's Batch.tokens, [batch, seq + 1] row-major) into
 * inputs and next-token targets.
 */
export function tokenBatch(tokens: Int32Array, batch: number, seq: number): TokenBatch {
  if (tokens.length !== batch * (seq + 1)) throw new RangeError(`expected ${batch}×${seq + 1} tokens, got ${tokens.length}`);
  const ids = new Int32Array(batch * seq), targets = new Int32Array(batch * seq);
  for (let r = 0; r < batch; r++) {
    const row = tokens.subarray(r * (seq + 1), (r + 1) * (seq + 1));
    ids.set(row.subarray(0, seq), r * seq);
    targets.set(row.subarray(1), r * seq);
  }
  return { ids, targets, batch, seq };
}

/** The model, its optimizer and the master copy of the parameters and the gradient buffer they share. */
export interface TrainState {
  readonly model: GPT;
  readonly optimizer: AdamW;
  /** The parameters, flat in layout order: the source of truth (checkpoints read it); the model's variables follow. */
  readonly params: Float32Array;
  /** Reused gradient buffer; after a step it holds the reduced, averaged, clipped gradient. */
  readonly grads: Float32Array;
}

export interface TrainStepOptions {
  readonly lr: number; // this step's learning rate (optim.ts lrAt)
  readonly gradClip: number; // clip the global gradient norm to this, or 0 to disable
  readonly worldSize?: number; // data-parallel ranks whose gradients reduceGrads sums; default 1
  /** Replaces `flat` by the element-wise sum over all ranks (see the top of this file). Called once per step. */
  readonly reduceGrads?: (flat: Float32Array) => Promise<void>;
}

export interface TrainStepResult {
  readonly loss: number; // mean loss over this rank's micro-batches (not reduced across ranks)
  readonly gradNorm: number; // global norm of the averaged gradient, before clipping
  readonly tokens: number; // tokens this rank processed
  readonly computeMs: number; // forward + backward + reading gradients back
  readonly reduceMs: number; // time inside reduceGrads
  readonly updateMs: number; // clip + AdamW + upload
}

/**
 * Snapshots the model's parameters as the master copy. To resume from a checkpoint: build the GPT from
 * `{ flat: flatFromStateDict(model tensors, layout) }`, `optimizer.importState(...)`, then call this.
 */
export function createTrainState(model: GPT, optimizer: AdamW): TrainState {
  if (optimizer.size !== model.layout.totalSize) {
    throw new RangeError(`optimizer covers ${optimizer.size} elements, model has ${model.layout.totalSize}`);
  }
  return { model, optimizer, params: model.readParams(), grads: new Float32Array(model.layout.totalSize) };
}

export async function trainStep(state: TrainState, microBatches: readonly TokenBatch[], options: TrainStepOptions): Promise<TrainStepResult> {
  const { model, optimizer, params, grads } = state;
  const worldSize = options.worldSize ?? 1;
  checkBatches(microBatches, model.config.nCtx, model.config.vocabSize);
  if (!Number.isSafeInteger(worldSize) || worldSize < 1) throw new RangeError(`worldSize must be a positive integer, got ${worldSize}`);
  if (worldSize > 1 && options.reduceGrads === undefined) throw new RangeError(`worldSize ${worldSize} needs a reduceGrads hook`);
  if (!(options.lr >= 0) || !(options.gradClip >= 0)) throw new RangeError('lr and gradClip must be non-negative numbers');

  // forward/backward per micro-batch, accumulating the gradient of the local MEAN loss
  const t0 = performance.now();
  const M = microBatches.length;
  grads.fill(0);
  let lossSum = 0;
  let tokens = 0;
  for (const mb of microBatches) {
    const ids = tf.tensor2d(mb.ids, [mb.batch, mb.seq], 'int32');
    const targets = tf.tensor2d(mb.targets, [mb.batch, mb.seq], 'int32');
    const { loss, grads: g } = model.lossAndGrads(ids, targets);
    lossSum += loss.dataSync()[0]!; // a sync point on GPU backends; free on wasm/cpu
    flattenGrads(g, model.layout, grads, 1 / M);
    tf.dispose([ids, targets, loss, ...g.values()]);
    tokens += mb.batch * mb.seq;
  }

  // data-parallel: sum over ranks, then divide by their number → gradient of the global mean loss
  const t1 = performance.now();
  if (options.reduceGrads !== undefined) await options.reduceGrads(grads);
  if (worldSize > 1) for (let i = 0; i < grads.length; i++) grads[i] = grads[i]! / worldSize;

  // clip, update the master parameters, upload them to the model's variables
  const t2 = performance.now();
  const gradNorm = clipGradNorm(grads, options.gradClip);
  optimizer.update(params, grads, options.lr);
  model.writeParams(params);
  const t3 = performance.now();

  return { loss: lossSum / M, gradNorm, tokens, computeMs: t1 - t0, reduceMs: t2 - t1, updateMs: t3 - t2 };
}

function checkBatches(microBatches: readonly TokenBatch[], nCtx: number, vocabSize: number): void {
  if (microBatches.length === 0) throw new RangeError('a training step needs at least one micro-batch');
  const { batch, seq } = microBatches[0]!;
  for (const [i, mb] of microBatches.entries()) {
    // equal shapes make the mean of micro-batch means the mean over all tokens
    if (mb.batch !== batch || mb.seq !== seq) throw new RangeError(`micro-batch ${i} is [${mb.batch}, ${mb.seq}], the first is [${batch}, ${seq}]`);
    if (!(Number.isSafeInteger(batch) && batch > 0 && Number.isSafeInteger(seq) && seq > 0 && seq <= nCtx)) {
      throw new RangeError(`micro-batch shape [${batch}, ${seq}] needs positive sizes and seq ≤ nCtx ${nCtx}`);
    }
    if (mb.ids.length !== batch * seq || mb.targets.length !== batch * seq) {
      throw new RangeError(`micro-batch ${i} holds ${mb.ids.length} ids and ${mb.targets.length} targets, expected ${batch * seq}`);
    }
    // an id outside the vocabulary would one-hot to a zero row and silently train on nothing
    for (const arr of [mb.ids, mb.targets]) {
      for (let j = 0; j < arr.length; j++) {
        if (!(arr[j]! >= 0 && arr[j]! < vocabSize)) throw new RangeError(`micro-batch ${i} has token ${arr[j]} outside [0, ${vocabSize})`);
      }
    }
  }
}
