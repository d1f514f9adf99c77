import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { exactMatch, greedy, preferenceEval, replyLogprobs, scoreRatio, type ChatRecord, type PreferenceRecord } from '../../model/eval-suites.ts';
import { renderChat, renderPrompt } from '../../model/chat-template.ts';
import { GPT } from '../../model/gpt.ts';
import { Tokenizer } from '../../model/tokenizer.ts';

const CONFIG = { vocabSize: 512, nCtx: 64, nLayer: 1, nHead: 2, nEmbd: 32 };

describe('evaluation suites', () => {
  let tokenizer: Tokenizer, model: GPT, other: GPT;
  before(async () => {
    await tf.setBackend('cpu');
    tokenizer = Tokenizer.fromJSON(JSON.parse(readFileSync(new URL('./fixtures/tokenizer-512.json', import.meta.url), 'utf8')));
    model = new GPT(CONFIG, { seed: 1 });
    other = new GPT(CONFIG, { seed: 2 });
  });
  after(() => {
    model.dispose();
    other.dispose();
  });

  const prompts = ['Reverse: red cat sky', 'Greet: anna', 'What is two plus two?', 'Say hi'];
  /** Records whose expected response is exactly what `m` greedily answers. */
  const answered = (m: GPT): Promise<ChatRecord[]> => Promise.all(prompts.map(async (p) => {
    const prompt = [{ role: 'user' as const, content: p }];
    return { kind: 'chat' as const, prompt, response: tokenizer.decode(await greedy(m, renderPrompt(prompt, tokenizer), tokenizer.endOfText!, 6)) };
  }));

  test('exact match counts the answers a model gives greedily, and a changed answer as a miss', async () => {
    const records = await answered(model);
    assert.equal((await exactMatch(model, tokenizer, records, { maxNewTokens: 6, maxExamples: 100 })).exactMatch, 1);
    const perturbed = records.map((r, i) => (i % 2 ? { ...r, response: `${r.response} not this` } : r));
    const half = await exactMatch(model, tokenizer, perturbed, { maxNewTokens: 6, maxExamples: 100, samples: 2 });
    assert.equal(half.exactMatch, 0.5);
    assert.equal(half.examples, 4);
    assert.equal(half.samples.length, 2);
    assert.equal(half.samples[1]!.expected, perturbed[1]!.response.trim());
    assert.equal((await exactMatch(model, tokenizer, perturbed, { maxNewTokens: 6, maxExamples: 1 })).examples, 1, 'maxExamples caps the records used');
  });

  test('greedy decoding stops at maxNewTokens and leaves no room past the context', async () => {
    const prompt = renderPrompt([{ role: 'user', content: 'Say hi' }], tokenizer);
    assert.ok((await greedy(model, prompt, -1, 5)).length === 5, 'no end-of-text id: stops at maxNewTokens');
    assert.equal((await greedy(model, prompt, -1, 1000)).length, CONFIG.nCtx - prompt.length + 1, 'stops when the context is full (the last token is predicted, not fed back)');
    assert.deepEqual(await greedy(model, Array.from({ length: CONFIG.nCtx }, () => 1), -1, 5), [], 'a prompt filling the context gets no answer');
  });

  test('replies scored in one padded batch score as they do one at a time', async () => {
    const seqs = ['hi', 'a much longer reply than the others', 'ok then'].map((r) => renderChat([{ role: 'user', content: 'Say hi' }, { role: 'assistant', content: r }], tokenizer));
    const batched = await replyLogprobs(model, seqs);
    for (const [i, s] of seqs.entries()) {
      const alone = await replyLogprobs(model, [s]);
      assert.ok(Math.abs(alone.logp[0]! - batched.logp[i]!) < 1e-3, `row ${i}: ${alone.logp[0]} vs ${batched.logp[i]}`);
      assert.equal(alone.tokens[0], batched.tokens[i]);
      assert.equal(alone.tokens[0], s.trained.reduce((a, b) => a + b, 0), 'the reply and its end-of-text');
    }
  });

  const pairs: PreferenceRecord[] = ['anna', 'bob', 'carl'].map((n) => ({ kind: 'preference', prompt: [{ role: 'user', content: `Greet: ${n}` }], chosen: `hello ${n}`, rejected: `hi ${n}` }));

  test('a policy equal to its reference has zero reward margin and accuracy and no perplexity increase', async () => {
    const r = await preferenceEval(model, model, tokenizer, pairs, 0.5);
    assert.equal(r.rewardMargin, 0);
    assert.equal(r.rewardAccuracy, 0);
    assert.equal(r.perplexityIncrease, 0);
    assert.equal(r.examples, 3);
    assert.ok(r.chosenPerplexity > 1 && r.chosenPerplexity === r.referenceChosenPerplexity);
    assert.ok([0, 1 / 3, 2 / 3, 1].includes(r.winRate));
  });

  test('swapping chosen and rejected flips the win rate and negates the reward margin', async () => {
    const a = await preferenceEval(model, other, tokenizer, pairs, 0.5);
    const b = await preferenceEval(model, other, tokenizer, pairs.map((p) => ({ ...p, chosen: p.rejected, rejected: p.chosen })), 0.5);
    assert.ok(Math.abs(a.winRate + b.winRate - 1) < 1e-9, `${a.winRate} + ${b.winRate}`);
    assert.ok(Math.abs(a.rewardMargin + b.rewardMargin) < 1e-4, `${a.rewardMargin} vs ${b.rewardMargin}`);
    assert.notEqual(a.rewardMargin, 0);
  });

  test('a student scored against itself has a score ratio of 1, on chat records and on text', async () => {
    const chat = await scoreRatio(model, model, tokenizer, { records: await answered(model) }, { maxNewTokens: 6, maxExamples: 100 });
    assert.deepEqual(chat, { scoreRatio: 1, studentScore: 1, teacherScore: 1, examples: 4 });
    const windows = [0, 1].map((k) => Int32Array.from(tokenizer.encode(`the quick brown fox ${k} jumps over the lazy dog again and again`)));
    const text = await scoreRatio(model, model, tokenizer, { windows }, { maxNewTokens: 6, maxExamples: 100 });
    assert.equal(text.scoreRatio, 1);
    assert.ok(text.studentScore > 1, 'text scores are perplexities');
    const worse = await scoreRatio(other, model, tokenizer, { records: await answered(model) }, { maxNewTokens: 6, maxExamples: 100 });
    assert.ok(worse.scoreRatio < 1 && worse.teacherScore === 1, `another model scores below its teacher: ${JSON.stringify(worse)}`);
  });
});
