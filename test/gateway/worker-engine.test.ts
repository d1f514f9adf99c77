/**
 * The GPT backend as the gateway builds it (gptBackendFactory): forward passes in a worker thread (worker-engine.ts,
 * engine-worker.ts), scheduling and sampling on the calling thread. It must answer exactly what the same model
 * answers on the calling thread, batched and chunked alike, and carry errors across with their codes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { GPT } from '../../model/gpt.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { GptBackend, gptBackendFactory } from '../../gateway/gpt-backend.ts';
import { DirRegistrySource } from '../../gateway/registry-source.ts';
import { errorOfFailure } from '../../gateway/engine-messages.ts';
import { threadFailure } from '../../protocol/define-errors.ts';
import { WorkerEngine } from '../../gateway/worker-engine.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { ModelError } from '../../model/errors.ts';
import type { GenerateRequest, GenerateResult, TokenEvent } from '../../gateway/inference-backend.ts';
import { makeRegistry } from '../../bench/support/gateway-fixture.ts';
import { assertSameOutput, equivalenceRequests } from './support.ts';

await tf.setBackend('cpu');
const tokenizer = await trainBpe([loadDemoCorpus().documents[5]!], { vocabSize: 300 });
const config = { vocabSize: tokenizer.vocabSize, nCtx: 96, nLayer: 2, nHead: 2, nEmbd: 16 };
const REQUESTS = equivalenceRequests((text) => tokenizer.encode(text));

test('a model in a worker thread answers what the same model answers on this thread: alone, batched, chunked, streamed', async (t) => {
  const data = mkdtempSync(join(tmpdir(), 'gw-worker-'));
  t.after(() => rmSync(data, { recursive: true, force: true }));
  const { registry } = await makeRegistry(data, 'tiny', config, tokenizer, [11]);
  const v = await new DirRegistrySource(registry).load('tiny', 1);
  const worker = await gptBackendFactory(v.files, v.meta, { backend: 'cpu' }) as GptBackend;
  t.after(() => worker.close());
  assert.equal(worker.computeBackend, 'cpu');
  assert.equal(worker.kvCache.engine, 'paged');
  const here = new GptBackend(new GPT(config, { seed: 11 }), tokenizer, { id: 'tiny', createdS: 0, ownedBy: 'test' });
  t.after(() => here.close());

  const reference: GenerateResult[] = [];
  for (const r of REQUESTS) reference.push(await here.generate(r));
  for (const [i, r] of REQUESTS.entries()) assertSameOutput(await worker.generate(r), reference[i]!, `alone, request ${i}`);
  (await Promise.all(REQUESTS.map((r) => worker.generate(r)))).forEach((r, i) => assertSameOutput(r, reference[i]!, `batched, request ${i}`));
  worker.configureBatching({ prefillChunk: 4 });
  const events: TokenEvent[] = [];
  const streamed = await worker.generate(REQUESTS[2]!, { onToken: (e) => events.push(e) });
  assertSameOutput(streamed, reference[2]!, 'chunked and streamed');
  for (const c of streamed.choices) assert.equal(events.filter((e) => e.choice === c.index).flatMap((e) => e.tokens.map((x) => x.text)).join(''), c.text);
  assert.ok((worker.kvCache as { bytes: number }).bytes > 0, 'the worker reports its cache');

  const aborted = new AbortController();
  const gone = worker.generate({ ...REQUESTS[0]!, maxTokens: 60 }, { signal: aborted.signal, onToken: () => aborted.abort(new Error('client went away')) });
  await assert.rejects(gone, /client went away/);
  assertSameOutput(await worker.generate(REQUESTS[1]!), reference[1]!, 'after an abort');
});

test('versions share the compute thread: each answers with its own weights, and closing one leaves the other serving', async (t) => {
  const data = mkdtempSync(join(tmpdir(), 'gw-worker-'));
  t.after(() => rmSync(data, { recursive: true, force: true }));
  const { registry } = await makeRegistry(data, 'tiny', config, tokenizer, [11, 12]);
  const source = new DirRegistrySource(registry);
  const [v1, v2] = [await source.load('tiny', 1), await source.load('tiny', 2)];
  const [a, b] = await Promise.all([gptBackendFactory(v1.files, v1.meta, { backend: 'cpu' }), gptBackendFactory(v2.files, v2.meta, { backend: 'cpu' })]) as [GptBackend, GptBackend];
  t.after(() => b.close());
  const here = [11, 12].map((seed) => new GptBackend(new GPT(config, { seed }), tokenizer, { id: 'tiny', createdS: 0, ownedBy: 'test' }));
  t.after(() => Promise.all(here.map((h) => h.close())));
  const r = REQUESTS[1]!;
  const [wantA, wantB] = [await here[0]!.generate(r), await here[1]!.generate(r)];
  assert.notDeepEqual(wantA.choices[0]!.tokens.map((x) => x.id), wantB.choices[0]!.tokens.map((x) => x.id), 'the two versions differ');
  const [gotA, gotB] = await Promise.all([a.generate(r), b.generate(r)]);
  assertSameOutput(gotA, wantA, 'v1 beside v2');
  assertSameOutput(gotB, wantB, 'v2 beside v1');
  await a.close();
  assertSameOutput(await b.generate(r), wantB, 'v2 after v1 closed');
});

test('an error crosses from the model thread with its class, code and Retry-After', () => {
  const overloaded = errorOfFailure(structuredClone(threadFailure(new GatewayError('GW_ERR_OVERLOADED', 'the KV cache is full', { retryAfterS: 3 }))));
  assert.ok(overloaded instanceof GatewayError);
  assert.equal(overloaded.code, 'GW_ERR_OVERLOADED');
  assert.equal((overloaded as GatewayError & { retryAfterS?: number }).retryAfterS, 3);
  const model = errorOfFailure(structuredClone(threadFailure(new ModelError('MDL_ERR_MODEL_FILES', 'config.json is not valid JSON'))));
  assert.ok(model instanceof ModelError);
  assert.equal(model.code, 'MDL_ERR_MODEL_FILES');
  assert.match(errorOfFailure(structuredClone(threadFailure(new RangeError('out of bounds')))).message, /the model worker failed: out of bounds/);
});

test('a model the compute thread cannot load fails with what went wrong there', async () => {
  await assert.rejects(WorkerEngine.start({ backend: 'cpu', config, params: new Float32Array(10) }), (err: Error) => {
    assert.ok(err instanceof GatewayError, String(err));
    assert.equal(err.code, 'GW_ERR_INTERNAL');
    assert.match(err.message, /^the model worker could not load the model: .+/);
    return true;
  });
});
