/**
 * Backpressure users can see, on the real GPT backend: a bounded queue that refuses at once (503, Retry-After) rather
 * than letting requests wait past their deadline, a per-request timeout (504), the queue-wait histogram, and a
 * client that goes away freeing its row at the next decode step.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { silentLogger } from '../../common/log.ts';
import { GPT } from '../../model/gpt.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { GptBackend } from '../../gateway/gpt-backend.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { requestTimeout, TIMEOUT_HEADER } from '../../gateway/generation.ts';
import { createGateway } from '../../gateway/server.ts';
import type { GenerateRequest } from '../../gateway/inference-backend.ts';
import { generateRequest } from './support.ts';

await tf.setBackend('cpu');
const tokenizer = await trainBpe([loadDemoCorpus().documents[5]!], { vocabSize: 300 });
const config = { vocabSize: 304, nCtx: 128, nLayer: 2, nHead: 2, nEmbd: 16 };

function backend(t: TestContext, rows: number[] = []): GptBackend {
  const b = new GptBackend(new GPT(config, { seed: 3 }), tokenizer, { id: 'tiny', createdS: 0, ownedBy: 'test' });
  b.configureBatching({ maxWaitMs: 0, onBatch: (size) => rows.push(size) });
  t.after(() => b.close());
  return b;
}

/** Waits for `ready`, polling between event-loop turns; fails the test (instead of hanging) after 10 s. */
async function until(ready: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = performance.now() + 10_000;
  while (!(await ready())) {
    if (performance.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

/** Sampled at temperature 1 from an untrained model (these tests expect it to run to max_tokens). */
const request = (maxTokens: number, over: Partial<GenerateRequest> = {}) =>
  generateRequest(tokenizer.encode('We the people'), { maxTokens, temperature: 1, ...over });

test('a request beyond the queue bound is refused at once with GW_ERR_OVERLOADED and a Retry-After; the ones queued still finish', async (t) => {
  const b = backend(t);
  b.configureBatching({ maxBatchSize: 1, maxQueue: 2 });
  const running = b.generate(request(20));
  await new Promise((r) => setImmediate(r)); // the first takes the only row
  const queued = [b.generate(request(4)), b.generate(request(4))];
  const started = performance.now();
  const refusal = b.refusal(request(4));
  assert.ok(refusal instanceof GatewayError && refusal.code === 'GW_ERR_OVERLOADED', String(refusal));
  await assert.rejects(b.generate(request(4)), (err: GatewayError) => err.code === 'GW_ERR_OVERLOADED' && err.statusCode === 503 && err.retryAfterS! >= 1);
  assert.ok(performance.now() - started < 50, 'refused without waiting for a row');
  assert.equal((b.refusal(request(4), { priority: 'background' }) as GatewayError | undefined)?.code, 'GW_ERR_OVERLOADED', 'background work counts every waiting sequence');
  for (const r of [running, ...queued]) assert.equal((await r).choices[0]!.finishReason, 'length');
  assert.equal(b.refusal(request(4)), undefined, 'room again once the queue drained');
});

test('free rows take a request whatever the queue bound: only what would wait counts against it', async (t) => {
  const b = backend(t);
  b.configureBatching({ maxBatchSize: 4, maxQueue: 1 });
  assert.equal(b.refusal(request(4, { n: 3 })), undefined, 'three choices, four free rows: none would wait');
  const result = await b.generate(request(4, { n: 3 }));
  assert.equal(result.choices.length, 3);
});

test('over HTTP a full queue is a 503 with Retry-After, streamed or not, and the queue wait is a histogram', async (t) => {
  const b = backend(t);
  const gateway = createGateway({ backends: new Map([['tiny', b]]), log: silentLogger, batching: { maxBatchSize: 1, maxQueue: 1 } });
  t.after(() => gateway.close());
  const post = (body: Record<string, unknown>) => gateway.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'tiny', prompt: 'We the people', temperature: 1, ...body } });
  const admitted = async () => Number(/meshtrain_gateway_queue_wait_seconds_count\{model="tiny"\} (\d+)/.exec((await gateway.app.inject({ method: 'GET', url: '/metrics' })).body)?.[1] ?? 0);
  const first = post({ max_tokens: 110 });
  await until(async () => (await admitted()) >= 1, 'the first request to take the only row');
  const second = post({ max_tokens: 2 }); // waits: the queue is full
  await until(() => b.refusal(request(1)) !== undefined, 'the second request to wait');
  for (const stream of [false, true]) {
    const refused = await post({ max_tokens: 2, stream });
    assert.equal(refused.statusCode, 503, refused.body);
    assert.match(String(refused.headers['retry-after']), /^\d+$/);
    assert.equal(refused.json().error.code, 'overloaded');
    assert.match(refused.json().error.message, /overloaded/);
  }
  assert.equal((await first).statusCode, 200);
  assert.equal((await second).statusCode, 200);
  const metrics = (await gateway.app.inject({ method: 'GET', url: '/metrics' })).body;
  const count = /meshtrain_gateway_queue_wait_seconds_count\{model="tiny"\} (\d+)/.exec(metrics);
  assert.equal(count?.[1], '2', 'one observation per admitted request');
});

