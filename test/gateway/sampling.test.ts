/** The sampling pieces every backend shares (gateway/sampling.ts) and the streaming-safe stop-sequence cutter. */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { logSoftmax, sampleToken, tokenLogprob } from '../../gateway/sampling.ts';
import { seededRandom } from '../../common/random.ts';
import { StopSequenceCutter } from '../../gateway/stop-sequences.ts';
import type { GeneratedToken } from '../../gateway/inference-backend.ts';

describe('sampling', () => {
  test('a seeded stream repeats for the same seed and stream, and differs across seeds and streams', () => {
    const take = (seed: number, stream: number) => Array.from({ length: 8 }, seededRandom(seed, stream));
    assert.deepEqual(take(42, 0), take(42, 0));
    assert.notDeepEqual(take(42, 0), take(43, 0));
    assert.notDeepEqual(take(42, 0), take(42, 1));
    assert.notDeepEqual(take(2 ** 40, 0), take(0, 0), 'the high bits of a large seed count');
    for (const x of take(-7, 3)) assert.ok(x >= 0 && x < 1);
  });

  test('temperature 0 is argmax with ties to the lowest id, whatever the random stream', () => {
    assert.equal(sampleToken([1, 5, 5, 2], 0, 1, () => 0.99), 1);
  });

  test('top_p keeps only the smallest nucleus reaching it: a tiny top_p always picks the most likely token', () => {
    const logits = [0, 3, 1, 2.9];
    const random = seededRandom(1);
    for (let i = 0; i < 200; i++) assert.equal(sampleToken(logits, 1, 0.01, random), 1);
    const seen = new Set(Array.from({ length: 400 }, () => sampleToken(logits, 1, 1, random)));
    assert.deepEqual([...seen].sort(), [0, 1, 2, 3], 'top_p 1 reaches every token');
  });

  test('sampling frequencies follow softmax(logits / temperature)', () => {
    const logits = [0, Math.log(3)]; // p = 1/4, 3/4
    const random = seededRandom(9);
    let ones = 0;
    for (let i = 0; i < 20_000; i++) ones += sampleToken(logits, 1, 1, random);
    assert.ok(Math.abs(ones / 20_000 - 0.75) < 0.015, `${ones / 20_000}`);
  });

  test('log-softmax sums to probability 1, and top alternatives are sorted and include the chosen token', () => {
    const lp = logSoftmax([1, 2, 3, 4, 0.5]);
    assert.ok(Math.abs(lp.reduce((s, x) => s + Math.exp(x), 0) - 1) < 1e-12);
    const r = tokenLogprob(lp, 4, 2, (id) => `t${id}`);
    assert.deepEqual(r.top.map((t) => t.token), ['t3', 't2', 't4']);
    assert.equal(r.logprob, lp[4]);
    assert.deepEqual(tokenLogprob(lp, 3, 0, (id) => `t${id}`).top, [{ token: 't3', logprob: lp[3] }]);
  });
});

describe('stop sequences', () => {
  const tok = (text: string, id = 0): GeneratedToken => ({ id, text });
  /** Feeds token texts; returns each push's released text, whether it stopped, and the total. */
  function run(stops: string[], texts: string[]) {
    const cut = new StopSequenceCutter(stops);
    const steps: string[] = [];
    for (const t of texts) {
      const { released, stopped } = cut.push(tok(t));
      steps.push(released.map((r) => r.text).join(''));
      if (stopped) return { steps, stopped: true, text: steps.join('') };
    }
    steps.push(cut.flush().map((r) => r.text).join(''));
    return { steps, stopped: false, text: steps.join('') };
  }

  test('the text is cut just before the stop sequence, even when it spans tokens', () => {
    assert.deepEqual(run(['END'], ['ab', 'cE', 'N', 'Dxyz']), { steps: ['ab', '', '', 'c'], stopped: true, text: 'abc' });
  });

  test('text that might begin a stop sequence is held back, then released when it does not', () => {
    assert.deepEqual(run(['END'], ['a', 'E', 'N', 'x']), { steps: ['a', '', '', 'ENx', ''], stopped: false, text: 'aENx' });
  });

  test('tokens are released whole: a token whose end might begin a stop sequence is held with its text', () => {
    assert.deepEqual(run(['END'], ['aE', 'N', 'x']).steps, ['', '', 'aENx', '']);
  });

  test('the earliest of several stop sequences wins, and a stop inside one token is found', () => {
    assert.deepEqual(run(['zz', '\n'], ['one\ntwo zz']), { steps: ['one'], stopped: true, text: 'one' });
  });

  test('without stop sequences every token is released at once', () => {
    assert.deepEqual(run([], ['a', 'b']).steps, ['a', 'b', '']);
  });
});
