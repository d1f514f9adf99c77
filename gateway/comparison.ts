/**
 * Shadow comparison: how far a shadow model version's answer is from the primary's, one request at a time
 * (`compareOutputs`, a pure function), and per shadow version over many requests (`ComparisonStats`).
 *
 * Why the teacher-forced log-probability of the primary's tokens is the divergence measure that counts:
 * with temperature > 0 two samples differ by chance even when the models are identical, so exact-match and
 * token agreement mostly measure sampling noise, and after the first differing token the two texts are no
 * longer answers to the same question (every later position is conditioned on a different prefix). Scoring the
 * PRIMARY's tokens under the shadow model (teacher forcing: the shadow reads the primary's prefix at every step)
 * puts both models on the same sequence, so the per-token difference
 *
 *     d_t = log q_shadow(x_t | x_<t) − log p_primary(x_t | x_<t)
 *
 * is comparable whatever either model sampled. Its mean over tokens the primary sampled from its own distribution
 * is a Monte Carlo estimate of −KL(p‖q) per token: 0 for an identical model, more negative the more the shadow
 * would disagree, and it needs no agreement between sampled texts. Both sides must be scored the same way (the
 * raw model log-softmax, or both after the same temperature), or the difference measures the scaling instead.
 * Token agreement and exact match stay in the result: with greedy decoding they are meaningful, and they are what
 * a user would see change.
 */
import type { GeneratedChoice } from './inference-backend.ts';
import { seededRandom } from '../common/random.ts';

/** The primary's answer to one request. */
export interface PrimaryOutput {
  text: string;
  /** Token ids of the answer, in order. */
  tokens: readonly number[];
  /** The primary's log-probability of each of its own tokens (same length as `tokens`), when it computed them. */
  logprobs?: readonly number[];
  latencyMs: number;
}

/** The shadow version's answer to the same request. */
export interface ShadowOutput {
  text: string;
  tokens: readonly number[];
  /** The shadow's log-probability of each of the PRIMARY's tokens, teacher-forced (length = primary.tokens.length). */
  tokenLogprobsOfPrimaryTokens?: readonly number[];
  latencyMs: number;
  /** Set (to anything but undefined, null or false) when the shadow failed; its text and tokens are then ignored. */
  error?: unknown;
}

export interface ComparisonResult {
  /** Same text and same token ids. False when the shadow failed. */
  identical: boolean;
  /** Share of positions where the token ids match, over the longer of the two lengths; 1 for two empty answers, 0 on error. */
  tokenAgreement: number;
  /** Mean over the primary's tokens of shadow − primary log-prob (nats, ≤ 0 on average); null without both log-probs, on error, or for an empty answer. */
  meanLogprobDiff: number | null;
  /** shadow.latencyMs − primary.latencyMs: positive when the shadow is slower. */
  latencyDiffMs: number;
  /** The shadow failed. */
  error: boolean;
}

/**
 * Log-probabilities below this (nats) are clamped to it, so a token the shadow deems impossible (−Infinity) gives
 * a large but finite difference instead of poisoning every mean it enters. e^−100 is "impossible" for any sampler.
 */
export const MIN_LOGPROB = -100;

/** Compare the shadow's answer with the primary's for one request. Throws RangeError on inputs that cannot come from one request. */
export function compareOutputs(primary: PrimaryOutput, shadow: ShadowOutput): ComparisonResult {
  const latencyDiffMs = shadow.latencyMs - primary.latencyMs;
  if (shadow.error !== undefined && shadow.error !== null && shadow.error !== false) {
    return { identical: false, tokenAgreement: 0, meanLogprobDiff: null, latencyDiffMs, error: true };
  }
  const a = primary.tokens;
  const b = shadow.tokens;
  const longer = Math.max(a.length, b.length);
  let matches = 0;
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] === b[i]) matches++;
  const tokenAgreement = longer === 0 ? 1 : matches / longer;
  const identical = primary.text === shadow.text && a.length === b.length && matches === a.length;
  return { identical, tokenAgreement, meanLogprobDiff: meanLogprobDiff(primary, shadow), latencyDiffMs, error: false };
}

