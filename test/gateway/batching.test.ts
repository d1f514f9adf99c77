/** Dynamic batching in the GPT backend: concurrent requests share forward passes and each gets what it gets alone. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { silentLogger } from '../../common/log.ts';
import { GPT } from '../../model/gpt.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { admission, batchSettings, type BatchSettings } from '../../gateway/batch-scheduler.ts';
import { prefillGroups } from '../../gateway/batched-gpt.ts';
import { runCli } from '../../gateway/cli.ts';
import { GptBackend, type GptBackendOptions } from '../../gateway/gpt-backend.ts';
import type { GenerateRequest, GenerateResult, TokenEvent } from '../../gateway/inference-backend.ts';
import { assertSameOutput, generateRequest } from './support.ts';
import { createGateway } from '../../gateway/server.ts';

await tf.setBackend('cpu');
const tokenizer = await trainBpe([loadDemoCorpus().documents[5]!], { vocabSize: 300 });
const config = { vocabSize: 304, nCtx: 96, nLayer: 2, nHead: 2, nEmbd: 16 }; // 4 spare rows the tokenizer never uses

/** A backend on its own copy of the same tiny model (seeded: every copy has the same weights). */
function backend(t: TestContext, options: GptBackendOptions = {}): GptBackend {
  const b = new GptBackend(new GPT(config, { seed: 11 }), tokenizer, { id: 'tiny', createdS: 0, ownedBy: 'test' }, options);
  t.after(() => b.close());
  return b;
}

const request = (prompt: string, over: Partial<GenerateRequest> = {}): GenerateRequest => generateRequest(tokenizer.encode(prompt), over);

/** A stop sequence that will fire: two characters from the middle of what the request samples without one. */
async function stopInOwnText(r: GenerateRequest): Promise<GenerateRequest> {
  const probe = new GptBackend(new GPT(config, { seed: 11 }), tokenizer, { id: 'probe', createdS: 0, ownedBy: 'test' });
  const text = (await probe.generate(r)).choices[0]!.text;
  await probe.close();
  return { ...r, stop: [text.slice(12, 14), ...r.stop] };
}

/** Requests that differ in every setting: temperature, top_p, seed, n, max_tokens, stop, logprobs, echo, prompt length. */
const MIXED: GenerateRequest[] = [
  request('The state of the Union', { maxTokens: 12 }),
  request('We the people', { temperature: 1, seed: 3, maxTokens: 20, logprobs: 2 }),
  request('Congress shall make no law respecting an establishment of religion', { temperature: 0.7, topP: 0.9, seed: 4, n: 3, maxTokens: 9 }),
  request('Hello', { temperature: 1.3, seed: 5, echo: true, logprobs: 1, maxTokens: 6 }),
  request('The state of the Union', { maxTokens: 0, echo: true, logprobs: 3 }),
  await stopInOwnText(request('In order to form a more perfect union', { temperature: 1, seed: 9, stop: ['zq'], maxTokens: 30 })),
  request('the', { temperature: 0.5, seed: 10, n: 2, maxTokens: 16, logprobs: 0 }),
  request('Four score and seven years ago our fathers brought forth on this continent', { temperature: 1, seed: 12, maxTokens: 40 }),
];

/** Each request run by itself, one after another: the reference. */
async function alone(b: GptBackend, requests: GenerateRequest[]): Promise<GenerateResult[]> {
  const results: GenerateResult[] = [];
  for (const r of requests) results.push(await b.generate(r));
  return results;
}

