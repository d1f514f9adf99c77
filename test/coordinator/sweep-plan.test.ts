/** The sweep's pure decisions: trial parameters (grid order, seeded random draws), trial specs, next step, best trial. */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { validateSweepSpec, type ResolvedSweepSpec } from '../../protocol/sweep-spec.ts';
import { bestTrial, decideSweep, draw, planTrials, trialSpecs, type TrialState } from '../../coordinator/tracking/sweep-plan.ts';

const base = {
  name: 'ignored',
  model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
  data: { corpus: 'demo' },
  training: { steps: 4, batchSize: 4, seqLen: 16, minLr: 0 }, // the default minLr would exceed the smallest lr drawn
};

const sweep = (over: Record<string, unknown>): ResolvedSweepSpec => {
  const res = validateSweepSpec({ name: 's', base, strategy: 'random', budget: 4, parameters: { 'training.lr': { min: 1e-4, max: 1e-1, scale: 'log' } }, ...over }, 7);
  if (!res.ok) assert.fail(res.errors.join('; '));
  return res.spec;
};

describe('planning a sweep', () => {
  test('a grid lists every combination with the last parameter varying fastest, cut at the budget', () => {
    const spec = sweep({ strategy: 'grid', budget: 5, parameters: { 'training.lr': { values: [0.1, 0.01] }, 'training.batchSize': { values: [4, 8, 16] } } });
    assert.deepEqual(planTrials(spec), [
      { 'training.lr': 0.1, 'training.batchSize': 4 },
      { 'training.lr': 0.1, 'training.batchSize': 8 },
      { 'training.lr': 0.1, 'training.batchSize': 16 },
      { 'training.lr': 0.01, 'training.batchSize': 4 },
      { 'training.lr': 0.01, 'training.batchSize': 8 },
    ]);
    assert.equal(planTrials({ ...spec, budget: 100 }).length, 6, 'a budget above the grid runs the grid once');
  });

  test('random draws are the same for the same seed and differ for another', () => {
    const a = planTrials(sweep({ seed: 42 })), b = planTrials(sweep({ seed: 42 })), c = planTrials(sweep({ seed: 43 }));
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    assert.equal(a.length, 4, 'exactly the budget');
  });

  test('a log range stays within its bounds and spreads over its decades', () => {
    const trials = planTrials(sweep({ seed: 1, budget: 400 }));
    const lrs = trials.map((t) => t['training.lr'] as number);
    assert.ok(lrs.every((x) => x >= 1e-4 && x <= 1e-1), 'within [min, max]');
    for (const [lo, hi] of [[1e-4, 1e-3], [1e-3, 1e-2], [1e-2, 1e-1]] as const) {
      const share = lrs.filter((x) => x >= lo && x < hi).length / lrs.length;
      assert.ok(share > 0.2 && share < 0.47, `decade ${lo}: ${share}`);
    }
  });

  test('draws of every kind: table of (parameter, u) → value', () => {
    const cases: Array<[Parameters<typeof draw>[0], number, unknown]> = [
      [{ values: ['a', 'b', 'c'] }, 0, 'a'],
      [{ values: ['a', 'b', 'c'] }, 0.999, 'c'],
      [{ min: 2, max: 4 }, 0.5, 3],
      [{ min: 1, max: 100, scale: 'log' }, 0.5, 10],
      [{ min: 1, max: 3, integer: true }, 0.99, 3],
      [{ min: 0.5, max: 2.5, integer: true }, 0, 1],
    ];
    for (const [p, u, want] of cases) {
      const got = draw(p, u);
      if (typeof want === 'number') assert.ok(Math.abs((got as number) - want) < 1e-9, `${JSON.stringify(p)} at ${u}: ${got}`);
      else assert.equal(got, want);
    }
  });

  test('a bad sweep names every problem: unknown paths, a section, a log range at zero, a grid range', () => {
    const res = validateSweepSpec({
      name: 's', base, strategy: 'grid', budget: 3,
      parameters: { 'training.lrr': { values: [1] }, training: { values: [1] }, 'training.lr': { min: 0, max: 1, scale: 'log' }, 'training.constructor': { values: [1] } },
    }, 1);
    assert.equal(res.ok, false);
    const text = !res.ok ? res.errors.join('\n') : '';
    assert.match(text, /\/parameters\/training\.lrr names no field/);
    assert.match(text, /\/parameters\/training names a section/);
    assert.match(text, /log scale needs min > 0/);
    assert.match(text, /a grid needs a list of values/);
    assert.match(text, /training\.constructor names no field/);
    const both = validateSweepSpec({ name: 's', base, strategy: 'grid', budget: 0, parameters: { 'model.nope': { values: [1] } } }, 1);
    assert.deepEqual(!both.ok && both.errors, ['/budget Expected integer to be greater or equal to 1', '/parameters/model.nope names no field of the job spec'], 'shape and paths in one answer');
  });

  test('each trial spec is validated and every bad trial is named with its parameters', () => {
    const spec = sweep({ strategy: 'grid', parameters: { 'training.seqLen': { values: [16, 64] }, 'training.steps': { values: [0, 2] } } });
    const res = trialSpecs(spec, planTrials(spec));
    assert.equal(res.ok, false);
    const text = !res.ok ? res.errors.join('\n') : '';
    assert.match(text, /trial 1 \(training\.seqLen=16, training\.steps=0\): \/training\/steps/);
    assert.match(text, /trial 3 \(training\.seqLen=64, training\.steps=0\)/);
    assert.match(text, /trial 4 \(training\.seqLen=64, training\.steps=2\): \/training\/seqLen 64 exceeds/);
    assert.doesNotMatch(text, /trial 2 /);
    const ok = trialSpecs(sweep({}), planTrials(sweep({})));
    assert.ok(ok.ok && ok.specs.map((s) => s.name).join() === 's-t1,s-t2,s-t3,s-t4', 'trials named <sweep>-t<i>');
  });
});

