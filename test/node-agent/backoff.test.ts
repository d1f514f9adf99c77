/**
 * node-agent/backoff.ts: capped exponential backoff with jitter, tested with an injected random source so every
 * expectation is exact.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DEFAULT_BACKOFF, backoffDelayMs, type BackoffOptions } from '../../node-agent/backoff.ts';

const NO_JITTER: BackoffOptions = { baseMs: 500, capMs: 15_000, jitter: 0 };
/** random() = 0.5 makes the jitter factor exactly 1. */
const middle = () => 0.5;
const lowest = () => 0;
const highest = () => 1 - Number.EPSILON;

describe('backoffDelayMs', () => {
  test('the defaults are the documented ones: 0.5 s doubling to 15 s with ±20 % jitter', () => {
    assert.deepEqual({ ...DEFAULT_BACKOFF }, { baseMs: 500, capMs: 15_000, jitter: 0.2 });
    assert.equal(Object.isFrozen(DEFAULT_BACKOFF), true);
  });

  test('attempt 0 waits the base delay when the jitter is centred', () => {
    assert.equal(backoffDelayMs(0, DEFAULT_BACKOFF, middle), 500);
    assert.equal(backoffDelayMs(0, NO_JITTER, Math.random), 500);
  });

  test('attempt 0 stays within base ± jitter', () => {
    assert.equal(backoffDelayMs(0, DEFAULT_BACKOFF, lowest), 400);
    assert.equal(backoffDelayMs(0, DEFAULT_BACKOFF, highest), 600);
  });

  test('the delay doubles from the base with each attempt until it reaches the cap', () => {
    const delays = Array.from({ length: 9 }, (_, k) => backoffDelayMs(k, DEFAULT_BACKOFF, middle));
    assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 15_000, 15_000, 15_000, 15_000]);
  });

  test('no delay ever exceeds the cap, even with the largest jitter and huge attempt numbers', () => {
    for (const attempt of [5, 6, 10, 30, 31, 100, 1e6, Number.MAX_SAFE_INTEGER]) {
      const d = backoffDelayMs(attempt, DEFAULT_BACKOFF, highest);
      assert.ok(d <= DEFAULT_BACKOFF.capMs, `attempt ${attempt}: ${d}`);
      assert.ok(Number.isFinite(d));
    }
  });

  test('at the cap, jitter can only shorten the delay', () => {
    assert.equal(backoffDelayMs(20, DEFAULT_BACKOFF, highest), 15_000);
    assert.equal(backoffDelayMs(20, DEFAULT_BACKOFF, lowest), 12_000);
  });

  test('the delay is a whole number of milliseconds', () => {
    assert.equal(Number.isInteger(backoffDelayMs(3, { baseMs: 333, capMs: 100_000, jitter: 0.37 }, () => 0.123)), true);
  });

  test('with any random value, the delay lies within [1−jitter, 1+jitter] of min(cap, base·2^attempt), capped', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 60 }),
        fc.integer({ min: 1, max: 10_000 }),
        fc.integer({ min: 1, max: 1_000_000 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        (attempt, baseMs, capMs, jitter, r) => {
          const opts = { baseMs, capMs, jitter };
          const raw = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
          const d = backoffDelayMs(attempt, opts, () => r);
          assert.ok(d >= 0 && d <= capMs, `${d} within [0, ${capMs}]`);
          assert.ok(d >= Math.floor(raw * (1 - jitter)) && d <= Math.ceil(raw * (1 + jitter)), `${d} within jitter of ${raw}`);
        },
      ),
      { seed: 0xbac0ff, numRuns: 2000 },
    );
  });

  test('without jitter the delay does not depend on the random source', () => {
    for (let k = 0; k < 10; k++) {
      assert.equal(backoffDelayMs(k, NO_JITTER, lowest), backoffDelayMs(k, NO_JITTER, highest));
    }
  });

  test('the random source is consulted once per delay', () => {
    let calls = 0;
    backoffDelayMs(2, DEFAULT_BACKOFF, () => {
      calls++;
      return 0.5;
    });
    assert.equal(calls, 1);
  });
});
