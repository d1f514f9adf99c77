/**
 * A deployment's rollout policy: what counts as a shadow request that went well, the sequential test that turns
 * those into promote / keep watching / reject (sprt.ts), whether a promote decision switches the primary by
 * itself, and the guard that rolls a promotion back when the new primary misbehaves within a window after it.
 *
 *   rollout: {
 *     success:     { metric: 'token-agreement', atLeast: 0.9 },   // per mirrored request
 *     sprt:        { p0: 0.8, p1: 0.95, alpha: 0.05, beta: 0.1 },  // rate of successes: bad ≤ p0, good ≥ p1
 *     autoPromote: false,                                         // a 'promote' decision switches the primary
 *     guard: { windowS: 300, minRequests: 20, maxErrorRate: 0.05, maxP99Ms: 5000, maxDivergence: 0.5 }
 *   }
 *
 * Both decisions are pure functions of counts (`evaluateSprt`, `guardDecision`), tested with tables; the
 * DeploymentManager (deployments.ts) is the executor that switches the routing table and writes the audit log.
 */
import { Reservoir } from './comparison.ts';
import type { ComparisonResult, ComparisonSnapshot } from './comparison.ts';
import { GatewayError } from './errors.ts';
import { seededRandom } from '../common/random.ts';
import { sprtConfig, type SprtConfig } from './sprt.ts';

/**
 * What makes one mirrored request a success for the SPRT:
 *   identical        the shadow's text and tokens equal the primary's
 *   token-agreement  the share of agreeing token positions is ≥ atLeast (0–1)
 *   logprob          the mean log-prob difference on the primary's tokens, shadow − primary, is ≥ atLeast (nats, ≤ 0;
 *                    −0.1 = the shadow finds the primary's answer at most ~10% less likely per token)
 *   no-error         the shadow answered at all (a smoke test for a version that may crash)
 * A failed shadow is never a success.
 */
export type SuccessMetric = 'identical' | 'token-agreement' | 'logprob' | 'no-error';

export interface SuccessRule {
  readonly metric: SuccessMetric;
  readonly atLeast: number;
}

/** Watches a new primary for `windowS` after it took over; any threshold crossed rolls it back. */
export interface GuardConfig {
  readonly windowS: number;
  /** Backend requests the new primary must have served before error rate and p99 are judged. */
  readonly minRequests: number;
  /** Share of the new primary's requests that failed (the backend threw), above which it is rolled back. */
  readonly maxErrorRate: number | null;
  /** p99 of the new primary's generation time (ms) above which it is rolled back. */
  readonly maxP99Ms: number | null;
  /**
   * 1 − mean token agreement between the new primary and the previous one, which is mirrored as a shadow during the
   * window (`shadowPercent` of the requests), above which it is rolled back. Judged after minComparisons.
   */
  readonly maxDivergence: number | null;
  readonly minComparisons: number;
  /** Percentage of requests mirrored to the previous primary during the window (for maxDivergence). */
  readonly shadowPercent: number;
}

export interface RolloutConfig {
  readonly success: SuccessRule;
  readonly sprt: Readonly<SprtConfig>;
  readonly autoPromote: boolean;
  readonly guard: GuardConfig | null;
}

export const DEFAULT_ROLLOUT: RolloutConfig = Object.freeze({
  success: Object.freeze({ metric: 'token-agreement', atLeast: 0.9 } as const),
  // A version agreeing on ≥ 95% of requests is promoted, one agreeing on ≤ 80% rejected; 5% false promotes, 10% false rejects.
  sprt: Object.freeze({ p0: 0.8, p1: 0.95, alpha: 0.05, beta: 0.1 }),
  autoPromote: false,
  guard: null,
});

const GUARD_DEFAULTS = { windowS: 300, minRequests: 20, maxErrorRate: null, maxP99Ms: null, maxDivergence: null, minComparisons: 20, shadowPercent: 100 };

const bad = (message: string) => new GatewayError('GW_ERR_BAD_DEPLOYMENT', `rollout: ${message}`);

function fields(raw: unknown, where: string, allowed: readonly string[]): Record<string, unknown> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad(`${where} must be an object`);
  for (const key of Object.keys(raw)) if (!allowed.includes(key)) throw bad(`${where} has an unknown field '${key}'; allowed: ${allowed.join(', ')}`);
  return raw as Record<string, unknown>;
}

function num(v: unknown, where: string, lo: number, hi: number, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi) throw bad(`${where} must be a number in [${lo}, ${hi}], got ${JSON.stringify(v)}`);
  return v;
}

function optional(v: unknown, where: string, lo: number, hi: number): number | null {
  return v === undefined || v === null ? null : num(v, where, lo, hi, 0);
}