test('a request that outlives its timeout header is stopped and answered 504; a bad header is a 400', async (t) => {
  const rows: number[] = [];
  const b = backend(t, rows);
  const gateway = createGateway({ backends: new Map([['tiny', b]]), log: silentLogger });
  t.after(() => gateway.close());
  // Seed 1 samples all 110 tokens on this model (no end-of-text): without a seed, about one request in three ended
  // by itself, once within the 30 ms deadline (CI, 2026-12-07), and answered 200.
  const post = (headers: Record<string, string>, maxTokens: number) =>
    gateway.app.inject({ method: 'POST', url: '/v1/completions', headers, payload: { model: 'tiny', prompt: 'We the people', temperature: 1, seed: 1, max_tokens: maxTokens } });
  const started = performance.now();
  const late = await post({ [TIMEOUT_HEADER]: '30' }, 110);
  assert.equal(late.statusCode, 504, late.body);
  assert.equal(late.json().error.code, 'timeout');
  assert.ok(performance.now() - started < 2000, 'stopped near its deadline, not after 110 tokens');
  assert.ok(rows.length < 100, `stopped after ${rows.length} decode steps of 110`);
  assert.equal((await post({ [TIMEOUT_HEADER]: '60000' }, 2)).statusCode, 200, 'a generous timeout changes nothing');
  const bad = await post({ [TIMEOUT_HEADER]: '-5' }, 2);
  assert.equal(bad.statusCode, 400);
  assert.match(bad.json().error.message, /x-meshtrain-timeout-ms/);
});

test('the timeout a request runs under is the shorter of its header and the gateway limit', () => {
  assert.equal(requestTimeout(undefined, undefined), undefined);
  assert.equal(requestTimeout(undefined, 500), 500);
  assert.equal(requestTimeout('200', 500), 200);
  assert.equal(requestTimeout('900', 500), 500);
  assert.equal(requestTimeout(' 42 ', undefined), 42);
  for (const bad of ['0', '1.5', 'abc', '', '99999999999']) assert.throws(() => requestTimeout(bad, undefined), /whole number of milliseconds/, bad);
});

test('a client that goes away frees its row at the next decode step', async (t) => {
  const rows: number[] = [];
  const b = backend(t, rows);
  const stay = b.generate(request(40));
  const abort = new AbortController();
  let tokens = 0;
  const leave = b.generate(request(40), {
    signal: abort.signal,
    onToken: () => {
      if (++tokens === 5) abort.abort(new Error('client gone'));
    },
  });
  await assert.rejects(leave, /client gone/);
  const at = rows.length; // decode steps run by the time the abort settled
  await stay;
  assert.ok(rows.slice(0, at).some((n) => n === 2), `both rows ran together first: ${rows.join(',')}`);
  assert.deepEqual(rows.slice(at + 1).filter((n) => n !== 1), [], `after at most one more step, one row: ${rows.join(',')}`);
});
