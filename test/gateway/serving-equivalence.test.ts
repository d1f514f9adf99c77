/**
 * The serving engines give a request the same tokens and log-probabilities however it is served: alone, batched
 * with others, its prompt run in chunks (chunked prefill), or joining a batch that is already decoding — on every
 * compute backend the gateway runs on (cpu, wasm, and WebGPU on Mesa's software adapter) and with both KV caches:
 * the paged pool (paged-gpt.ts; cpu and wasm) and tfjs tensors (batched-gpt.ts; every backend). The reference is
 * each request alone with its whole prompt in one forward, on the same backend and cache; tokens must be equal,
 * log-probabilities within 1e-5. And nothing leaks: an idle paged cache holds no blocks, an idle tensor cache no
 * tensors.
 */
import { after, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { GPT } from '../../model/gpt.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { loadBackend, type LoadedBackend } from '../../model/compute/backend.ts';
import { GptBackend, type GptBackendOptions } from '../../gateway/gpt-backend.ts';
import type { GenerateRequest, GenerateResult } from '../../gateway/inference-backend.ts';
import { assertSameOutput, equivalenceRequests } from './support.ts';

const tokenizer = await trainBpe([loadDemoCorpus().documents[5]!], { vocabSize: 300 });
const config = { vocabSize: 304, nCtx: 96, nLayer: 2, nHead: 2, nEmbd: 16 }; // head size 8: the paged kernel's 4 lanes fit

const REQUESTS = equivalenceRequests((text) => tokenizer.encode(text));

const loaded: LoadedBackend[] = [];
after(() => {
  for (const b of loaded) b.release();
});

async function use(backend: 'cpu' | 'wasm' | 'webgpu-software'): Promise<void> {
  const name = backend === 'webgpu-software' ? 'webgpu' : backend;
  if (!loaded.some((b) => b.name === name)) loaded.push(await loadBackend(backend)); // fails, does not skip, where Mesa is missing
  await tf.setBackend(name);
}

function backendOn(t: TestContext, options: GptBackendOptions): GptBackend {
  const b = new GptBackend(new GPT(config, { seed: 11 }), tokenizer, { id: 'tiny', createdS: 0, ownedBy: 'test' }, options);
  t.after(() => b.close());
  return b;
}

async function alone(b: GptBackend, requests: readonly GenerateRequest[]): Promise<GenerateResult[]> {
  const results: GenerateResult[] = [];
  for (const r of requests) results.push(await b.generate(r));
  return results;
}

/** Requests 0 and 1 start; 2 and 3 arrive once request 0 has its first tokens, joining a batch that is decoding. */
async function joinMidBatch(b: GptBackend, requests: readonly GenerateRequest[]): Promise<GenerateResult[]> {
  let joined: Promise<GenerateResult[]> | undefined;
  const first = b.generate(requests[0]!, {
    onToken: () => {
      joined ??= Promise.all(requests.slice(2).map((r) => b.generate(r)));
    },
  });
  const rest = await Promise.all([first, b.generate(requests[1]!)]);
  assert.ok(joined, 'the later requests were sent while the first decoded');
  return [...rest, ...(await joined)];
}

function assertIdle(b: GptBackend, tensorsBefore: number, where: string): void {
  const cache = b.kvCache;
  if (cache.engine === 'paged') assert.equal(cache.blocksInUse, 0, `${where}: an idle paged cache holds no blocks`);
  else assert.ok(tf.memory().numTensors <= tensorsBefore + 1, `${where}: an idle tensor cache holds no tensors (${tf.memory().numTensors - tensorsBefore} left, the head weight is 1)`);
}

const CASES: Array<{ backend: 'cpu' | 'wasm' | 'webgpu-software'; engine: 'paged' | 'tensor' }> = [
  { backend: 'cpu', engine: 'paged' },
  { backend: 'cpu', engine: 'tensor' },
  { backend: 'wasm', engine: 'paged' },
  { backend: 'wasm', engine: 'tensor' },
  { backend: 'webgpu-software', engine: 'tensor' },
];

for (const { backend, engine } of CASES) {
  test(`${backend}, ${engine} cache: alone, batched, prefilled in chunks and joined mid-batch give the same tokens and logprobs`, async (t) => {
    await use(backend);
    const reference = await alone(backendOn(t, { engine }), REQUESTS);

    const batched = backendOn(t, { engine });
    let tensorsBefore = tf.memory().numTensors; // the model's weights included
    assert.equal(batched.kvCache.engine, engine);
    (await Promise.all(REQUESTS.map((r) => batched.generate(r)))).forEach((r, i) => assertSameOutput(r, reference[i]!, `batched, request ${i}`));
    assertIdle(batched, tensorsBefore, 'batched');

    const chunked = backendOn(t, { engine, prefillChunk: 3 }); // every prompt here takes 2–5 chunks
    tensorsBefore = tf.memory().numTensors;
    (await alone(chunked, REQUESTS)).forEach((r, i) => assertSameOutput(r, reference[i]!, `chunked alone, request ${i}`));
    (await joinMidBatch(chunked, REQUESTS)).forEach((r, i) => assertSameOutput(r, reference[i]!, `chunked and joined mid-batch, request ${i}`));
    assertIdle(chunked, tensorsBefore, 'chunked');

    const joined = backendOn(t, { engine });
    tensorsBefore = tf.memory().numTensors;
    (await joinMidBatch(joined, REQUESTS)).forEach((r, i) => assertSameOutput(r, reference[i]!, `joined mid-batch, request ${i}`));
    assertIdle(joined, tensorsBefore, 'joined');
  });
}

test('the paged and the tensor caches compute the same model: the same greedy tokens, log-probabilities within 1e-4', async (t) => {
  await use('cpu');
  const greedy = REQUESTS.map((r) => ({ ...r, temperature: 0, logprobs: 3 }));
  const paged = await alone(backendOn(t, { engine: 'paged' }), greedy);
  const tensor = await alone(backendOn(t, { engine: 'tensor' }), greedy);
  for (const [i, p] of paged.entries()) {
    for (const [c, choice] of p.choices.entries()) {
      const other = tensor[i]!.choices[c]!;
      assert.deepEqual(choice.tokens.map((x) => x.id), other.tokens.map((x) => x.id), `request ${i}, choice ${c}`);
      choice.tokens.forEach((x, j) => assert.ok(Math.abs(x.logprob!.logprob - other.tokens[j]!.logprob!.logprob) <= 1e-4, `request ${i}, token ${j}: ${x.logprob!.logprob} vs ${other.tokens[j]!.logprob!.logprob}`));
    }
  }
});
