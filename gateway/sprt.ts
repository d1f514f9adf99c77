/**
 * Wald's sequential probability ratio test (SPRT) for a Bernoulli rate: the promotion decision of a rollout.
 * Each observation is one request's yes/no ("the shadow agreed with the primary", "the request succeeded"); the
 * test weighs
 *
 *     H0: rate = p0 (bad: at most p0)   against   H1: rate = p1 (good: at least p1),   p0 < p1,
 *
 * by the log-likelihood ratio after n observations with s successes,
 *
 *     llr = s·ln(p1/p0) + (n − s)·ln((1 − p1)/(1 − p0)),
 *
 * and stops as soon as llr ≥ upper = ln((1 − β)/α) (accept H1) or llr ≤ lower = ln(β/(1 − α)) (accept H0).
 * α bounds the chance of accepting H1 when the rate is p0 (a false promote), β that of accepting H0 when it is
 * p1 (a false reject); Wald's bounds are conservative, overshoot past a boundary only lowers the real rates. On
 * average it needs far fewer observations than a fixed-size test with the same α and β. Rates between p0 and p1
 * are the indifference zone: either answer is acceptable there, and the test still ends with probability 1.
 *
 * Rollout mapping (`rolloutDecision`): accept-h1 → 'promote', accept-h0 → 'reject', continue → 'keep-watching'.
 *
 * The decision is a pure function of (config, n, successes) (`evaluateSprt`); `sprt()` only keeps the counts.
 */

export interface SprtConfig {
  /** The bad rate (H0): at or below it the new version should be rejected. 0 < p0 < p1. */
  readonly p0: number;
  /** The good rate (H1): at or above it the new version should be promoted. p0 < p1 < 1. */
  readonly p1: number;
  /** Largest acceptable chance of promoting a version whose rate is p0 (false promote). 0 < alpha < 0.5. */
  readonly alpha: number;
  /** Largest acceptable chance of rejecting a version whose rate is p1 (false reject). 0 < beta < 0.5. */
  readonly beta: number;
}

export type SprtDecision = 'accept-h1' | 'accept-h0' | 'continue';
export type RolloutDecision = 'promote' | 'reject' | 'keep-watching';

export interface SprtState {
  decision: SprtDecision;
  /** Log-likelihood ratio of H1 over H0 (nats). */
  llr: number;
  /** Observations counted (none after a decision: the test has stopped). */
  n: number;
  successes: number;
  /** ln((1 − β)/α): at or above it, accept H1. */
  upper: number;
  /** ln(β/(1 − α)): at or below it, accept H0. */
  lower: number;
}

/** Validate and freeze an SPRT config; throws RangeError naming the field and its bounds. */
export function sprtConfig(input: SprtConfig): Readonly<SprtConfig> {
  const { p0, p1, alpha, beta } = input;
  for (const [name, value] of [['p0', p0], ['p1', p1], ['alpha', alpha], ['beta', beta]] as const) {
    if (typeof value !== 'number' || !Number.isFinite(value)) throw new RangeError(`sprt ${name} must be a finite number, got ${String(value)}`);
  }
  if (!(p0 > 0 && p0 < 1)) throw new RangeError(`sprt p0 must be in (0, 1), got ${p0}`);
  if (!(p1 > 0 && p1 < 1)) throw new RangeError(`sprt p1 must be in (0, 1), got ${p1}`);
  if (!(p0 < p1)) throw new RangeError(`sprt p0 must be below p1 (H0 is the bad rate, H1 the good one), got p0=${p0} p1=${p1}`);
  if (!(alpha > 0 && alpha < 0.5)) throw new RangeError(`sprt alpha must be in (0, 0.5), got ${alpha}`);
  if (!(beta > 0 && beta < 0.5)) throw new RangeError(`sprt beta must be in (0, 0.5), got ${beta}`);
  const known = new Set(['p0', 'p1', 'alpha', 'beta']);
  for (const key of Object.keys(input)) if (!known.has(key)) throw new RangeError(`sprt config has an unknown key '${key}'`);
  return Object.freeze({ p0, p1, alpha, beta });
}

/** The decision after `n` observations with `successes` successes: pure, no state. The config must be validated. */
export function evaluateSprt(config: Readonly<SprtConfig>, n: number, successes: number): SprtState {
  const { p0, p1, alpha, beta } = config;
  const upper = Math.log((1 - beta) / alpha);
  const lower = Math.log(beta / (1 - alpha));
  const llr = successes * Math.log(p1 / p0) + (n - successes) * Math.log((1 - p1) / (1 - p0));
  const decision: SprtDecision = llr >= upper ? 'accept-h1' : llr <= lower ? 'accept-h0' : 'continue';
  return { decision, llr, n, successes, upper, lower };
}

/** accept-h1 → 'promote' (rate ≥ p1), accept-h0 → 'reject' (rate ≤ p0), continue → 'keep-watching'. */
export function rolloutDecision(state: Pick<SprtState, 'decision'> | SprtDecision): RolloutDecision {
  const decision = typeof state === 'string' ? state : state.decision;
  switch (decision) {
    case 'accept-h1': return 'promote';
    case 'accept-h0': return 'reject';
    case 'continue': return 'keep-watching';
  }
}

export interface Sprt {
  readonly config: Readonly<SprtConfig>;
  /**
   * Count one observation and return the state. Once a boundary is crossed the test has stopped: later
   * observations are ignored and the decision stays, since continuing past Wald's stopping time voids α and β.
   */
  observe(success: boolean): SprtState;
  decision(): SprtState;
}

/** A running SPRT over `config` (validated and frozen here). */
export function sprt(config: SprtConfig): Sprt {
  const frozen = sprtConfig(config);
  let n = 0;
  let successes = 0;
  let state = evaluateSprt(frozen, 0, 0);
  return Object.freeze({
    config: frozen,
    observe(success: boolean): SprtState {
      if (state.decision !== 'continue') return { ...state };
      n++;
      if (success) successes++;
      state = evaluateSprt(frozen, n, successes);
      return { ...state };
    },
    decision: (): SprtState => ({ ...state }),
  });
}