describe('deciding what a sweep does next', () => {
  const t = (idx: number, jobState: TrialState['jobState'], loss: number | null = null, lossKind: TrialState['lossKind'] = loss === null ? null : 'eval'): TrialState => ({ idx, jobState, loss, lossKind });

  test('table of (total, parallel, trials) → decision', () => {
    const cases: Array<[string, number, number, TrialState[], ReturnType<typeof decideSweep>['action'], number[]?]> = [
      ['starts up to parallelTrials at once', 3, 2, [], 'submit', [1, 2]],
      ['never submits beyond the total', 3, 5, [], 'submit', [1, 2, 3]],
      ['waits while parallelTrials are running', 3, 1, [t(1, 'running')], 'wait'],
      ['submits the next when one ends', 3, 1, [t(1, 'succeeded', 2)], 'submit', [2]],
      ['waits for the last trials to end', 2, 2, [t(1, 'succeeded', 2), t(2, 'queued')], 'wait'],
      ['finishes when every trial ended', 2, 2, [t(1, 'succeeded', 2), t(2, 'failed')], 'finish'],
    ];
    for (const [name, total, parallel, trials, action, idxs] of cases) {
      const d = decideSweep(total, parallel, trials);
      assert.equal(d.action, action, name);
      if (idxs) assert.deepEqual(d.action === 'submit' && d.idxs, idxs, name);
    }
  });

  test('a sweep with no succeeded trial fails, one with any succeeds', () => {
    assert.deepEqual(decideSweep(1, 1, [t(1, 'failed')]), { action: 'finish', state: 'failed', reason: 'none of the 1 trials succeeded with a loss to compare' });
    const d = decideSweep(2, 1, [t(1, 'cancelled'), t(2, 'succeeded', 3.5)]);
    assert.equal(d.action === 'finish' && d.state, 'succeeded');
  });

  test('the best trial has the lowest held-out loss; train losses count only when no trial has one', () => {
    assert.equal(bestTrial([t(1, 'succeeded', 3), t(2, 'succeeded', 2.5), t(3, 'succeeded', 2.9)])?.idx, 2);
    assert.equal(bestTrial([t(1, 'succeeded', 3), t(2, 'succeeded', 1, 'train')])?.idx, 1, 'a train loss never beats a held-out one');
    assert.equal(bestTrial([t(1, 'succeeded', 3, 'train'), t(2, 'succeeded', 2, 'train')])?.idx, 2);
    assert.equal(bestTrial([t(1, 'failed', 1), t(2, 'succeeded', 2)])?.idx, 2, 'a failed trial is not ranked');
    assert.equal(bestTrial([t(1, 'succeeded', 2), t(2, 'succeeded', 2)])?.idx, 1, 'ties go to the earlier trial');
    assert.equal(bestTrial([t(1, 'running', 1)]), undefined);
  });
});