/** Validates a deployment's `rollout` field (absent → the defaults) and freezes it. */
export function parseRollout(raw: unknown): RolloutConfig {
  if (raw === undefined) return DEFAULT_ROLLOUT;
  const r = fields(raw, 'rollout', ['success', 'sprt', 'autoPromote', 'guard']);
  let success = DEFAULT_ROLLOUT.success;
  if (r.success !== undefined) {
    const s = fields(r.success, 'rollout.success', ['metric', 'atLeast']);
    const metric = s.metric;
    if (metric !== 'identical' && metric !== 'token-agreement' && metric !== 'logprob' && metric !== 'no-error') {
      throw bad(`rollout.success.metric must be one of identical, token-agreement, logprob, no-error; got ${JSON.stringify(metric)}`);
    }
    const atLeast = metric === 'logprob' ? num(s.atLeast, 'rollout.success.atLeast (nats)', -100, 0, -0.1) : num(s.atLeast, 'rollout.success.atLeast', 0, 1, 0.9);
    success = Object.freeze({ metric, atLeast });
  }
  let sprt = DEFAULT_ROLLOUT.sprt;
  if (r.sprt !== undefined) {
    try {
      sprt = sprtConfig({ ...DEFAULT_ROLLOUT.sprt, ...fields(r.sprt, 'rollout.sprt', ['p0', 'p1', 'alpha', 'beta']) } as SprtConfig);
    } catch (err) {
      throw bad((err as Error).message);
    }
  }
  if (r.autoPromote !== undefined && typeof r.autoPromote !== 'boolean') throw bad(`autoPromote must be true or false, got ${JSON.stringify(r.autoPromote)}`);
  let guard: GuardConfig | null = null;
  if (r.guard !== undefined && r.guard !== null) {
    const g = fields(r.guard, 'rollout.guard', Object.keys(GUARD_DEFAULTS));
    guard = Object.freeze({
      windowS: num(g.windowS, 'rollout.guard.windowS', 1, 7 * 24 * 3600, GUARD_DEFAULTS.windowS),
      minRequests: Math.round(num(g.minRequests, 'rollout.guard.minRequests', 1, 1e9, GUARD_DEFAULTS.minRequests)),
      maxErrorRate: optional(g.maxErrorRate, 'rollout.guard.maxErrorRate', 0, 1),
      maxP99Ms: optional(g.maxP99Ms, 'rollout.guard.maxP99Ms', 0, 3_600_000),
      maxDivergence: optional(g.maxDivergence, 'rollout.guard.maxDivergence', 0, 1),
      minComparisons: Math.round(num(g.minComparisons, 'rollout.guard.minComparisons', 1, 1e9, GUARD_DEFAULTS.minComparisons)),
      shadowPercent: num(g.shadowPercent, 'rollout.guard.shadowPercent', 0, 100, GUARD_DEFAULTS.shadowPercent),
    });
    if (guard.maxErrorRate === null && guard.maxP99Ms === null && guard.maxDivergence === null) {
      throw bad('rollout.guard needs at least one threshold: maxErrorRate, maxP99Ms or maxDivergence');
    }
  }
  return Object.freeze({ success, sprt, autoPromote: r.autoPromote === true, guard });
}

/** Whether one mirrored request counts as a success; null when the metric cannot be judged (no log-probs). */
export function isSuccess(rule: SuccessRule, result: ComparisonResult): boolean | null {
  if (result.error) return false;
  switch (rule.metric) {
    case 'identical': return result.identical;
    case 'token-agreement': return result.tokenAgreement >= rule.atLeast;
    case 'logprob': return result.meanLogprobDiff === null ? null : result.meanLogprobDiff >= rule.atLeast;
    case 'no-error': return true;
  }
}

// ---------------------------------------------------------------------------------------------------- the guard

/** What the guard has seen of the new primary since it took over. */
export interface GuardObservation {
  /** ms since the promotion. */
  elapsedMs: number;
  requests: number;
  errors: number;
  /** p99 of generation time, ms; null before any request. */
  p99Ms: number | null;
  /** The previous primary, mirrored as a shadow: its comparison so far (null without one). */
  comparison: Pick<ComparisonSnapshot, 'compared' | 'divergence'> | null;
}

export type GuardAction = { kind: 'watch' } | { kind: 'window-over' } | { kind: 'rollback'; reason: string };

/** The guard's decision: pure. Judges a statistic only once it has enough observations; the window end stops it. */
export function guardDecision(config: GuardConfig, o: GuardObservation): GuardAction {
  if (o.requests >= config.minRequests) {
    const errorRate = o.errors / o.requests;
    if (config.maxErrorRate !== null && errorRate > config.maxErrorRate) {
      return { kind: 'rollback', reason: `error rate ${fmt(errorRate)} (${o.errors}/${o.requests}) > maxErrorRate ${config.maxErrorRate}` };
    }
    if (config.maxP99Ms !== null && o.p99Ms !== null && o.p99Ms > config.maxP99Ms) {
      return { kind: 'rollback', reason: `p99 generation time ${o.p99Ms.toFixed(0)} ms > maxP99Ms ${config.maxP99Ms}` };
    }
  }
  const c = o.comparison;
  if (config.maxDivergence !== null && c && c.compared >= config.minComparisons && c.divergence !== null && c.divergence > config.maxDivergence) {
    return { kind: 'rollback', reason: `divergence from the previous primary ${fmt(c.divergence)} over ${c.compared} mirrored requests > maxDivergence ${config.maxDivergence}` };
  }
  if (o.elapsedMs >= config.windowS * 1000) return { kind: 'window-over' };
  return { kind: 'watch' };
}

const fmt = (x: number) => x.toFixed(3);

/** Counts a new primary's outcomes during its guard window: bounded memory (a reservoir of 4096 latencies). */
export class GuardWindow {
  readonly startedMs: number;
  #requests = 0;
  #errors = 0;
  readonly #latency = new Reservoir(4096, seededRandom(0x9a2d));

  constructor(startedMs: number) {
    this.startedMs = startedMs;
  }

  record(ok: boolean, latencyMs: number): void {
    this.#requests++;
    if (!ok) this.#errors++;
    else this.#latency.add(latencyMs);
  }

  observe(nowMs: number, comparison: GuardObservation['comparison']): GuardObservation {
    return { elapsedMs: nowMs - this.startedMs, requests: this.#requests, errors: this.#errors, p99Ms: this.#latency.quantile(0.99), comparison };
  }
}
