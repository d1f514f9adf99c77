/** Wald's SPRT for a Bernoulli rate (gateway/sprt.ts): boundaries hit at the hand-computed n, and operating characteristics. */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { evaluateSprt, rolloutDecision, sprt, sprtConfig, type SprtConfig, type SprtDecision } from '../../gateway/sprt.ts';
import { seededRandom } from '../../common/random.ts';

/** Feed a sequence like 'SSF' (S success, F failure) and return the first state that is not 'continue' (or the last). */
function run(config: SprtConfig, sequence: string) {
  const test = sprt(config);
  let state = test.decision();
  for (const c of sequence) {
    state = test.observe(c === 'S');
    if (state.decision !== 'continue') break;
  }
  return state;
}

describe('sprt', () => {
  // Hand computations.
  // A = {p0 .5, p1 .9, α = β = .05}: success +ln 1.8 = +0.5878, failure +ln 0.2 = −1.6094, bounds ±ln 19 = ±2.9444.
  // B = {p0 .9, p1 .99, α .01, β .1}: success +ln 1.1 = +0.09531, failure +ln 0.1 = −2.3026,
  //     upper ln 90 = 4.4998, lower ln(.1/.99) = −2.2925.
  const A = { p0: 0.5, p1: 0.9, alpha: 0.05, beta: 0.05 };
  const B = { p0: 0.9, p1: 0.99, alpha: 0.01, beta: 0.1 };
  const cases: Array<{ name: string; config: SprtConfig; sequence: string; decision: SprtDecision; n: number }> = [
    { name: 'A: all successes promote at n=6 (5 × 0.5878 = 2.939 falls just short of 2.944)', config: A, sequence: 'S'.repeat(20), decision: 'accept-h1', n: 6 },
    { name: 'A: all failures reject at n=2 (−3.219 ≤ −2.944)', config: A, sequence: 'F'.repeat(20), decision: 'accept-h0', n: 2 },
    { name: 'A: one failure among successes delays promotion to n=9 (8 × 0.5878 − 1.6094 = 3.093)', config: A, sequence: 'F' + 'S'.repeat(20), decision: 'accept-h1', n: 9 },
    { name: 'A: SFSF… drifts down by 1.0216 a pair and rejects at n=6 (−3.065)', config: A, sequence: 'SF'.repeat(10), decision: 'accept-h0', n: 6 },
    { name: 'A: five successes alone keep watching', config: A, sequence: 'SSSSS', decision: 'continue', n: 5 },
    { name: 'B: all successes promote at n=48 (47 × 0.09531 = 4.4797 < 4.4998)', config: B, sequence: 'S'.repeat(100), decision: 'accept-h1', n: 48 },
    { name: 'B: a first failure rejects at once (−2.3026 ≤ −2.2925)', config: B, sequence: 'F' + 'S'.repeat(10), decision: 'accept-h0', n: 1 },
    { name: 'B: a success then a failure keeps watching (−2.2073), a second failure rejects at n=3', config: B, sequence: 'SFF', decision: 'accept-h0', n: 3 },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const state = run(c.config, c.sequence);
      assert.equal(state.decision, c.decision);
      assert.equal(state.n, c.n);
    });
  }

  test('the bounds are ln((1−β)/α) and ln(β/(1−α)), and llr counts successes and failures', () => {
    const state = evaluateSprt(sprtConfig(A), 3, 2);
    assert.ok(Math.abs(state.upper - Math.log(19)) < 1e-12);
    assert.ok(Math.abs(state.lower + Math.log(19)) < 1e-12);
    assert.ok(Math.abs(state.llr - (2 * Math.log(1.8) + Math.log(0.2))) < 1e-12);
    assert.deepEqual({ n: state.n, successes: state.successes }, { n: 3, successes: 2 });
  });

  test('observations after a decision are ignored and the decision stays', () => {
    const t = sprt(A);
    for (let i = 0; i < 6; i++) t.observe(true);
    assert.equal(t.decision().decision, 'accept-h1');
    for (let i = 0; i < 10; i++) t.observe(false);
    assert.deepEqual({ decision: t.decision().decision, n: t.decision().n }, { decision: 'accept-h1', n: 6 });
  });

  test('the rollout mapping is promote / reject / keep-watching', () => {
    assert.equal(rolloutDecision('accept-h1'), 'promote');
    assert.equal(rolloutDecision('accept-h0'), 'reject');
    assert.equal(rolloutDecision({ decision: 'continue' }), 'keep-watching');
    assert.equal(rolloutDecision(run(A, 'FF')), 'reject');
  });

  test('the config is validated with precise messages and frozen', () => {
    const bad: Array<[Partial<SprtConfig> & Record<string, unknown>, RegExp]> = [
      [{ p0: 0 }, /p0 must be in \(0, 1\), got 0/],
      [{ p1: 1 }, /p1 must be in \(0, 1\), got 1/],
      [{ p0: 0.9, p1: 0.5 }, /p0 must be below p1.*p0=0.9 p1=0.5/],
      [{ p0: 0.5, p1: 0.5 }, /p0 must be below p1/],
      [{ alpha: 0 }, /alpha must be in \(0, 0.5\), got 0/],
      [{ alpha: 0.5 }, /alpha must be in \(0, 0.5\), got 0.5/],
      [{ beta: -0.1 }, /beta must be in \(0, 0.5\), got -0.1/],
      [{ beta: NaN }, /beta must be a finite number, got NaN/],
      [{ p1: '0.9' as unknown as number }, /p1 must be a finite number, got 0.9/],
      [{ gamma: 1 }, /unknown key 'gamma'/],
    ];
    for (const [over, message] of bad) assert.throws(() => sprt({ ...A, ...over } as SprtConfig), { name: 'RangeError', message }, JSON.stringify(over));
    const t = sprt(A);
    assert.ok(Object.isFrozen(t.config));
    assert.throws(() => { (t.config as { p0: number }).p0 = 0.1; }, TypeError);
  });

  // Operating characteristics: simulate many tests with a seeded stream and count how they end.
  const RUNS = 2000;
  function simulate(config: SprtConfig, rate: number, seed: number): { promote: number; reject: number; meanN: number } {
    const random = seededRandom(seed);
    let promote = 0, reject = 0, totalN = 0;
    for (let r = 0; r < RUNS; r++) {
      const t = sprt(config);
      let state = t.decision();
      for (let i = 0; i < 100_000 && state.decision === 'continue'; i++) state = t.observe(random() < rate);
      assert.notEqual(state.decision, 'continue', 'every run ends');
      if (state.decision === 'accept-h1') promote++; else reject++;
      totalN += state.n;
    }
    return { promote: promote / RUNS, reject: reject / RUNS, meanN: totalN / RUNS };
  }
  /** Three binomial standard errors of a rate near `p` over RUNS runs. */
  const tolerance = (p: number) => 3 * Math.sqrt((p * (1 - p)) / RUNS);
  const configs: Array<{ name: string; config: SprtConfig }> = [
    { name: 'agreement 0.5 vs 0.9, α=β=0.05', config: A },
    { name: 'success 0.9 vs 0.99, α=0.01, β=0.1', config: B },
    { name: 'success 0.95 vs 0.98, α=0.05, β=0.2', config: { p0: 0.95, p1: 0.98, alpha: 0.05, beta: 0.2 } },
  ];
  for (const { name, config } of configs) {
    test(`${name}: false promotes at p0 ≤ α and false rejects at p1 ≤ β (${RUNS} seeded runs each)`, () => {
      const atP0 = simulate(config, config.p0, 1);
      const atP1 = simulate(config, config.p1, 2);
      assert.ok(atP0.promote <= config.alpha + tolerance(config.alpha), `false-promote ${atP0.promote} > α ${config.alpha}`);
      assert.ok(atP1.reject <= config.beta + tolerance(config.beta), `false-reject ${atP1.reject} > β ${config.beta}`);
      // Far from the indifference zone the test is decisive.
      const good = simulate(config, Math.min(1 - 1e-9, config.p1 + (1 - config.p1) / 2), 3);
      assert.ok(good.promote > 1 - config.beta, `a clearly good version promotes (${good.promote})`);
    });
  }
});
