/** Shadow comparison (gateway/comparison.ts): one request's comparison, and the per-version aggregate. */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ComparisonStats, MIN_LOGPROB, Reservoir, Welford, compareOutputs, outputFromChoice, type ComparisonResult, type PrimaryOutput, type ShadowOutput } from '../../gateway/comparison.ts';
import { seededRandom } from '../../common/random.ts';

const primary = (tokens: number[], over: Partial<PrimaryOutput> = {}): PrimaryOutput => ({ text: tokens.join(','), tokens, latencyMs: 100, ...over });
const shadow = (tokens: number[], over: Partial<ShadowOutput> = {}): ShadowOutput => ({ text: tokens.join(','), tokens, latencyMs: 100, ...over });
const close = (a: number | null, b: number, eps = 1e-12) => assert.ok(a !== null && Math.abs(a - b) < eps, `${a} ≠ ${b}`);

describe('compareOutputs', () => {
  const cases: Array<{ name: string; p: PrimaryOutput; s: ShadowOutput; want: Partial<ComparisonResult> }> = [
    { name: 'the same tokens and text are identical with full agreement', p: primary([1, 2, 3]), s: shadow([1, 2, 3]), want: { identical: true, tokenAgreement: 1 } },
    { name: 'two empty answers agree fully', p: primary([]), s: shadow([]), want: { identical: true, tokenAgreement: 1, meanLogprobDiff: null } },
    { name: 'one differing token in three is 2/3 agreement', p: primary([1, 2, 3]), s: shadow([1, 9, 3]), want: { identical: false, tokenAgreement: 2 / 3 } },
    { name: 'agreement is over the longer length', p: primary([1, 2]), s: shadow([1, 2, 3, 4]), want: { identical: false, tokenAgreement: 0.5 } },
    { name: 'an empty shadow answer agrees nowhere', p: primary([1, 2]), s: shadow([]), want: { identical: false, tokenAgreement: 0 } },
    { name: 'same tokens but a different text are not identical', p: primary([1]), s: shadow([1], { text: 'other' }), want: { identical: false, tokenAgreement: 1 } },
    { name: 'latency difference is shadow minus primary', p: primary([1], { latencyMs: 80 }), s: shadow([1], { latencyMs: 130 }), want: { latencyDiffMs: 50 } },
    { name: 'a failed shadow is an error with no agreement and no log-prob diff', p: primary([1], { logprobs: [-1] }), s: shadow([1], { error: new Error('boom'), tokenLogprobsOfPrimaryTokens: [-1] }), want: { error: true, identical: false, tokenAgreement: 0, meanLogprobDiff: null } },
    { name: 'error: false is no error', p: primary([1]), s: shadow([1], { error: false }), want: { error: false, identical: true } },
    { name: 'the log-prob diff is the mean of shadow − primary over the primary tokens', p: primary([1, 2], { logprobs: [-0.5, -1] }), s: shadow([7, 8], { tokenLogprobsOfPrimaryTokens: [-1, -2] }), want: { meanLogprobDiff: -0.75, tokenAgreement: 0 } },
    { name: 'no log-prob diff without the primary log-probs', p: primary([1]), s: shadow([1], { tokenLogprobsOfPrimaryTokens: [-1] }), want: { meanLogprobDiff: null } },
    { name: 'no log-prob diff without the shadow log-probs', p: primary([1], { logprobs: [-1] }), s: shadow([1]), want: { meanLogprobDiff: null } },
    { name: 'a token impossible under the shadow is clamped, not −Infinity', p: primary([1], { logprobs: [0] }), s: shadow([1], { tokenLogprobsOfPrimaryTokens: [-Infinity] }), want: { meanLogprobDiff: MIN_LOGPROB } },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const got = compareOutputs(c.p, c.s);
      for (const [k, v] of Object.entries(c.want)) {
        const g = got[k as keyof ComparisonResult];
        if (typeof v === 'number' && typeof g === 'number') close(g, v);
        else assert.equal(g, v, k);
      }
    });
  }

  test('log-prob arrays of the wrong length or values above 0 are rejected', () => {
    assert.throws(() => compareOutputs(primary([1, 2], { logprobs: [-1] }), shadow([1, 2], { tokenLogprobsOfPrimaryTokens: [-1, -1] })), /primary.logprobs has 1 entries for 2 primary tokens/);
    assert.throws(() => compareOutputs(primary([1], { logprobs: [-1] }), shadow([1], { tokenLogprobsOfPrimaryTokens: [-1, -1] })), /tokenLogprobsOfPrimaryTokens has 2 entries for 1/);
    assert.throws(() => compareOutputs(primary([1], { logprobs: [0.5] }), shadow([1], { tokenLogprobsOfPrimaryTokens: [-1] })), /primary log-prob at token 0 is 0.5/);
    assert.throws(() => compareOutputs(primary([1], { logprobs: [-1] }), shadow([1], { tokenLogprobsOfPrimaryTokens: [NaN] })), /shadow log-prob at token 0 is NaN/);
  });

  test('a generated choice gives its ids and, when every token has one, its log-probs', () => {
    const tok = (id: number, logprob?: number) => ({ id, text: String(id), ...(logprob === undefined ? {} : { logprob: { token: String(id), logprob, top: [] } }) });
    const withLp = outputFromChoice({ index: 0, text: '12', tokens: [tok(1, -0.1), tok(2, -0.2)], finishReason: 'stop', sampledTokens: 2 }, 42);
    assert.deepEqual(withLp, { text: '12', tokens: [1, 2], logprobs: [-0.1, -0.2], latencyMs: 42 });
    const without = outputFromChoice({ index: 0, text: '12', tokens: [tok(1), tok(2)], finishReason: 'stop', sampledTokens: 2 }, 42);
    assert.deepEqual(without, { text: '12', tokens: [1, 2], latencyMs: 42 });
  });
});

