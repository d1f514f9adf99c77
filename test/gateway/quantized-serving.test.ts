/**
 * An INT8 version end to end: a trained model registered by the coordinator, its INT8 variant made through
 * POST /api/models/:name/versions/:v/quantize, loaded from the registry folder (sha256-checked) by the gateway's
 * GPT backend factory and served over /v1/completions next to the float32 version.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { silentLogger } from '../../common/log.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import { createCoordinator } from '../../coordinator/api/server.ts';
import { paramLayout } from '../../model/params.ts';
import { exportHf } from '../../model/hf-format.ts';
import { gptBackendFactory } from '../../gateway/gpt-backend.ts';
import { DirRegistrySource } from '../../gateway/registry-source.ts';
import { createGateway } from '../../gateway/server.ts';
import { trainTiny } from '../support/tiny-trained.ts';

const PROMPTS = ['The state of the Union', 'Our country', 'I have the honor to', 'We must', 'Congress should'];

test('a quantized version registers as a new version of the model and the gateway serves it, answering like the float32 one', async (t) => {
  await tf.setBackend('wasm');
  const data = mkdtempSync(join(tmpdir(), 'int8-serving-'));
  t.after(() => rmSync(data, { recursive: true, force: true }));
  const coordinator = createCoordinator(resolveConfig({ dataDir: data, token: 'cluster-token', host: '127.0.0.1', port: 0 }), silentLogger);
  t.after(() => coordinator.close());
  const trained = await trainTiny(30);
  await coordinator.registry.register('tiny', exportHf({ config: trained.config, layout: paramLayout(trained.config) }, trained.tokenizer, trained.flat), { jobId: 'job-1' });

  const post = (url: string, payload: unknown) => coordinator.app.inject({ method: 'POST', url, payload: payload as object, headers: { authorization: 'Bearer cluster-token' } });
  const bad = await post('/api/models/tiny/versions/1/quantize', { scheme: 'int4' });
  assert.equal(bad.statusCode, 400);
  assert.equal(bad.json().error.code, 'CRD_ERR_BAD_REQUEST');
  const res = await post('/api/models/tiny/versions/1/quantize', { scheme: 'int8' });
  assert.equal(res.statusCode, 201, res.body);
  const v2 = res.json();
  assert.equal(v2.version, 2);
  assert.deepEqual(v2.lineage.parent, { name: 'tiny', version: 1 });
  assert.equal(v2.lineage.quantization.scheme, 'int8');
  assert.ok(v2.lineage.quantization.sizeRatio < 1 / 3.5, `size ratio ${v2.lineage.quantization.sizeRatio}`);
  assert.deepEqual(Object.keys(v2.files).sort(), ['config.json', 'lineage.json', 'model.int8.safetensors', 'tokenizer.json']);
  assert.deepEqual(readdirSync(v2.path).sort(), ['config.json', 'lineage.json', 'manifest.json', 'model.int8.safetensors', 'tokenizer.json']);
  assert.deepEqual(JSON.parse(readFileSync(join(v2.path, 'config.json'), 'utf8')).quantization_config, { quant_method: 'meshtrain-int8', bits: 8, granularity: 'per-channel', symmetric: true });
  const again = await post('/api/models/tiny/versions/2/quantize', {});
  assert.equal(again.statusCode, 409, 'an INT8 version is not quantized twice');

  const source = new DirRegistrySource(join(data, 'registry'));
  const v1 = await source.load('tiny', 1);
  const f32 = await gptBackendFactory(v1.files, v1.meta);
  t.after(() => f32.close?.());
  const int8 = await source.load('tiny'); // the latest: the INT8 variant
  assert.equal(int8.meta.verified, true);
  const backend = await gptBackendFactory(int8.files, int8.meta);
  assert.equal(backend.info.quantization, 'int8');
  assert.equal(f32.info.quantization, undefined);
  const gateway = createGateway({ backends: new Map([['tiny', backend]]), log: silentLogger });
  t.after(() => gateway.close());
  const { port } = await gateway.listen({ port: 0 });
  const base = `http://127.0.0.1:${port}`;

  const models = (await (await fetch(`${base}/v1/models`)).json()) as { data: Array<{ id: string; quantization?: string }> };
  assert.deepEqual(models.data.map((m) => [m.id, m.quantization]), [['tiny', 'int8']]);
  let same = 0, total = 0;
  for (const prompt of PROMPTS) {
    const r = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny', prompt, max_tokens: 12, temperature: 0 }) });
    assert.equal(r.status, 200);
    const served = ((await r.json()) as { choices: Array<{ text: string }> }).choices[0]!.text;
    assert.ok(served.length > 0);
    const refText = (await f32.generate({ promptIds: f32.tokenize(prompt), maxTokens: 12, temperature: 0, topP: 1, stop: [], seed: 1, n: 1, logprobs: undefined, echo: false })).choices[0]!.text;
    const ids = backend.tokenize(served), ref = f32.tokenize(refText); // both texts re-encoded the same way
    for (let i = 0; i < Math.min(ids.length, ref.length); i++) same += ids[i] === ref[i] ? 1 : 0;
    total += Math.max(ids.length, ref.length);
  }
  console.log(`# greedy token agreement int8 vs f32: ${same}/${total} (${((100 * same) / total).toFixed(1)} %)`);
  assert.ok(same / total > 0.5, `greedy tokens agree ${same}/${total}`);
});
