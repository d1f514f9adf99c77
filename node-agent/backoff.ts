/**
 * Capped exponential backoff with jitter for reconnecting to the coordinator: attempt k waits
 * min(cap, base·2^k) scaled by a random factor in [1−jitter, 1+jitter], so a restarted coordinator is not hit
 * by every agent at the same instant.
 */
export interface BackoffOptions {
  baseMs: number; // first delay
  capMs: number; // no delay exceeds this
  jitter: number; // 0..1, fraction of random spread
}

export const DEFAULT_BACKOFF: BackoffOptions = Object.freeze({ baseMs: 500, capMs: 15_000, jitter: 0.2 });

export function backoffDelayMs(attempt: number, opts: BackoffOptions = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const raw = Math.min(opts.capMs, opts.baseMs * 2 ** Math.min(attempt, 30));
  const factor = 1 + opts.jitter * (2 * random() - 1);
  return Math.min(opts.capMs, Math.max(0, Math.round(raw * factor)));
}
