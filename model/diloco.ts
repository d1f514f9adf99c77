/**
 * DiLoCo's outer optimizer (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of Language
 * Models"; OpenDiLoCo) on flat Float32Arrays, in plain JS like model/optim.ts's AdamW, so that every replica that
 * applies the same averaged pseudo-gradient to the same outer weights and momentum gets the same bits.
 *
 * Each replica trains H inner (AdamW) steps alone from the outer weights θ, then
 *
 *   Δ_r = θ − θ_r                      pseudoGradient: what replica r moved, as a gradient (it points uphill)
 *   Δ   = (Σ_r Δ_r) / n                the all-reduce over the replicas (node-agent/trainer/step.ts), then / n here
 *   m   ← μ·m + Δ                      outerStep: SGD with momentum, torch.optim.SGD's convention (no dampening)
 *   θ   ← θ − lr·(Δ + μ·m)             Nesterov (the paper's default)
 *   θ   ← θ − lr·m                     plain momentum
 *
 * and every replica starts its next round from the new θ. The paper's defaults: H = 500, lr = 0.7, μ = 0.9, Nesterov.
 */

export interface OuterSettings {
  readonly lr: number; // outer learning rate (paper: 0.7)
  readonly momentum: number; // μ (paper: 0.9)
  readonly nesterov: boolean; // paper: true
}

/** Writes Δ = outer − params into `into` (which may be a gradient buffer no longer needed this step). */
export function pseudoGradient(outer: Float32Array, params: Float32Array, into: Float32Array): void {
  const n = checkLengths(outer, params, into);
  for (let i = 0; i < n; i++) into[i] = outer[i]! - params[i]!;
}

/**
 * One outer step from the SUM of the replicas' pseudo-gradients over `replicas` of them: updates `outer` and
 * `momentum` in place. `deltaSum` is divided in place (it ends as the mean Δ).
 */
export function outerStep(outer: Float32Array, momentum: Float32Array, deltaSum: Float32Array, replicas: number, s: OuterSettings): void {
  const n = checkLengths(outer, momentum, deltaSum);
  if (!Number.isInteger(replicas) || replicas < 1) throw new RangeError(`replicas must be a positive integer, got ${replicas}`);
  const { lr, momentum: mu } = s;
  const f = Math.fround;
  // One pass; each intermediate is rounded to float32 (as stored) before it is used, as a float32 torch step would.
  if (s.nesterov) {
    for (let i = 0; i < n; i++) {
      const d = (deltaSum[i] = f(deltaSum[i]! / replicas));
      const m = (momentum[i] = f(mu * momentum[i]! + d));
      outer[i] = outer[i]! - lr * (d + mu * m);
    }
  } else {
    for (let i = 0; i < n; i++) {
      const d = (deltaSum[i] = f(deltaSum[i]! / replicas));
      outer[i] = outer[i]! - lr * (momentum[i] = f(mu * momentum[i]! + d));
    }
  }
}

function checkLengths(...arrays: Float32Array[]): number {
  const n = arrays[0]!.length;
  if (arrays.some((a) => a.length !== n)) throw new RangeError(`buffers of different lengths: ${arrays.map((a) => a.length).join(', ')}`);
  return n;
}

/**
 * FNV-1a over the float32 bits of `weights`: equal on two replicas exactly when (but for a 2^-32 chance) their weights
 * are bit-identical, which DiLoCo's synchronisation promises. One multiply per element: ~0.1 s for GPT-2-small, once
 * per round.
 */
export function weightsChecksum(weights: Float32Array): number {
  const bits = new Uint32Array(weights.buffer, weights.byteOffset, weights.length);
  let h = 0x811c9dc5;
  for (let i = 0; i < bits.length; i++) h = Math.imul(h ^ bits[i]!, 0x01000193);
  return h >>> 0;
}
