/**
 * Sampling pieces every backend shares, so that temperature, top_p, seeds and logprobs mean the same thing
 * whichever model serves a request: a seeded random stream per choice, log-softmax, nucleus sampling and top-k
 * log-probabilities. Pure functions over plain arrays of logits (one vocabulary-sized row per step).
 */
import type { TokenLogprob } from './inference-backend.ts';

/** log-softmax of one row of logits, in float64 (log-probabilities the client sees). */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i]! - lse;
  return out;
}

/** Index of the largest value; ties go to the lowest index (so greedy decoding is fully determined). */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

/**
 * Samples a token id from `logits`: temperature 0 is greedy; otherwise softmax(logits / temperature), cut to the
 * smallest set of most likely tokens whose probability sums to ≥ topP, renormalised, and drawn with `random()`.
 */
export function sampleToken(logits: ArrayLike<number>, temperature: number, topP: number, random: () => number): number {
  if (temperature === 0) return argmax(logits);
  const scaled = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) scaled[i] = logits[i]! / temperature;
  const logp = logSoftmax(scaled);
  // Most likely first; equal probabilities keep id order, so the cut is deterministic.
  const order = Array.from({ length: logp.length }, (_, i) => i).sort((a, b) => logp[b]! - logp[a]! || a - b);
  const probs: number[] = [];
  let kept = 0;
  for (const id of order) {
    const p = Math.exp(logp[id]!);
    probs.push(p);
    kept += p;
    if (kept >= topP) break;
  }
  let r = random() * kept;
  for (let i = 0; i < probs.length; i++) {
    r -= probs[i]!;
    if (r < 0) return order[i]!;
  }
  return order[probs.length - 1]!; // r landed on the rounding error at the very end
}

/**
 * The chosen token's log-probability and the `k` most likely tokens at this step (most likely first), plus the
 * chosen one when it is not among them, so a client can always find the chosen token in `top`. With `tokenBytes`
 * each entry carries its token's raw bytes too (chat logprobs' `bytes`: a byte-level token may be part of a character).
 */
export function tokenLogprob(logprobs: Float64Array, chosen: number, k: number, tokenString: (id: number) => string, tokenBytes?: (id: number) => Uint8Array): TokenLogprob {
  const top: number[] = [];
  if (k > 0) {
    // Partial selection: k is ≤ 20, vocabularies are ~50k; keep a small sorted list instead of sorting everything.
    for (let id = 0; id < logprobs.length; id++) {
      const lp = logprobs[id]!;
      if (top.length === k && lp <= logprobs[top[k - 1]!]!) continue;
      let at = top.length;
      while (at > 0 && logprobs[top[at - 1]!]! < lp) at--;
      top.splice(at, 0, id);
      if (top.length > k) top.pop();
    }
  }
  if (!top.includes(chosen)) {
    let at = top.length;
    while (at > 0 && logprobs[top[at - 1]!]! < logprobs[chosen]!) at--;
    top.splice(at, 0, chosen);
  }
  const bytes = (id: number) => (tokenBytes ? { bytes: Array.from(tokenBytes(id)) } : {});
  return {
    token: tokenString(chosen),
    logprob: logprobs[chosen]!,
    ...bytes(chosen),
    top: top.map((id) => ({ token: tokenString(id), logprob: logprobs[id]!, ...bytes(id) })),
  };
}