test('concurrent requests with different temperatures, seeds, max_tokens, stop and logprobs each produce exactly what they produce alone', async (t) => {
  const reference = await alone(backend(t), MIXED);
  assert.ok(reference.some((r) => r.choices.some((c) => c.finishReason === 'stop')), 'a stop sequence ended some choice');
  assert.ok(reference.some((r) => r.choices.some((c) => c.finishReason === 'length')), 'max_tokens ended some choice');
  const sizes: number[] = [];
  const batched = backend(t, { onBatch: (size) => sizes.push(size) });
  const tensorsBefore = tf.memory().numTensors;
  const results = await Promise.all(MIXED.map((r) => batched.generate(r)));
  results.forEach((r, i) => assertSameOutput(r, reference[i]!, `request ${i}`));
  assert.ok(Math.max(...sizes) > 1, `batch sizes ${sizes}`);
  // The engine keeps one tensor of its own once it has decoded: wte transposed for the head (batched-gpt.ts).
  assert.equal(tf.memory().numTensors, tensorsBefore + 1, 'an idle backend holds no cache tensors, only its head weight');

  // Again, in another order with different neighbours: still the same per request.
  const reversed = await Promise.all([...MIXED].reverse().map((r) => batched.generate(r)));
  reversed.reverse().forEach((r, i) => assertSameOutput(r, reference[i]!, `request ${i} (reversed)`));
});

test('eight concurrent requests really share decode forwards, and requests arriving mid-generation join the running batch', async (t) => {
  const sizes: number[] = [];
  const b = backend(t, { onBatch: (size) => sizes.push(size) });
  const eight = Array.from({ length: 8 }, (_, i) => request('We the people of the United States', { temperature: 1, seed: 100 + i, maxTokens: 10 }));
  const results = await Promise.all(eight.map((r) => b.generate(r)));
  const tokens = results.reduce((sum, r) => sum + r.choices[0]!.sampledTokens, 0);
  assert.equal(sizes[0], 8, `the first decode forward carries all eight (sizes ${sizes})`);
  assert.ok(sizes.length < tokens / 4, `${sizes.length} decode forwards for ${tokens} tokens`);

  // Continuous batching: four start, four more arrive after the first tokens and are admitted at the next iteration.
  sizes.length = 0;
  const late: Array<Promise<GenerateResult>> = [];
  const first = eight.slice(0, 4).map((r, i) =>
    b.generate({ ...r, maxTokens: 30, stop: [] }, {
      onToken: () => {
        if (i === 0 && late.length === 0) late.push(...eight.slice(4).map((r2) => b.generate(r2)));
      },
    }),
  );
  const [early, joined] = [await Promise.all(first), await Promise.all(late)];
  assert.equal(sizes[0], 4);
  assert.ok(sizes.includes(8), `the late four joined the running four (sizes ${sizes})`);
  joined.forEach((r, i) => assert.deepEqual({ ...r, serviceMs: 0 }, { ...results[4 + i], serviceMs: 0 }, `late request ${i} equals its earlier run (the time it took aside)`));
  assert.equal(early.length, 4);
});

test('an aborted request rejects with its reason and leaves the others in its batch correct', async (t) => {
  const requests = MIXED.slice(0, 6);
  const reference = await alone(backend(t), requests);
  const b = backend(t, { maxBatchSize: 4 }); // some wait in the queue
  const tensorsBefore = tf.memory().numTensors;
  const running = new AbortController(); // aborted from its own stream, mid-generation
  const queued = new AbortController(); // aborted while still waiting for a batch slot
  let seen = 0;
  const victims = [
    b.generate(request('A victim mid-generation', { temperature: 1, seed: 77, maxTokens: 20 }), {
      signal: running.signal,
      onToken: () => {
        if (++seen === 3) running.abort(new Error('client went away mid-stream'));
      },
    }),
    b.generate(request('A victim still queued', { n: 2, maxTokens: 20 }), { signal: queued.signal }),
  ];
  const rejected = [assert.rejects(victims[0]!, /client went away mid-stream/), assert.rejects(victims[1]!, /client went away while queued/)];
  const others = requests.map((r) => b.generate(r));
  setImmediate(() => queued.abort(new Error('client went away while queued')));
  await Promise.all(rejected);
  assert.equal(seen, 3, 'no token reaches an aborted request');
  (await Promise.all(others)).forEach((r, i) => assertSameOutput(r, reference[i]!, `request ${i}`));
  assert.equal(tf.memory().numTensors, tensorsBefore + 1, 'aborted rows and prompts were freed (the engine keeps its head weight)');
  await assert.rejects(b.generate(request('We the people', { maxTokens: 90 })), { code: 'GW_ERR_CONTEXT_LENGTH' }, 'refused before it can fail a batch');
  const already = new AbortController();
  already.abort(new Error('gone before it started'));
  await assert.rejects(b.generate(request('x'), { signal: already.signal }), /gone before it started/);
});