function meanLogprobDiff(primary: PrimaryOutput, shadow: ShadowOutput): number | null {
  const p = primary.logprobs;
  const q = shadow.tokenLogprobsOfPrimaryTokens;
  if (p === undefined || q === undefined || primary.tokens.length === 0) return null;
  const n = primary.tokens.length;
  if (p.length !== n) throw new RangeError(`primary.logprobs has ${p.length} entries for ${n} primary tokens`);
  if (q.length !== n) throw new RangeError(`shadow.tokenLogprobsOfPrimaryTokens has ${q.length} entries for ${n} primary tokens`);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += clampLogprob(q[i]!, 'shadow', i) - clampLogprob(p[i]!, 'primary', i);
  return sum / n;
}

function clampLogprob(x: number, side: string, i: number): number {
  if (Number.isNaN(x) || x > 1e-9) throw new RangeError(`${side} log-prob at token ${i} is ${x}; a log-probability is ≤ 0`);
  return Math.max(Math.min(x, 0), MIN_LOGPROB);
}

/** A generated choice as compareOutputs wants it: ids, and log-probs when the request asked for them. */
export function outputFromChoice(choice: GeneratedChoice, latencyMs: number): PrimaryOutput {
  const tokens = choice.tokens.map((t) => t.id);
  const lps = choice.tokens.map((t) => t.logprob?.logprob);
  const logprobs = lps.every((x): x is number => x !== undefined) ? lps : undefined;
  return logprobs === undefined || tokens.length === 0 ? { text: choice.text, tokens, latencyMs } : { text: choice.text, tokens, logprobs, latencyMs };
}

// ---------------------------------------------------------------------------------------------------------------
// Aggregation per shadow version.

/** Running mean and variance (Welford): numerically stable in one pass, O(1) memory. */
export class Welford {
  #n = 0;
  #mean = 0;
  #m2 = 0;

  add(x: number): void {
    this.#n++;
    const delta = x - this.#mean;
    this.#mean += delta / this.#n;
    this.#m2 += delta * (x - this.#mean);
  }

