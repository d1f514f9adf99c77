/**
 * The decisions the evaluation feeds, as pure functions (coordinator/jobs/completion.ts does the I/O): whether a job's held-out
 * loss has stopped improving (early stopping), and which of the spec's pass criteria a finished stage misses.
 */
import type { JobSpec } from '../../protocol/job-spec.ts';

export type PassCriteria = NonNullable<NonNullable<JobSpec['eval']>['pass']>;
export type EarlyStopping = NonNullable<NonNullable<JobSpec['eval']>['earlyStopping']>;

/** What the pass criteria are checked against: the last held-out loss row and the stage's suite. */
export interface MeasuredResults {
  evalLoss?: number;
  evalPerplexity?: number;
  exactMatch?: number;
  winRate?: number;
  perplexityIncrease?: number;
  scoreRatio?: number;
}

/** Each criterion: the measurement it reads and whether the threshold is a ceiling or a floor. */
const CRITERIA: ReadonlyArray<{ key: keyof PassCriteria; measure: keyof MeasuredResults; max: boolean }> = [
  { key: 'maxEvalLoss', measure: 'evalLoss', max: true },
  { key: 'maxPerplexity', measure: 'evalPerplexity', max: true },
  { key: 'minExactMatch', measure: 'exactMatch', max: false },
  { key: 'minWinRate', measure: 'winRate', max: false },
  { key: 'maxPerplexityIncrease', measure: 'perplexityIncrease', max: true },
  { key: 'minScoreRatio', measure: 'scoreRatio', max: false },
];

/**
 * The unmet criteria, each as "<measure> <value> <relation> <criterion> <threshold>" (empty: the stage passes). A
 * criterion whose measurement is missing (no held-out data, or a suite the job's kind does not run) is unmet: a
 * gate that cannot be checked does not let the model through.
 */
export function passCheck(pass: PassCriteria | undefined, results: MeasuredResults): string[] {
  const unmet: string[] = [];
  for (const { key, measure, max } of CRITERIA) {
    const threshold = pass?.[key];
    if (threshold === undefined) continue;
    const value = results[measure];
    if (value === undefined || !Number.isFinite(value)) unmet.push(`${measure} was not measured (${key} ${threshold})`);
    else if (max ? value > threshold : value < threshold) unmet.push(`${measure} ${round(value)} ${max ? '>' : '<'} ${key} ${threshold}`);
  }
  return unmet;
}

/**
 * True when the last `patience` held-out losses (in step order) brought no improvement of more than `minDelta`
 * over the best loss before them.
 */
export function decideEarlyStop(history: readonly number[], o: EarlyStopping): boolean {
  const minDelta = o.minDelta ?? 0;
  let best = Infinity, since = 0;
  for (const loss of history) {
    if (loss < best - minDelta) {
      best = loss;
      since = 0;
    } else {
      since++;
    }
  }
  return since >= o.patience;
}

const round = (x: number) => Number(x.toPrecision(4));
