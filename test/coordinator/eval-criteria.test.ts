import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decideEarlyStop, passCheck, type MeasuredResults, type PassCriteria } from '../../coordinator/jobs/eval-criteria.ts';

describe('passCheck', () => {
  const cases: Array<[string, PassCriteria | undefined, MeasuredResults, string[]]> = [
    ['no criteria pass anything', undefined, {}, []],
    ['criteria that hold pass', { maxEvalLoss: 2, maxPerplexity: 8, minExactMatch: 0.5 }, { evalLoss: 1.5, evalPerplexity: 4.48, exactMatch: 0.5 }, []],
    ['a loss above its ceiling fails with value and threshold', { maxEvalLoss: 1 }, { evalLoss: 1.23456 }, ['evalLoss 1.235 > maxEvalLoss 1']],
    ['an exact match below its floor fails', { minExactMatch: 1 }, { exactMatch: 0.25 }, ['exactMatch 0.25 < minExactMatch 1']],
    ['every unmet criterion is listed', { minWinRate: 0.6, maxPerplexityIncrease: 0.1 }, { winRate: 0.5, perplexityIncrease: 0.3 },
      ['winRate 0.5 < minWinRate 0.6', 'perplexityIncrease 0.3 > maxPerplexityIncrease 0.1']],
    ['a score ratio at its floor passes', { minScoreRatio: 0.9 }, { scoreRatio: 0.9 }, []],
    ['a criterion with no measurement is unmet', { minScoreRatio: 0.9, maxPerplexity: 10 }, { evalPerplexity: 3 }, ['scoreRatio was not measured (minScoreRatio 0.9)']],
  ];
  for (const [name, pass, results, want] of cases) test(name, () => assert.deepEqual(passCheck(pass, results), want));
});

describe('decideEarlyStop', () => {
  const cases: Array<[string, number[], { patience: number; minDelta?: number }, boolean]> = [
    ['no history does not stop', [], { patience: 1 }, false],
    ['a falling loss does not stop', [3, 2.5, 2, 1.5], { patience: 1 }, false],
    ['patience evaluations without a new best stop', [3, 2, 2.5, 2.4], { patience: 2 }, true],
    ['fewer than patience evaluations without a new best do not stop', [3, 2, 2.5], { patience: 2 }, false],
    ['an improvement restarts the count', [3, 2, 2.5, 1.9, 2.2], { patience: 2 }, false],
    ['an improvement smaller than minDelta does not count', [3, 2, 1.95, 1.92], { patience: 2, minDelta: 0.1 }, true],
    ['an improvement larger than minDelta counts', [3, 2, 1.95, 1.85], { patience: 2, minDelta: 0.1 }, false],
    ['an equal loss is no improvement', [2, 2], { patience: 1 }, true],
  ];
  for (const [name, history, o, want] of cases) test(name, () => assert.equal(decideEarlyStop(history, o), want));
});