test('with maxBatchSize 1 every forward carries one sequence and requests still produce what they produce alone', async (t) => {
  const reference = await alone(backend(t), MIXED);
  const sizes: number[] = [];
  const b = backend(t, { maxBatchSize: 1, onBatch: (size) => sizes.push(size) });
  assert.deepEqual(b.batching, { maxBatchSize: 1, maxWaitMs: 2, maxQueue: 256, prefillChunk: 512 });
  const results = await Promise.all(MIXED.map((r) => b.generate(r)));
  results.forEach((r, i) => assertSameOutput(r, reference[i]!, `request ${i}`));
  assert.ok(sizes.length > 0 && sizes.every((s) => s === 1), `sizes ${sizes}`);
});

test('streaming works while batched: each choice\'s events add up to its text, prompt scores come first, requests interleave', async (t) => {
  const b = backend(t);
  const order: string[] = [];
  const runs = MIXED.map((r, i) => {
    const streamed = new Map<number, string>();
    let promptScoredAt = -1;
    const result = b.generate(r, {
      onPromptLogprobs: (p) => {
        assert.equal(p.length, r.promptIds.length);
        promptScoredAt = order.length;
        order.push(`${i}:prompt`);
      },
      onToken: (e: TokenEvent) => {
        assert.ok(!r.echo || r.logprobs === undefined || promptScoredAt >= 0, 'prompt log-probabilities come before any token');
        order.push(`${i}:${e.choice}`);
        streamed.set(e.choice, (streamed.get(e.choice) ?? '') + e.tokens.map((tk) => tk.text).join(''));
      },
    });
    return { result, streamed };
  });
  for (const { result, streamed } of runs) {
    for (const c of (await result).choices) assert.equal(streamed.get(c.index) ?? '', c.text);
  }
  const firstOfLast = order.findIndex((o) => o.startsWith('7:'));
  const lastOfFirst = order.findLastIndex((o) => o.startsWith('1:'));
  assert.ok(firstOfLast < lastOfFirst, 'the last request streamed before the second one finished');
});

test('admission starts a full batch at once, waits up to maxWaitMs for company when idle, and never stalls running sequences', () => {
  const s: BatchSettings = { maxBatchSize: 4, maxWaitMs: 2, maxQueue: 256, prefillChunk: 512 };
  const cases: Array<[{ running: number; waiting: number; oldestWaitMs: number }, ReturnType<typeof admission>]> = [
    [{ running: 0, waiting: 0, oldestWaitMs: 0 }, { kind: 'admit', count: 0 }],
    [{ running: 0, waiting: 1, oldestWaitMs: 0.5 }, { kind: 'wait', ms: 1.5 }],
    [{ running: 0, waiting: 3, oldestWaitMs: 2 }, { kind: 'admit', count: 3 }],
    [{ running: 0, waiting: 4, oldestWaitMs: 0 }, { kind: 'admit', count: 4 }],
    [{ running: 0, waiting: 9, oldestWaitMs: 0 }, { kind: 'admit', count: 4 }],
    [{ running: 2, waiting: 1, oldestWaitMs: 0 }, { kind: 'admit', count: 1 }],
    [{ running: 2, waiting: 5, oldestWaitMs: 0 }, { kind: 'admit', count: 2 }],
    [{ running: 4, waiting: 5, oldestWaitMs: 100 }, { kind: 'admit', count: 0 }],
    [{ running: 6, waiting: 1, oldestWaitMs: 0 }, { kind: 'admit', count: 0 }], // maxBatchSize lowered while running
  ];
  for (const [state, expected] of cases) assert.deepEqual(admission(state, s), expected, JSON.stringify(state));
  assert.deepEqual(admission({ running: 0, waiting: 1, oldestWaitMs: 0 }, { maxBatchSize: 1, maxWaitMs: 2 }), { kind: 'admit', count: 1 });
});

