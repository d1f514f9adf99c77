/** `stream: true`: server-sent events that add up to the non-streamed completion, and stop when the client leaves. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CompletionResponse } from '../../gateway/openai.ts';
import { harness, MODEL, sseEvents } from './support.ts';

async function streamed(h: ReturnType<typeof harness>, body: Record<string, unknown>) {
  const res = await h.gateway.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, ...body, stream: true } });
  assert.equal(res.statusCode, 200, res.body);
  assert.match(String(res.headers['content-type']), /^text\/event-stream/);
  return sseEvents(res.body);
}

test('the chunks of a stream add up to the non-streamed completion with the same seed, and end with [DONE]', async (t) => {
  const h = harness(t);
  const body = { prompt: 'Stream this', max_tokens: 40, temperature: 0.9, seed: 21, n: 2, logprobs: 2, echo: true, stop: ['e ', 'zz'] };
  const whole = (await h.complete(body)).json as CompletionResponse;
  const events = await streamed(h, body);
  assert.equal(events.at(-1), '[DONE]');
  const chunks = events.slice(0, -1) as CompletionResponse[];
  const ids = new Set(chunks.map((c) => c.id));
  assert.equal(ids.size, 1, 'one id for the whole stream');
  for (const c of chunks) {
    assert.equal(c.object, 'text_completion');
    assert.equal(c.model, MODEL);
    assert.equal(c.choices.length, 1);
    assert.ok(!('usage' in c) || c.usage === undefined, 'no usage without stream_options.include_usage');
  }
  for (const choice of whole.choices) {
    const mine = chunks.map((c) => c.choices[0]!).filter((c) => c.index === choice.index);
    assert.ok(mine.length > 2, 'tokens arrive in several chunks');
    assert.ok(mine.slice(0, -1).every((c) => c.finish_reason === null), 'finish_reason is null until the last chunk');
    assert.equal(mine.at(-1)!.finish_reason, choice.finish_reason);
    assert.equal(mine.map((c) => c.text).join(''), choice.text);
    const lp = mine.filter((c) => c.logprobs).map((c) => c.logprobs!);
    assert.deepEqual(lp.flatMap((l) => l.tokens), choice.logprobs!.tokens);
    assert.deepEqual(lp.flatMap((l) => l.token_logprobs), choice.logprobs!.token_logprobs);
    assert.deepEqual(lp.flatMap((l) => l.text_offset), choice.logprobs!.text_offset);
    assert.deepEqual(JSON.parse(JSON.stringify(lp.flatMap((l) => l.top_logprobs))), JSON.parse(JSON.stringify(choice.logprobs!.top_logprobs)));
  }
});

test('a greedy stream without logprobs matches too, and stream_options.include_usage adds a usage chunk before [DONE]', async (t) => {
  const h = harness(t);
  const body = { prompt: 'abc', max_tokens: 10, temperature: 0 };
  const whole = (await h.complete(body)).json as CompletionResponse;
  const events = await streamed(h, { ...body, stream_options: { include_usage: true } });
  const chunks = events.slice(0, -1) as CompletionResponse[];
  const usage = chunks.at(-1)!;
  assert.deepEqual(usage.choices, []);
  assert.deepEqual(usage.usage, whole.usage);
  assert.equal(chunks.slice(0, -1).map((c) => c.choices[0]!.text).join(''), whole.choices[0]!.text);
  assert.ok(chunks.slice(0, -1).every((c) => c.choices[0]!.logprobs === null));
});

test('a streamed echo without logprobs starts each choice with the prompt', async (t) => {
  const h = harness(t);
  const body = { prompt: 'Echo', max_tokens: 6, temperature: 0, echo: true, n: 2 };
  const whole = (await h.complete(body)).json as CompletionResponse;
  const chunks = (await streamed(h, body)).slice(0, -1) as CompletionResponse[];
  for (const choice of whole.choices) {
    const mine = chunks.map((c) => c.choices[0]!).filter((c) => c.index === choice.index);
    assert.equal(mine[0]!.text, 'Echo');
    assert.equal(mine.map((c) => c.text).join(''), choice.text);
  }
});

test('a backend failure during a stream becomes an error event, then [DONE]', async (t) => {
  const h = harness(t, { fake: { failWith: new Error('boom') } });
  const events = await streamed(h, { prompt: 'x' });
  assert.equal(events.length, 2);
  assert.equal((events[0] as { error: { type: string } }).error.type, 'server_error');
  assert.equal(events[1], '[DONE]');
});

test('over a real socket, chunks arrive as they are generated, and closing the connection stops generation', async (t) => {
  const h = harness(t, { fake: { delayMsPerToken: 10 } });
  const { port } = await h.gateway.listen({ port: 0 });
  const url = `http://127.0.0.1:${port}/v1/completions`;

  // A short stream read to the end: the first chunk comes long before the last.
  const started = performance.now();
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt: 'hi', max_tokens: 20, stream: true, seed: 1 }) });
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  let firstAtMs: number | undefined;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    firstAtMs ??= performance.now() - started;
    text += decoder.decode(value, { stream: true });
  }
  const totalMs = performance.now() - started;
  assert.ok(firstAtMs! < totalMs / 2, `first chunk after ${firstAtMs} ms of ${totalMs} ms`);
  assert.equal(sseEvents(text).at(-1), '[DONE]');
  const sampledBefore = h.fake.tokensSampled;

  // A long stream abandoned after three chunks: the backend is aborted and stops sampling.
  const abort = new AbortController();
  const long = await fetch(url, { method: 'POST', signal: abort.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt: 'hi', max_tokens: 250, stream: true }) });
  const longReader = long.body!.getReader();
  for (let got = 0; got < 3; ) {
    const { value } = await longReader.read();
    got += (decoder.decode(value).match(/^data: /gm) ?? []).length;
  }
  abort.abort();
  for (let i = 0; i < 200 && h.fake.aborted === 0; i++) await sleep(10);
  assert.equal(h.fake.aborted, 1, 'the backend saw the abort');
  const sampled = h.fake.tokensSampled - sampledBefore;
  await sleep(100);
  assert.equal(h.fake.tokensSampled - sampledBefore, sampled, 'no tokens are sampled after the abort');
  assert.ok(sampled < 50, `${sampled} of 250 tokens were sampled`);

  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  assert.match(metrics, /meshtrain_gateway_client_aborts_total\{model="fake-char"\} 1/);
  assert.match(metrics, /meshtrain_gateway_requests_in_flight\{model="fake-char"\} 0/);
  assert.match(metrics, /meshtrain_gateway_request_duration_seconds_count\{model="fake-char",status="499",route="\/v1\/completions"\} 1/);
});

test('a client that gives up on a non-streamed completion also stops its generation', async (t) => {
  const h = harness(t, { fake: { delayMsPerToken: 10 } });
  const { port } = await h.gateway.listen({ port: 0 });
  await assert.rejects(
    fetch(`http://127.0.0.1:${port}/v1/completions`, {
      method: 'POST',
      signal: AbortSignal.timeout(150),
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'hi', max_tokens: 250 }),
    }),
  );
  for (let i = 0; i < 200 && h.fake.aborted === 0; i++) await sleep(10);
  assert.equal(h.fake.aborted, 1);
  assert.ok(h.fake.tokensSampled < 60, `${h.fake.tokensSampled} of 250 tokens were sampled`);
});
