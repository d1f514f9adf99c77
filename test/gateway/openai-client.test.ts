/** The official `openai` npm client, unchanged, against the gateway on a real loopback port. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { silentLogger } from '../../common/log.ts';
import { FakeBackend } from '../../gateway/fake-backend.ts';
import { createGateway } from '../../gateway/server.ts';

async function served(t: import('node:test').TestContext) {
  const fake = new FakeBackend({ id: 'fake-char' });
  const plain = new FakeBackend({ id: 'no-template', chat: null }); // a model with no chat template
  const gateway = createGateway({ backends: new Map([[fake.info.id, fake], [plain.info.id, plain]]), log: silentLogger, apiKey: 'sk-test' });
  t.after(() => gateway.close());
  const { port } = await gateway.listen({ port: 0, host: '127.0.0.1' });
  return new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'sk-test', maxRetries: 0 });
}

test('the openai client lists models and creates completions, with logprobs and stop', async (t) => {
  const client = await served(t);
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['fake-char', 'no-template']);
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

test('the openai client creates chat completions, whole and streamed, and the stream adds up to the whole', async (t) => {
  const client = await served(t);
  const messages = [{ role: 'system' as const, content: 'Be brief.' }, { role: 'user' as const, content: [{ type: 'text' as const, text: 'Hello' }] }];
  const whole = await client.chat.completions.create({ model: 'fake-char', messages, max_completion_tokens: 24, temperature: 0.7, seed: 5, n: 2, logprobs: true, top_logprobs: 2 });
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.choices.length, 2);
  for (const c of whole.choices) {
    assert.equal(c.message.role, 'assistant');
    assert.ok(['stop', 'length'].includes(c.finish_reason));
    assert.equal(c.logprobs!.content!.map((l) => l.token).join(''), c.message.content);
    assert.ok(c.logprobs!.content!.every((l) => l.top_logprobs.length === 2));
  }
  const stream = await client.chat.completions.create({ model: 'fake-char', messages, max_completion_tokens: 24, temperature: 0.7, seed: 5, n: 2, stream: true, stream_options: { include_usage: true } });
  const text = ['', ''];
  const finish: Array<string | null> = [null, null];
  let usage: unknown;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    for (const c of chunk.choices) {
      text[c.index] += c.delta.content ?? '';
      finish[c.index] = c.finish_reason ?? finish[c.index]!;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.deepEqual(text, whole.choices.map((c) => c.message.content));
  assert.deepEqual(finish, whole.choices.map((c) => c.finish_reason));
  assert.deepEqual(usage, whole.usage);
});

test('the openai client gets a BadRequestError for chat with a model that has no chat template', async (t) => {
  const client = await served(t);
  await assert.rejects(client.chat.completions.create({ model: 'no-template', messages: [{ role: 'user', content: 'hi' }] }), (err: unknown) => {
    assert.ok(err instanceof OpenAI.BadRequestError);
    assert.equal(err.param, 'model');
    assert.match(err.message, /no chat template/);
    return true;
  });
});