test('prompts of similar lengths are prefilled in one forward, very different ones and very long ones apart', () => {
  assert.deepEqual(prefillGroups([10]), [[0]]);
  // Longest first: 48 and 40 pad to 50 within a quarter; 12 starts a group, 9 joins (≤ 8 positions), 3 does not.
  assert.deepEqual(prefillGroups([50, 12, 48, 40, 3, 9]), [[0, 2, 3], [1, 5], [4]]);
  assert.deepEqual(prefillGroups([1024, 1024, 1024, 1024, 1024, 1024]), [[0, 1, 2, 3], [4, 5]], 'rows × T² ≤ 2²² attention scores per head');
});

test('batch settings default to 16 sequences, 2 ms and a queue of 256, and out-of-range values are refused with precise messages', async () => {
  assert.deepEqual(batchSettings(), { maxBatchSize: 16, maxWaitMs: 2, maxQueue: 256, prefillChunk: 512 });
  assert.throws(() => batchSettings({ prefillChunk: 0 }), /prefillChunk must be an integer in \[1, 1048576\], got 0/);
  assert.throws(() => batchSettings({ maxQueue: 0 }), /maxQueue must be an integer in \[1, 1000000\], got 0/);
  assert.ok(Object.isFrozen(batchSettings({ maxBatchSize: 3 })));
  assert.throws(() => batchSettings({ maxBatchSize: 0 }), /maxBatchSize must be an integer in \[1, 1024\], got 0/);
  assert.throws(() => batchSettings({ maxBatchSize: 2.5 }), /got 2.5/);
  assert.throws(() => batchSettings({ maxWaitMs: -1 }), /maxWaitMs must be a number of ms in \[0, 10000\], got -1/);
  assert.throws(() => batchSettings({ maxBatchSise: 3 } as never), /unknown key 'maxBatchSise'/);
  let err = '';
  const code = await runCli(['serve', '--fake', '--max-batch-size', '0'], { log: silentLogger, err: (text) => (err += text), out: () => assert.fail('nothing should start') });
  assert.equal(code, 2);
  assert.match(err, /--max-batch-size must be an integer in \[1, 1024\], got '0'/);
  err = '';
  assert.equal(await runCli(['serve', '--fake', '--max-batch-wait-ms', 'soon'], { log: silentLogger, err: (text) => (err += text), out: () => assert.fail() }), 2);
  assert.match(err, /--max-batch-wait-ms must be an integer in \[0, 10000\], got 'soon'/);
});

test('the gateway hands its batch settings to the backend and exposes batch sizes on /metrics', async (t) => {
  const b = new GptBackend(new GPT(config, { seed: 11 }), tokenizer, { id: 'tiny', createdS: 0, ownedBy: 'test' });
  const gateway = createGateway({ backends: new Map([['tiny', b]]), log: silentLogger, batching: { maxBatchSize: 4 } });
  t.after(() => gateway.close());
  assert.deepEqual(b.batching, { maxBatchSize: 4, maxWaitMs: 2, maxQueue: 256, prefillChunk: 512 }, 'the wait not given keeps the backend\'s own');
  const answers = await Promise.all(
    Array.from({ length: 6 }, (_, i) =>
      gateway.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'tiny', prompt: 'We the people', max_tokens: 6, seed: i } }),
    ),
  );
  for (const a of answers) assert.equal(a.statusCode, 200, a.body);
  const metrics = (await gateway.app.inject({ url: '/metrics' })).body;
  assert.match(metrics, /# TYPE meshtrain_gateway_batch_size histogram/);
  const count = Number(/meshtrain_gateway_batch_size_count\{model="tiny"\} (\d+)/.exec(metrics)?.[1]);
  const atMost4 = Number(/meshtrain_gateway_batch_size_bucket\{le="4",model="tiny"\} (\d+)/.exec(metrics)?.[1]);
  assert.ok(count > 0 && atMost4 === count, `every forward carried at most 4 sequences:\n${metrics.split('\n').filter((l) => l.includes('batch_size')).join('\n')}`);
  const sum = Number(/meshtrain_gateway_batch_size_sum\{model="tiny"\} (\d+)/.exec(metrics)?.[1]);
  assert.ok(sum / count > 1, 'requests were batched');
  assert.throws(() => createGateway({ backends: new Map(), log: silentLogger, batching: { maxWaitMs: -5 } }), /maxWaitMs must be/);
});
