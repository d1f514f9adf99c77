/** The official `openai` npm client, unchanged, against the gateway on a real loopback port. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { silentLogger } from '../../common/log.ts';
import { FakeBackend } from '../../gateway/fake-backend.ts';
import { createGateway } from '../../gateway/server.ts';

async function served(t: import('node:test').TestContext) {
  const fake = new FakeBackend({ id: 'fake-char' });
  const gateway = createGateway({ backends: new Map([[fake.info.id, fake]]), log: silentLogger, apiKey: 'sk-test' });
  t.after(() => gateway.close());
  const { port } = await gateway.listen({ port: 0, host: '127.0.0.1' });
  return new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'sk-test', maxRetries: 0 });
}

test('the openai client lists models and creates completions, with logprobs and stop', async (t) => {
  const client = await served(t);
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['fake-char']);
  const c = await client.completions.create({ model: 'fake-char', prompt: 'Hello', max_tokens: 12, temperature: 0, logprobs: 2, seed: 3 });
  assert.equal(c.object, 'text_completion');
  assert.equal(c.choices.length, 1);
  assert.ok(['stop', 'length'].includes(c.choices[0]!.finish_reason));
  assert.equal(c.choices[0]!.logprobs!.tokens!.length, c.usage!.completion_tokens);
  assert.equal(c.usage!.total_tokens, c.usage!.prompt_tokens + c.usage!.completion_tokens);
  const again = await client.completions.create({ model: 'fake-char', prompt: 'Hello', max_tokens: 12, temperature: 0, logprobs: 2, seed: 3 });
  assert.equal(again.choices[0]!.text, c.choices[0]!.text, 'greedy is deterministic');
});

test('the openai client streams a completion whose chunks add up to the non-streamed text', async (t) => {
  const client = await served(t);
  const whole = await client.completions.create({ model: 'fake-char', prompt: 'Stream me', max_tokens: 20, temperature: 0.9, seed: 42 });
  const stream = await client.completions.create({ model: 'fake-char', prompt: 'Stream me', max_tokens: 20, temperature: 0.9, seed: 42, stream: true });
  let text = '';
  let finish: string | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.text ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, whole.choices[0]!.text);
  assert.ok(finish === 'length' || finish === 'stop');
});

test('the openai client surfaces the gateway errors as its own typed errors', async (t) => {
  const client = await served(t);
  await assert.rejects(client.completions.create({ model: 'no-such-model', prompt: 'x' }), (err: unknown) => err instanceof OpenAI.NotFoundError);
  await assert.rejects(client.completions.create({ model: 'fake-char', prompt: 'x', max_tokens: 100_000 }), (err: unknown) => err instanceof OpenAI.BadRequestError);
  const wrongKey = new OpenAI({ baseURL: client.baseURL, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(wrongKey.models.list(), (err: unknown) => err instanceof OpenAI.AuthenticationError);
});
