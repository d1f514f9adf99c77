/** The rollout policy's pure parts: config validation, what a success is, and the rollback guard's decision. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ComparisonResult } from '../../gateway/comparison.ts';
import { DEFAULT_ROLLOUT, guardDecision, GuardWindow, isSuccess, parseRollout, type GuardConfig, type GuardObservation } from '../../gateway/rollout.ts';

test('parseRollout fills defaults, keeps what is given, and freezes the result', () => {
  assert.equal(parseRollout(undefined), DEFAULT_ROLLOUT);
  const r = parseRollout({ success: { metric: 'logprob' }, autoPromote: true, guard: { maxP99Ms: 800 } });
  assert.deepEqual(r.success, { metric: 'logprob', atLeast: -0.1 });
  assert.deepEqual(r.sprt, DEFAULT_ROLLOUT.sprt);
  assert.equal(r.autoPromote, true);
  assert.deepEqual(r.guard, { windowS: 300, minRequests: 20, maxErrorRate: null, maxP99Ms: 800, maxDivergence: null, minComparisons: 20, shadowPercent: 100 });
  assert.ok(Object.isFrozen(r) && Object.isFrozen(r.guard) && Object.isFrozen(r.success));
  assert.deepEqual(parseRollout({ sprt: { p1: 0.99 } }).sprt, { ...DEFAULT_ROLLOUT.sprt, p1: 0.99 }, 'SPRT fields left out keep their defaults');
});

test('parseRollout refuses bad configs with the field at fault', () => {
  const cases: Array<[unknown, RegExp]> = [
    [[], /rollout must be an object/],
    [{ succes: {} }, /unknown field 'succes'/],
    [{ success: { metric: 'token-agreement', atLeast: 1.5 } }, /atLeast must be a number in \[0, 1\]/],
    [{ success: { metric: 'logprob', atLeast: 0.5 } }, /atLeast \(nats\) must be a number in \[-100, 0\]/],
    [{ sprt: { alpha: 0.7 } }, /alpha must be in \(0, 0\.5\)/],
    [{ sprt: { gamma: 1 } }, /unknown field 'gamma'/],
    [{ autoPromote: 'yes' }, /autoPromote must be true or false/],
    [{ guard: { windowS: 0, maxErrorRate: 0.1 } }, /windowS must be a number in \[1, /],
    [{ guard: { maxDivergence: -1 } }, /maxDivergence must be a number in \[0, 1\]/],
    [{ guard: { shadowPercent: 50 } }, /needs at least one threshold/],
  ];
  for (const [raw, message] of cases) assert.throws(() => parseRollout(raw), (err: Error & { code?: string }) => err.code === 'GW_ERR_BAD_DEPLOYMENT' && message.test(err.message), JSON.stringify(raw));
});

test('isSuccess judges one comparison by the configured metric; a failed shadow is never a success', () => {
  const r = (over: Partial<ComparisonResult>): ComparisonResult => ({ identical: false, tokenAgreement: 0.95, meanLogprobDiff: -0.05, latencyDiffMs: 0, error: false, ...over });
  const cases: Array<[Parameters<typeof isSuccess>[0], ComparisonResult, boolean | null]> = [
    [{ metric: 'identical', atLeast: 0 }, r({ identical: true }), true],
    [{ metric: 'identical', atLeast: 0 }, r({}), false],
    [{ metric: 'token-agreement', atLeast: 0.9 }, r({}), true],
    [{ metric: 'token-agreement', atLeast: 0.96 }, r({}), false],
    [{ metric: 'logprob', atLeast: -0.1 }, r({}), true],
    [{ metric: 'logprob', atLeast: -0.01 }, r({}), false],
    [{ metric: 'logprob', atLeast: -0.1 }, r({ meanLogprobDiff: null }), null],
    [{ metric: 'no-error', atLeast: 0 }, r({ tokenAgreement: 0 }), true],
    [{ metric: 'no-error', atLeast: 0 }, r({ error: true }), false],
    [{ metric: 'identical', atLeast: 0 }, r({ identical: true, error: true }), false],
  ];
  for (const [rule, result, expected] of cases) assert.equal(isSuccess(rule, result), expected, `${JSON.stringify(rule)} ${JSON.stringify(result)}`);
});

test('guardDecision: thresholds judged only with enough observations, rollback before the window end, window-over after', () => {
  const g: GuardConfig = { windowS: 60, minRequests: 10, maxErrorRate: 0.1, maxP99Ms: 500, maxDivergence: 0.3, minComparisons: 5, shadowPercent: 100 };
  const o = (over: Partial<GuardObservation>): GuardObservation => ({ elapsedMs: 1000, requests: 20, errors: 0, p99Ms: 100, comparison: null, ...over });
  const cases: Array<[string, GuardObservation, string]> = [
    ['all quiet', o({}), 'watch'],
    ['error rate over', o({ errors: 3 }), 'rollback'],
    ['error rate at the threshold', o({ errors: 2 }), 'watch'],
    ['errors below minRequests', o({ requests: 9, errors: 9 }), 'watch'],
    ['p99 over', o({ p99Ms: 501 }), 'rollback'],
    ['p99 unknown', o({ p99Ms: null }), 'watch'],
    ['divergence over', o({ comparison: { compared: 5, divergence: 0.31 } }), 'rollback'],
    ['divergence below minComparisons', o({ comparison: { compared: 4, divergence: 0.9 } }), 'watch'],
    ['divergence judged even below minRequests', o({ requests: 0, comparison: { compared: 5, divergence: 0.5 } }), 'rollback'],
    ['window over', o({ elapsedMs: 60_000 }), 'window-over'],
    ['a crossing at the window end still rolls back', o({ elapsedMs: 60_000, errors: 5 }), 'rollback'],
  ];
  for (const [name, obs, kind] of cases) assert.equal(guardDecision(g, obs).kind, kind, name);
  const off: GuardConfig = { ...g, maxErrorRate: null, maxP99Ms: null };
  assert.equal(guardDecision(off, o({ errors: 20, p99Ms: 1e6 })).kind, 'watch', 'thresholds not configured are not judged');
  const action = guardDecision(g, o({ errors: 4 }));
  assert.deepEqual(action, { kind: 'rollback', reason: 'error rate 0.200 (4/20) > maxErrorRate 0.1' });
});

test('GuardWindow counts requests and errors and takes p99 over successful requests only', () => {
  const w = new GuardWindow(1000);
  for (let i = 1; i <= 100; i++) w.record(true, i);
  w.record(false, 1e6);
  const seen = w.observe(4000, null);
  assert.equal(seen.elapsedMs, 3000);
  assert.equal(seen.requests, 101);
  assert.equal(seen.errors, 1);
  assert.ok(Math.abs(seen.p99Ms! - 99.01) < 1e-9, String(seen.p99Ms));
});