  get count(): number { return this.#n; }
  /** null before the first value. */
  get mean(): number | null { return this.#n === 0 ? null : this.#mean; }
  /** Sample variance (n − 1); null below two values. */
  get variance(): number | null { return this.#n < 2 ? null : this.#m2 / (this.#n - 1); }
  get std(): number | null { const v = this.variance; return v === null ? null : Math.sqrt(v); }
}

/**
 * A uniform random sample of at most `capacity` values (Vitter's algorithm R), for quantiles in bounded memory.
 * Exact while count ≤ capacity; beyond, a quantile p is read at a rank whose standard error is about
 * sqrt(p(1−p)/capacity) (p99 at 4096 slots: ±0.16 percentile points).
 */
export class Reservoir {
  readonly capacity: number;
  #values: number[] = [];
  #sorted: number[] | undefined; // #values in order, until the next add
  #seen = 0;
  #random: () => number;

  constructor(capacity: number, random: () => number) {
    this.capacity = capacity;
    this.#random = random;
  }

  add(x: number): void {
    this.#seen++;
    this.#sorted = undefined;
    if (this.#values.length < this.capacity) this.#values.push(x);
    else {
      const j = Math.floor(this.#random() * this.#seen);
      if (j < this.capacity) this.#values[j] = x;
    }
  }

  get seen(): number { return this.#seen; }

  /** The p-quantile (0 ≤ p ≤ 1), linear interpolation between order statistics; null when empty. */
  quantile(p: number): number | null {
    if (this.#values.length === 0) return null;
    const sorted = (this.#sorted ??= [...this.#values].sort((x, y) => x - y)); // p50 and p99 of one snapshot: one sort
    const at = p * (sorted.length - 1);
    const lo = Math.floor(at);
    const hi = Math.min(lo + 1, sorted.length - 1);
    return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (at - lo);
  }
}

export interface ComparisonStatsOptions {
  /** Latency differences kept for p50/p99; memory is 8 bytes a slot. Default 4096 (32 KiB). */
  reservoirSize?: number;
  /** Random stream for the reservoir's replacements, in [0, 1). Default: seeded, so snapshots are reproducible. */
  random?: () => number;
}

export interface ComparisonSnapshot {
  version: string | number;
  /** Comparisons added, failed ones included. */
  count: number;
  /** Comparisons where the shadow failed. */
  errors: number;
  /** errors / count; null before the first. */
  errorRate: number | null;
  /** Successful comparisons (count − errors): the denominator of every statistic below. */
  compared: number;
  identicalRate: number | null;
  meanTokenAgreement: number | null;
  tokenAgreementStd: number | null;
  /** Mean over requests (each request's own per-token mean weighs the same) of shadow − primary log-prob, nats. */
  meanLogprobDiff: number | null;
  logprobDiffStd: number | null;
  /** Requests that had log-probs on both sides. */
  logprobCount: number;
  meanLatencyDiffMs: number | null;
  p50LatencyDiffMs: number | null;
  p99LatencyDiffMs: number | null;
  /** 1 − meanTokenAgreement. */
  divergence: number | null;
}

/**
 * Statistics of one shadow version's comparisons. Memory is bounded: three Welford accumulators, two counters
 * and a reservoir of `reservoirSize` latency differences, however many requests are added. A failed shadow
 * counts in `count`/`errors` only: its agreement, log-probs and (often fast-failing) latency would otherwise
 * mix "broken" into "different" and "faster"; the error rate says it on its own.
 */
export class ComparisonStats {
  readonly version: string | number;
  #count = 0;
  #errors = 0;
  #identical = 0;
  #agreement = new Welford();
  #logprobDiff = new Welford();
  #latencyDiff = new Welford();
  #latencyReservoir: Reservoir;

  constructor(version: string | number, options: ComparisonStatsOptions = {}) {
    const size = options.reservoirSize ?? 4096;
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`reservoirSize must be a positive integer, got ${size}`);
    this.version = version;
    this.#latencyReservoir = new Reservoir(size, options.random ?? seededRandom(0x5eed));
  }

  add(result: ComparisonResult): void {
    this.#count++;
    if (result.error) { this.#errors++; return; }
    if (result.identical) this.#identical++;
    this.#agreement.add(result.tokenAgreement);
    if (result.meanLogprobDiff !== null) this.#logprobDiff.add(result.meanLogprobDiff);
    this.#latencyDiff.add(result.latencyDiffMs);
    this.#latencyReservoir.add(result.latencyDiffMs);
  }

  snapshot(): Readonly<ComparisonSnapshot> {
    const compared = this.#count - this.#errors;
    const meanTokenAgreement = this.#agreement.mean;
    return Object.freeze({
      version: this.version,
      count: this.#count,
      errors: this.#errors,
      errorRate: this.#count === 0 ? null : this.#errors / this.#count,
      compared,
      identicalRate: compared === 0 ? null : this.#identical / compared,
      meanTokenAgreement,
      tokenAgreementStd: this.#agreement.std,
      meanLogprobDiff: this.#logprobDiff.mean,
      logprobDiffStd: this.#logprobDiff.std,
      logprobCount: this.#logprobDiff.count,
      meanLatencyDiffMs: this.#latencyDiff.mean,
      p50LatencyDiffMs: this.#latencyReservoir.quantile(0.5),
      p99LatencyDiffMs: this.#latencyReservoir.quantile(0.99),
      divergence: meanTokenAgreement === null ? null : 1 - meanTokenAgreement,
    });
  }
}
