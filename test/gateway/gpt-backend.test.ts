/** The GPT backend behind the gateway: the real model, its tokenizer and the KV cache, checked against the model itself. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { GPT } from '../../model/gpt.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { GptBackend } from '../../gateway/gpt-backend.ts';
import type { GenerateRequest } from '../../gateway/inference-backend.ts';
import { generateRequest } from './support.ts';
import { makeRegistry, startGateway } from '../../bench/support/gateway-fixture.ts';

await tf.setBackend('cpu');
const tokenizer = await trainBpe([loadDemoCorpus().documents[5]!], { vocabSize: 300 });
const config = { vocabSize: 304, nCtx: 32, nLayer: 2, nHead: 2, nEmbd: 16 }; // 4 spare rows the tokenizer never uses
const model = new GPT(config, { seed: 11 });
const backend = new GptBackend(model, tokenizer, { id: 'tiny', createdS: 0, ownedBy: 'test' });

const request = (over: Partial<GenerateRequest> = {}): GenerateRequest => generateRequest(tokenizer.encode('The state of the Union'), over);

/** Greedy continuation computed the slow way: the full forward pass over the whole sequence for every token. */
function greedyByFullForward(prompt: number[], steps: number): number[] {
  const seq = [...prompt];
  for (let i = 0; i < steps; i++) {
    const logits = model.forward(tf.tensor2d([seq], [1, seq.length], 'int32'));
    const last = (logits.dataSync() as Float32Array).subarray((seq.length - 1) * config.vocabSize, seq.length * config.vocabSize - 4);
    logits.dispose();
    let best = 0;
    for (let v = 1; v < last.length; v++) if (last[v]! > last[best]!) best = v;
    if (best === tokenizer.endOfText) break;
    seq.push(best);
  }
  return seq.slice(prompt.length);
}

test('greedy generation through the KV cache equals argmax over full forward passes, and reports the model context', async () => {
  const req = request();
  const result = await backend.generate(req);
  assert.deepEqual(result.choices[0]!.tokens.map((t) => t.id), greedyByFullForward([...req.promptIds], 8));
  assert.equal(backend.info.contextLength, 32);
  assert.equal(backend.info.vocabSize, tokenizer.vocabSize);
});

test('sampling is reproducible by seed, choices differ, and streamed tokens add up to each choice', async () => {
  const streamed = new Map<number, string>();
  const a = await backend.generate(request({ temperature: 1, seed: 7, n: 3 }), {
    onToken: (e) => streamed.set(e.choice, (streamed.get(e.choice) ?? '') + e.tokens.map((t) => t.text).join('')),
  });
  const b = await backend.generate(request({ temperature: 1, seed: 7, n: 3 }));
  assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
  assert.ok(new Set(a.choices.map((c) => c.text)).size > 1, 'three samples are not all the same');
  for (const c of a.choices) assert.equal(streamed.get(c.index) ?? '', c.text);
});

test('a stop sequence cuts the text and ends the choice with stop; max_tokens ends it with length', async () => {
  const full = await backend.generate(request({ maxTokens: 10 }));
  const text = full.choices[0]!.text;
  assert.equal(full.choices[0]!.finishReason, 'length');
  const stop = text.slice(3, 5);
  const cut = await backend.generate(request({ maxTokens: 10, stop: [stop] }));
  assert.equal(cut.choices[0]!.finishReason, 'stop');
  assert.equal(cut.choices[0]!.text, text.slice(0, text.indexOf(stop)));
});

test('logprobs are the model log-softmax, top alternatives sorted and holding the chosen token; echo scores the prompt', async () => {
  const req = request({ logprobs: 3, echo: true, maxTokens: 3 });
  const result = await backend.generate(req);
  for (const t of result.choices[0]!.tokens) {
    const lp = t.logprob!;
    assert.ok(lp.logprob <= 0);
    assert.ok(lp.top.length >= 3);
    for (let i = 1; i < 3; i++) assert.ok(lp.top[i - 1]!.logprob >= lp.top[i]!.logprob);
    assert.equal(lp.top[0]!.logprob, lp.logprob, 'greedy picks the most likely token');
  }
  assert.equal(result.promptLogprobs!.length, req.promptIds.length);
  assert.equal(result.promptLogprobs![0], null);
  assert.ok(result.promptLogprobs!.slice(1).every((p) => p !== null && p.logprob <= 0));
});

test('an aborted request stops generating and rejects', async () => {
  const controller = new AbortController();
  let seen = 0;
  await assert.rejects(
    backend.generate(request({ maxTokens: 18 }), { // 13 prompt tokens + 18 fit the context of 32
      signal: controller.signal,
      onToken: () => {
        if (++seen === 2) controller.abort(new Error('client went away'));
      },
    }),
    /client went away/,
  );
});

test('gateway serve --registry runs a registered model: completions come back from the trained weights', async (t) => {
  const data = mkdtempSync(join(tmpdir(), 'gw-gpt-'));
  t.after(() => rmSync(data, { recursive: true, force: true }));
  const { registry } = await makeRegistry(data, 'tiny', config, tokenizer, [11]); // the same weights as `model`
  const gateway = await startGateway(['--registry', registry], { MESHTRAIN_BACKEND: 'cpu' });
  t.after(() => gateway.kill());
  const { url } = gateway;
  const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: Array<{ id: string }> };
  assert.deepEqual(models.data.map((m) => m.id), ['tiny']);
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tiny', prompt: 'The state of the Union', max_tokens: 8, temperature: 0 }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const body = (await res.json()) as { choices: Array<{ text: string }>; usage: { prompt_tokens: number } };
  const expected = tokenizer.decode(greedyByFullForward(tokenizer.encode('The state of the Union'), 8));
  assert.equal(body.choices[0]!.text, expected);
  assert.equal(body.usage.prompt_tokens, tokenizer.encode('The state of the Union').length);
});
