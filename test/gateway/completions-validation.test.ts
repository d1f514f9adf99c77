/** POST /v1/completions refuses bad requests with OpenAI's error body, naming the parameter at fault. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { harness, MODEL } from './support.ts';

/** [what, body (model added unless given), status, param, message pattern, OpenAI code] */
const CASES: Array<[string, Record<string, unknown>, number, string | null, RegExp, string | null]> = [
  ['a missing prompt', { prompt: undefined }, 400, 'prompt', /Missing required parameter: 'prompt'/, null],
  ['a missing model', { model: undefined, prompt: 'hi' }, 400, 'model', /Missing required parameter: 'model'/, null],
  ['max_tokens of 0 without echo', { prompt: 'hi', max_tokens: 0 }, 400, 'max_tokens', /expected an integer ≥ 1 \(0 only with echo\), got 0/, null],
  ['a negative max_tokens', { prompt: 'hi', max_tokens: -1 }, 400, 'max_tokens', /Invalid value for 'max_tokens'.*got -1/, null],
  ['a fractional max_tokens', { prompt: 'hi', max_tokens: 1.5 }, 400, 'max_tokens', /got 1\.5/, null],
  ['max_tokens beyond the context', { prompt: 'hello', max_tokens: 300 }, 400, 'max_tokens', /maximum context length is 256 tokens, however you requested 305 tokens \(5 in your prompt; 300 for the completion\)/, 'context_length_exceeded'],
  ['a prompt longer than the context', { prompt: 'x'.repeat(300) }, 400, 'prompt', /prompt is 300 tokens, longer than the model's context of 256 tokens/, 'context_length_exceeded'],
  ['temperature above 2', { prompt: 'hi', temperature: 2.5 }, 400, 'temperature', /expected a number between 0 and 2, got 2\.5/, null],
  ['a string temperature', { prompt: 'hi', temperature: 'hot' }, 400, 'temperature', /got "hot"/, null],
  ['top_p of 0', { prompt: 'hi', top_p: 0 }, 400, 'top_p', /greater than 0 and at most 1, got 0/, null],
  ['top_p above 1', { prompt: 'hi', top_p: 1.01 }, 400, 'top_p', /got 1\.01/, null],
  ['five stop sequences', { prompt: 'hi', stop: ['a', 'b', 'c', 'd', 'e'] }, 400, 'stop', /at most 4 non-empty strings/, null],
  ['an empty stop sequence', { prompt: 'hi', stop: '' }, 400, 'stop', /non-empty string/, null],
  ['n of 0', { prompt: 'hi', n: 0 }, 400, 'n', /between 1 and 16, got 0/, null],
  ['n above the limit', { prompt: 'hi', n: 17 }, 400, 'n', /got 17/, null],
  ['logprobs above the limit', { prompt: 'hi', logprobs: 21 }, 400, 'logprobs', /between 0 and 20, got 21/, null],
  ['a fractional seed', { prompt: 'hi', seed: 1.5 }, 400, 'seed', /safe integer/, null],
  ['a batch of two prompts', { prompt: ['one', 'two'] }, 400, 'prompt', /Batches of prompts are not supported.*got 2/, null],
  ['a batch of two token-id prompts', { prompt: [[1, 2], [3]] }, 400, 'prompt', /Batches/, null],
  ['an empty prompt', { prompt: '' }, 400, 'prompt', /prompt is empty/, null],
  ['an empty token array', { prompt: [] }, 400, 'prompt', /prompt is empty/, null],
  ['a prompt of the wrong type', { prompt: 42 }, 400, 'prompt', /expected a string, an array of token ids, or an array holding one of those, got 42/, null],
  ['a mixed prompt array', { prompt: [1, 'a'] }, 400, 'prompt', /expected a string, an array of token ids/, null],
  ['a token id outside the vocabulary', { prompt: [1, 96] }, 400, 'prompt', /Token id 96 .* vocabulary of 96 tokens/, null],
  ['a negative token id', { prompt: [-1] }, 400, 'prompt', /expected a string, an array of token ids/, null],
  ['an unknown field', { prompt: 'hi', temprature: 1 }, 400, 'temprature', /Unrecognized request argument supplied: temprature/, null],
  ['presence_penalty set', { prompt: 'hi', presence_penalty: 0.5 }, 400, 'presence_penalty', /'presence_penalty' is not supported.*got 0\.5/, 'unsupported_parameter'],
  ['frequency_penalty set', { prompt: 'hi', frequency_penalty: -1 }, 400, 'frequency_penalty', /not supported/, 'unsupported_parameter'],
  ['best_of above n', { prompt: 'hi', best_of: 3 }, 400, 'best_of', /not supported/, 'unsupported_parameter'],
  ['a logit_bias', { prompt: 'hi', logit_bias: { '5': 10 } }, 400, 'logit_bias', /not supported/, 'unsupported_parameter'],
  ['a suffix', { prompt: 'hi', suffix: 'end' }, 400, 'suffix', /not supported/, 'unsupported_parameter'],
  ['an unknown model', { model: 'gpt-17', prompt: 'hi' }, 404, 'model', /The model 'gpt-17' does not exist/, 'model_not_found'],
];

for (const [what, body, status, param, message, code] of CASES) {
  test(`${what} is refused with ${status} and OpenAI's error body`, async (t) => {
    const h = harness(t);
    const res = await h.gateway.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, ...body } });
    assert.equal(res.statusCode, status, res.body);
    const { error } = res.json();
    assert.deepEqual(Object.keys(error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(error.type, 'invalid_request_error');
    assert.equal(error.param, param);
    assert.equal(error.code, code);
    assert.match(error.message, message);
    assert.equal(h.fake.generateCalls, 0, 'nothing was generated');
  });
}

test('known parameters at their defaults and nulls are accepted, as OpenAI clients send them', async (t) => {
  const h = harness(t);
  const res = await h.complete({
    prompt: 'hi', max_tokens: null, temperature: null, top_p: null, stop: null, seed: null, n: 2, best_of: 2, logprobs: null, echo: null, stream: false,
    presence_penalty: 0, frequency_penalty: 0, logit_bias: {}, suffix: null, user: 'user-1', stream_options: null,
  });
  assert.equal(res.status, 200, res.body);
  assert.equal(res.json.choices.length, 2);
  assert.equal(res.json.choices[0].text.length, 16, 'max_tokens defaults to 16');
});

test('a body that is not JSON, or not an object, is a 400 in the same shape', async (t) => {
  const h = harness(t);
  for (const payload of ['{"model": ', '[1, 2]', '"text"']) {
    const res = await h.gateway.app.inject({ method: 'POST', url: '/v1/completions', headers: { 'content-type': 'application/json' }, payload });
    assert.equal(res.statusCode, 400, payload);
    assert.equal(res.json().error.type, 'invalid_request_error', payload);
  }
});

test('a body above the limit is a 413', async (t) => {
  const h = harness(t);
  const res = await h.gateway.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'x'.repeat(5 * 1024 * 1024) } });
  assert.equal(res.statusCode, 413);
  assert.equal(res.json().error.code, 'payload_too_large');
});

test('a backend failure is a 500 with a generic message; the detail stays in the log', async (t) => {
  const h = harness(t, { fake: { failWith: new Error('CUDA out of memory at /secret/path') } });
  const res = await h.complete({ prompt: 'hi' });
  assert.equal(res.status, 500);
  assert.equal(res.json.error.type, 'server_error');
  assert.doesNotMatch(res.json.error.message, /CUDA|secret/);
});
