/**
 * What a training stage optimises, computed from the model's logits on the last pipeline stage: the causal-LM loss
 * of pre-training and SFT (with per-token weights, so SFT learns the response tokens only), DPO's preference loss
 * against a frozen reference, and distillation's mix of a softened KL to a teacher and the hard-label loss.
 *
 * Every objective is a MEAN OVER EXAMPLES of a per-example value, never a mean over the tokens of a micro-batch:
 * the global batch can then be cut into any number of data-parallel ranks and micro-batches and the loss (and so
 * the model) is the same, which is what every layout, elastic shrink and resume relies on (protocol/job-spec.ts).
 * A token-level mean (Hugging Face's default) would weigh a rank's examples by how many response tokens its
 * micro-batch happens to hold.
 *
 * Shapes: the micro-batch is B rows of T positions; `logits` [B·T, V]; `targets` [B·T] next-token ids;
 * `weights` [B·T] in [0, 1] per target (absent: all 1).
 */
import * as tf from '@tensorflow/tfjs';

export type Objective =
  /** Causal LM: per row, Σ w·nll / Σ w (a row with no weight counts 0), averaged over rows. */
  | { readonly kind: 'lm'; readonly weights?: Float32Array }
  /**
   * DPO (Rafailov et al. 2023): rows come in pairs, chosen then rejected. With π and ρ the summed log-probability
   * of a row's weighted targets under the policy and the frozen reference,
   *   loss = −log σ(β · ((π_c − ρ_c) − (π_r − ρ_r))), averaged over pairs.
   * `refLogp` [B] is ρ per row, computed by the caller with the reference model. With `rpoAlpha` > 0 (RPO, Pang et
   * al. 2024; TRL's rpo_alpha) the chosen reply's per-token NLL, weighted by it, is added per pair: it keeps the
   * chosen replies likely, where plain DPO may push both replies down and drift from what SFT taught.
   */
  | { readonly kind: 'dpo'; readonly weights: Float32Array; readonly refLogp: Float32Array; readonly beta: number; readonly rpoAlpha?: number }
  /**
   * Distillation (Hinton et al. 2015): per target, α·τ²·KL(p_teacher^τ ‖ p_student^τ) + (1 − α)·nll, then the LM
   * objective's weighted per-row mean. `teacherLogits` [B·T, V] from the frozen teacher on the same ids.
   */
  | {
      readonly kind: 'distill';
      readonly weights?: Float32Array;
      readonly teacherLogits: Float32Array;
      readonly temperature: number;
      readonly alpha: number;
    };

/** The micro-batch's scalar loss (inside the caller's tape/tidy). */
export function objectiveLoss(logits: tf.Tensor2D, targets: Int32Array, B: number, T: number, objective: Objective = { kind: 'lm' }): tf.Scalar {
  const V = logits.shape[1];
  if (targets.length !== B * T) throw new RangeError(`targets has ${targets.length} ids, expected ${B * T}`);
  const weights = objective.weights;
  if (weights !== undefined && weights.length !== B * T) throw new RangeError(`weights has ${weights.length} values, expected ${B * T}`);
  const logp = tf.logSoftmax(logits); // [B·T, V]
  const picked = tf.oneHot(tf.tensor1d(targets, 'int32'), V).cast('float32'); // [B·T, V]
  switch (objective.kind) {
    case 'lm':
      // Unweighted: the mean over all B·T targets, which equals the per-row mean (every row has T).
      if (weights === undefined) return logp.mul(picked).sum().div(-(B * T)) as tf.Scalar;
      return weightedRowMean(logp.mul(picked).sum(1).neg() as tf.Tensor1D, weights, B, T);
    case 'distill': {
      const { teacherLogits, temperature: tau, alpha } = objective;
      if (teacherLogits.length !== B * T * V) throw new RangeError(`teacherLogits has ${teacherLogits.length} values, expected ${B * T}×${V}`);
      const nll = logp.mul(picked).sum(1).neg() as tf.Tensor1D; // [B·T]
      const teacherLogp = tf.logSoftmax(tf.tensor2d(teacherLogits, [B * T, V]).div(tau)); // [B·T, V]
      const studentLogp = tf.logSoftmax(logits.div(tau));
      const kl = teacherLogp.exp().mul(teacherLogp.sub(studentLogp)).sum(1); // [B·T]
      const perToken = kl.mul(alpha * tau * tau).add(nll.mul(1 - alpha)) as tf.Tensor1D;
      return weights === undefined ? perToken.sum().div(B * T) as tf.Scalar : weightedRowMean(perToken, weights, B, T);
    }
    case 'dpo': {
      const { refLogp, beta } = objective;
      if (B % 2 !== 0) throw new RangeError(`DPO needs chosen/rejected pairs: ${B} rows is odd`);
      if (refLogp.length !== B) throw new RangeError(`refLogp has ${refLogp.length} values, expected one per row (${B})`);
      const policy = sequenceLogp(logp, picked, weights, B, T); // [B]
      const margin = policy.sub(tf.tensor1d(refLogp)).reshape([B / 2, 2]); // [pairs, (chosen, rejected)]
      const [chosen, rejected] = tf.split(margin, 2, 1);
      const z = chosen!.sub(rejected!).mul(beta); // β·((π_c − ρ_c) − (π_r − ρ_r))
      const dpo = tf.softplus(z.neg()).mean() as tf.Scalar; // −log σ(z) = softplus(−z), stable for large |z|
      const alpha = objective.rpoAlpha ?? 0;
      if (alpha === 0) return dpo;
      const nll = rowMeans(logp.mul(picked).sum(1).neg() as tf.Tensor1D, objective.weights, B, T).reshape([B / 2, 2]); // [pairs, 2]
      return dpo.add(tf.split(nll, 2, 1)[0]!.mean().mul(alpha)) as tf.Scalar;
    }
  }
}

/** Σ over each row's targets of w·log p(target): [B]. `logp` [B·T, V], `picked` the targets' one-hot. */
export function sequenceLogp(logp: tf.Tensor2D, picked: tf.Tensor, weights: Float32Array | undefined, B: number, T: number): tf.Tensor1D {
  let tok = logp.mul(picked).sum(1); // [B·T]
  if (weights !== undefined) tok = tok.mul(tf.tensor1d(weights));
  return tok.reshape([B, T]).sum(1) as tf.Tensor1D;
}

/** Summed log-probabilities of each row's weighted targets from logits [B·T, V] (no tape needed): [B], a new tensor. */
export function rowLogprobs(logits: tf.Tensor2D, targets: Int32Array, weights: Float32Array | undefined, B: number, T: number): tf.Tensor1D {
  return tf.tidy(() => {
    const picked = tf.oneHot(tf.tensor1d(targets, 'int32'), logits.shape[1]).cast('float32');
    return sequenceLogp(tf.logSoftmax(logits), picked, weights, B, T);
  });
}

function weightedRowMean(perToken: tf.Tensor1D, weights: Float32Array, B: number, T: number): tf.Scalar {
  return rowMeans(perToken, weights, B, T).mean() as tf.Scalar;
}

/** Each row's weighted mean of a per-token value: [B] (a row with no weight gives 0). */
function rowMeans(perToken: tf.Tensor1D, weights: Float32Array, B: number, T: number): tf.Tensor1D {
  const w = tf.tensor2d(weights, [B, T]);
  const num = perToken.reshape([B, T]).mul(w).sum(1); // [B]
  return num.div(w.sum(1).maximum(1e-9)) as tf.Tensor1D;
}