describe('ComparisonStats', () => {
  test('an empty aggregate has counts 0 and null statistics', () => {
    const s = new ComparisonStats('v2').snapshot();
    assert.equal(s.count, 0);
    assert.equal(s.meanTokenAgreement, null);
    assert.equal(s.p99LatencyDiffMs, null);
    assert.equal(s.divergence, null);
    assert.ok(Object.isFrozen(s));
  });

  test('errors count apart and do not enter agreement, log-prob or latency statistics', () => {
    const stats = new ComparisonStats(7);
    stats.add(compareOutputs(primary([1, 2], { logprobs: [-1, -1] }), shadow([1, 2], { tokenLogprobsOfPrimaryTokens: [-1, -1], latencyMs: 110 })));
    stats.add(compareOutputs(primary([1, 2], { logprobs: [-1, -1] }), shadow([1, 3], { tokenLogprobsOfPrimaryTokens: [-1, -3], latencyMs: 130 })));
    stats.add(compareOutputs(primary([1, 2]), shadow([], { error: 'timeout', latencyMs: 5 })));
    const s = stats.snapshot();
    assert.deepEqual({ version: s.version, count: s.count, errors: s.errors, compared: s.compared, logprobCount: s.logprobCount }, { version: 7, count: 3, errors: 1, compared: 2, logprobCount: 2 });
    close(s.errorRate, 1 / 3);
    close(s.identicalRate, 0.5);
    close(s.meanTokenAgreement, 0.75);
    close(s.divergence, 0.25);
    close(s.meanLogprobDiff, -0.5); // requests' means 0 and −1
    close(s.meanLatencyDiffMs, 20); // 10 and 30; the error's −95 left out
    close(s.p50LatencyDiffMs, 20);
  });

  test('Welford matches the two-pass mean and sample variance on awkward data', () => {
    const xs = Array.from({ length: 1000 }, (_, i) => 1e9 + (i % 7) * 0.1 + Math.sin(i));
    const w = new Welford();
    xs.forEach((x) => w.add(x));
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
    const variance = xs.reduce((a, x) => a + (x - mean) ** 2, 0) / (xs.length - 1);
    close(w.mean, mean, 1e-3);
    close(w.variance, variance, 1e-6);
  });

  test('latency quantiles are exact below the reservoir size and close beyond it, in bounded memory', () => {
    const exact = new Reservoir(1000, seededRandom(1));
    for (let i = 0; i <= 100; i++) exact.add(100 - i); // 0..100 in reverse
    close(exact.quantile(0.5), 50);
    close(exact.quantile(0.99), 99);
    const sampled = new ComparisonStats('v', { reservoirSize: 4096, random: seededRandom(3) });
    const random = seededRandom(4);
    for (let i = 0; i < 100_000; i++) sampled.add({ identical: true, tokenAgreement: 1, meanLogprobDiff: null, latencyDiffMs: random() * 1000, error: false });
    const s = sampled.snapshot();
    assert.ok(Math.abs(s.p50LatencyDiffMs! - 500) < 25, `p50 ${s.p50LatencyDiffMs}`);
    assert.ok(Math.abs(s.p99LatencyDiffMs! - 990) < 5, `p99 ${s.p99LatencyDiffMs}`);
  });

  test('a bad reservoir size is rejected', () => {
    assert.throws(() => new ComparisonStats('v', { reservoirSize: 0 }), /reservoirSize must be a positive integer, got 0/);
  });
});
