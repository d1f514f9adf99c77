/** POST /v1/completions answers in OpenAI's shape, and sampling parameters do what they say (FakeBackend). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { harness, MODEL, topLogprobsInOrder } from './support.ts';
import { encodeJson, TopLogprobs } from '../../gateway/openai.ts';

test('a completion has exactly OpenAI\'s response shape', async (t) => {
  const h = harness(t);
  const before = Math.floor(Date.now() / 1000);
  const { status, json } = await h.complete({ prompt: 'Hello', max_tokens: 5, temperature: 0 });
  assert.equal(status, 200);
  assert.deepEqual(Object.keys(json).sort(), ['choices', 'created', 'id', 'model', 'object', 'usage']);
  assert.match(json.id, /^cmpl-[0-9a-f]{24}$/);
  assert.equal(json.object, 'text_completion');
  assert.equal(json.model, MODEL);
  assert.ok(Number.isInteger(json.created) && json.created >= before && json.created <= before + 5);
  assert.equal(json.choices.length, 1);
  const [c] = json.choices;
  assert.deepEqual(Object.keys(c).sort(), ['finish_reason', 'index', 'logprobs', 'text']);
  assert.equal(c.index, 0);
  assert.equal(c.logprobs, null);
  assert.equal(c.finish_reason, 'length');
  assert.equal(c.text.length, 5);
  assert.deepEqual(json.usage, { prompt_tokens: 5, completion_tokens: 5, total_tokens: 10 });
});

test('temperature 0 is greedy: the same text every time, whatever the seed', async (t) => {
  const h = harness(t);
  const texts = new Set<string>();
  for (const seed of [1, 2, 3, undefined]) texts.add((await h.complete({ prompt: 'The cat', max_tokens: 20, temperature: 0, seed })).json.choices[0].text);
  assert.equal(texts.size, 1);
  // Greedy picks the argmax at every step: check it against the toy model directly.
  const ids = h.fake.tokenize('The cat');
  let expected = '';
  for (let i = 0; i < 20; i++) {
    const logits = h.fake.logits(ids);
    const best = logits.indexOf(Math.max(...logits));
    ids.push(best);
    expected += h.fake.detokenize([best]);
  }
  assert.deepEqual([...texts], [expected]);
});

test('the same seed reproduces a sampled completion, and other seeds give other text', async (t) => {
  const h = harness(t);
  const run = async (seed: number) => (await h.complete({ prompt: 'Once', max_tokens: 24, temperature: 1, top_p: 0.9, seed })).json.choices[0].text;
  const a = await run(7);
  assert.equal(await run(7), a);
  const others = new Set([await run(8), await run(9), await run(10)]);
  assert.ok(!others.has(a) || others.size > 1, 'different seeds sample differently');
  assert.notEqual(await run(8), a);
});

test('a request without a seed gets one, returned in x-meshtrain-seed, that replays it exactly', async (t) => {
  const h = harness(t);
  const body = { prompt: 'Replay', max_tokens: 24, temperature: 1.2 };
  const first = await h.complete(body);
  const seed = Number(first.headers['x-meshtrain-seed']);
  assert.ok(Number.isSafeInteger(seed), String(first.headers['x-meshtrain-seed']));
  const replay = await h.complete({ ...body, seed });
  assert.equal(replay.json.choices[0].text, first.json.choices[0].text);
  assert.equal(replay.headers['x-meshtrain-seed'], String(seed));
});

test('a stop sequence cuts the text before it and sets finish_reason "stop"', async (t) => {
  const h = harness(t);
  const full = (await h.complete({ prompt: 'abc', max_tokens: 30, temperature: 0 })).json.choices[0].text as string;
  const stop = full.slice(10, 12); // a two-character sequence that greedy decoding will produce
  const cutAt = full.indexOf(stop);
  const res = await h.complete({ prompt: 'abc', max_tokens: 30, temperature: 0, stop: [stop, '\u0000never'] });
  assert.equal(res.json.choices[0].text, full.slice(0, cutAt));
  assert.equal(res.json.choices[0].finish_reason, 'stop');
  assert.equal(res.json.usage.completion_tokens, cutAt + stop.length, 'the stop sequence\'s tokens were sampled and are counted');
  const single = await h.complete({ prompt: 'abc', max_tokens: 30, temperature: 0, stop });
  assert.equal(single.json.choices[0].text, full.slice(0, cutAt), 'a single string works as well as an array');
});

test('reaching max_tokens sets finish_reason "length"', async (t) => {
  const h = harness(t);
  const { json } = await h.complete({ prompt: 'abc', max_tokens: 7, temperature: 0.8, seed: 3 });
  assert.equal(json.choices[0].finish_reason, 'length');
  assert.equal(json.choices[0].text.length, 7);
  assert.equal(json.usage.completion_tokens, 7);
});

test('logprobs list every token with its log-probability and sorted top alternatives that include it', async (t) => {
  const h = harness(t);
  const { json, body } = await h.complete({ prompt: 'Hi there', max_tokens: 12, temperature: 1, seed: 5, logprobs: 3 });
  const { text, logprobs: lp } = json.choices[0];
  const ordered = topLogprobsInOrder(body)[0]!;
  assert.deepEqual(Object.keys(lp).sort(), ['text_offset', 'token_logprobs', 'tokens', 'top_logprobs']);
  assert.equal(lp.tokens.length, 12);
  assert.equal(lp.tokens.join(''), text);
  lp.tokens.forEach((token: string, i: number) => {
    assert.equal(text.slice(lp.text_offset[i], lp.text_offset[i] + token.length), token);
    const lpI = lp.token_logprobs[i];
    assert.ok(lpI < 0 && Number.isFinite(lpI));
    const top = ordered[i]!; // as sent: JSON.parse would reorder digit tokens
    assert.ok(top.length === 3 || top.length === 4, 'three alternatives, plus the chosen token when it is not among them');
    for (let k = 1; k < top.length; k++) assert.ok(top[k - 1]![1] >= top[k]![1], 'most likely first');
    assert.equal(lp.top_logprobs[i][token], lpI, 'the chosen token is in top_logprobs with its own logprob');
  });
  // The log-probabilities are the model's: log-softmax of the toy logits at each step.
  const ids = h.fake.tokenize('Hi there');
  const logits = h.fake.logits(ids);
  const lse = Math.log(logits.reduce((s, x) => s + Math.exp(x), 0));
  assert.ok(Math.abs(lp.token_logprobs[0] - (logits[h.fake.tokenize(lp.tokens[0])[0]!]! - lse)) < 1e-9);
});

test('top_logprobs keep their order in the JSON even for integer-like tokens', () => {
  const top = new TopLogprobs({ token: 'a', logprob: -0.1, top: [{ token: 'a', logprob: -0.1 }, { token: '7', logprob: -2 }, { token: '"q"', logprob: -3 }] });
  assert.equal(encodeJson({ x: [top, null] }), '{"x":[{"a":-0.1,"7":-2,"\\"q\\"":-3},null]}');
  assert.equal(JSON.stringify(top), '{"7":-2,"a":-0.1,"\\"q\\"":-3}', 'plain JSON.stringify gives the same dictionary, unordered');
});

test('logprobs 0 gives each token\'s log-probability with only itself in top_logprobs', async (t) => {
  const h = harness(t);
  const { json } = await h.complete({ prompt: 'x', max_tokens: 4, temperature: 0, logprobs: 0 });
  const lp = json.choices[0].logprobs;
  lp.tokens.forEach((tok: string, i: number) => assert.deepEqual(lp.top_logprobs[i], { [tok]: lp.token_logprobs[i] }));
});

test('echo puts the prompt in front of the text, and with logprobs scores the prompt (first token null)', async (t) => {
  const h = harness(t);
  const plain = (await h.complete({ prompt: 'Echo me', max_tokens: 6, temperature: 0 })).json.choices[0].text;
  const { json } = await h.complete({ prompt: 'Echo me', max_tokens: 6, temperature: 0, echo: true, logprobs: 1 });
  const [c] = json.choices;
  assert.equal(c.text, `Echo me${plain}`);
  const lp = c.logprobs;
  assert.equal(lp.tokens.length, 7 + 6);
  assert.equal(lp.tokens.join(''), c.text);
  assert.equal(lp.token_logprobs[0], null);
  assert.equal(lp.top_logprobs[0], null);
  assert.ok(lp.token_logprobs.slice(1).every((x: number) => x < 0));
  assert.deepEqual(lp.text_offset, Array.from({ length: 13 }, (_, i) => i));
  assert.deepEqual(json.usage, { prompt_tokens: 7, completion_tokens: 6, total_tokens: 13 });
});

test('echo with max_tokens 0 scores the prompt without generating', async (t) => {
  const h = harness(t);
  const { status, json } = await h.complete({ prompt: 'score this', max_tokens: 0, echo: true, logprobs: 0 });
  assert.equal(status, 200);
  assert.equal(json.choices[0].text, 'score this');
  assert.equal(json.choices[0].logprobs.tokens.length, 10);
  assert.equal(json.usage.completion_tokens, 0);
});

test('n asks for that many independent choices, indexed in order', async (t) => {
  const h = harness(t);
  const { json } = await h.complete({ prompt: 'Many', max_tokens: 16, temperature: 1, seed: 11, n: 4 });
  assert.deepEqual(json.choices.map((c: { index: number }) => c.index), [0, 1, 2, 3]);
  assert.equal(new Set(json.choices.map((c: { text: string }) => c.text)).size, 4, 'each choice samples its own stream');
  assert.deepEqual(json.usage, { prompt_tokens: 4, completion_tokens: 64, total_tokens: 68 });
  const again = await h.complete({ prompt: 'Many', max_tokens: 16, temperature: 1, seed: 11, n: 4 });
  assert.deepEqual(again.json.choices, json.choices);
});

test('a prompt of token ids, or one wrapped in an array, means the same as its text', async (t) => {
  const h = harness(t);
  const ids = h.fake.tokenize('Token ids');
  const texts = [];
  for (const prompt of ['Token ids', ['Token ids'], ids, [ids]]) {
    const res = await h.complete({ prompt, max_tokens: 8, temperature: 0.7, seed: 2, echo: true });
    assert.equal(res.status, 200, res.body);
    texts.push(res.json.choices[0].text);
  }
  assert.equal(new Set(texts).size, 1);
  assert.ok(texts[0]!.startsWith('Token ids'));
});
