/**
 * A LoRA adapter end to end: registered by the coordinator as its own small version (PEFT files, no weights),
 * merged into its base through POST /api/models/:name/versions/:v/merge, and served by the gateway both ways —
 * unmerged on its base (loaded through the same registry folder, sha256-checked) and merged — with the same
 * greedy completions.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { silentLogger } from '../../common/log.ts';
import { registerAdapter } from '../../coordinator/registry/adapters.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import { createCoordinator } from '../../coordinator/api/server.ts';
import { initParams, paramLayout, type GPTConfig } from '../../model/params.ts';
import { exportHf } from '../../model/hf-format.ts';
import { loraLayout, loraSpec } from '../../model/lora.ts';
import { Tokenizer } from '../../model/tokenizer.ts';
import { withAdapterBases } from '../../gateway/adapter-source.ts';
import { gptBackendFactory } from '../../gateway/gpt-backend.ts';
import { DirRegistrySource } from '../../gateway/registry-source.ts';
import { createGateway } from '../../gateway/server.ts';

const CONFIG: GPTConfig = { vocabSize: 512, nCtx: 32, nLayer: 2, nHead: 4, nEmbd: 64 };
const SPEC = loraSpec({ rank: 4, alpha: 8, dropout: 0.1, targets: ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'] });
const PROMPTS = ['The state of the Union', 'Our country', 'We must', 'Congress should'];

/** An adapter with every value drawn (B too), large enough to change the base's greedy tokens. */
function someAdapter(): Float32Array {
  const flat = new Float32Array(loraLayout(CONFIG, SPEC).totalSize);
  let x = 12345;
  for (let i = 0; i < flat.length; i++) flat[i] = (((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5) * 0.5;
  return flat;
}

test('an adapter version is small, merges into a full version, and is served on its base with the merged version\'s greedy tokens', async (t) => {
  await tf.setBackend('cpu');
  const data = mkdtempSync(join(tmpdir(), 'adapter-serving-'));
  t.after(() => rmSync(data, { recursive: true, force: true }));
  const coordinator = createCoordinator(resolveConfig({ dataDir: data, token: 'cluster-token', host: '127.0.0.1', port: 0 }), silentLogger);
  t.after(() => coordinator.close());
  const tokenizer = Tokenizer.fromJSON(JSON.parse(readFileSync(new URL('../model/fixtures/tokenizer-512.json', import.meta.url), 'utf8')));
  const layout = paramLayout(CONFIG);
  const base = await coordinator.registry.register('tiny', exportHf({ config: CONFIG, layout }, tokenizer, initParams(layout, 1)), { jobId: 'job-1' });

  // The relaxed rule: an adapter needs both PEFT files.
  await assert.rejects(coordinator.registry.register('half', { 'adapter_config.json': Buffer.from('{}') }, {}), /needs adapter_model.safetensors and adapter_config.json/);

  const adapter = await registerAdapter(coordinator.registry, { name: 'tiny-lora', base: { name: 'tiny', version: 1 }, spec: SPEC, flat: someAdapter(), lineage: { jobId: 'job-2' } });
  assert.deepEqual(Object.keys(adapter.files).sort(), ['adapter_config.json', 'adapter_model.safetensors', 'lineage.json', 'tokenizer.json']);
  assert.deepEqual(adapter.lineage.base, { name: 'tiny', version: 1 });
  assert.equal(adapter.lineage.adapter, true);
  const size = (v: typeof base) => Object.entries(v.files).map(([f, e]) => `${f} ${e.bytes}`).join(', ');
  console.log(`adapter version: ${size(adapter)}`);
  console.log(`base version:    ${size(base)}`);
  assert.ok(adapter.files['adapter_model.safetensors']!.bytes < base.files['model.safetensors']!.bytes / 10);

  const post = (url: string) => coordinator.app.inject({ method: 'POST', url, headers: { authorization: 'Bearer cluster-token' } });
  const notAdapter = await post('/api/models/tiny/versions/1/merge');
  assert.equal(notAdapter.statusCode, 400);
  assert.match(notAdapter.json().error.message, /not a LoRA adapter/);
  const res = await post('/api/models/tiny-lora/versions/1/merge');
  assert.equal(res.statusCode, 201, res.body);
  const merged = res.json();
  assert.equal(merged.version, 2);
  assert.deepEqual(merged.lineage.parents, [{ name: 'tiny-lora', version: 1 }, { name: 'tiny', version: 1 }]);
  assert.deepEqual(Object.keys(merged.files).sort(), ['config.json', 'lineage.json', 'model.safetensors', 'tokenizer.json']);

  const source = withAdapterBases(new DirRegistrySource(join(data, 'registry')));
  const backendOf = async (name: string, version: number) => {
    const v = await source.load(name, version);
    assert.equal(v.meta.verified, true);
    const b = await gptBackendFactory(v.files, v.meta);
    t.after(() => b.close?.());
    return b;
  };
  const loraBackend = await backendOf('tiny-lora', 1);
  assert.deepEqual(loraBackend.info.adapter, { base: 'tiny@v1', rank: 4 });
  // Two gateways: the adapter and its merged version are both versions of 'tiny-lora'.
  const serve = async (backends: Array<Awaited<ReturnType<typeof backendOf>>>) => {
    const gateway = createGateway({ backends: new Map(backends.map((b) => [b.info.id, b])), log: silentLogger });
    t.after(() => gateway.close());
    return `http://127.0.0.1:${(await gateway.listen({ port: 0 })).port}`;
  };
  const unmergedUrl = await serve([loraBackend, await backendOf('tiny', 1)]);
  const mergedUrl = await serve([await backendOf('tiny-lora', 2)]);
  const models = (await (await fetch(`${unmergedUrl}/v1/models`)).json()) as { data: Array<{ id: string; adapter?: unknown }> };
  assert.deepEqual(models.data.map((m) => [m.id, m.adapter]), [['tiny', undefined], ['tiny-lora', { base: 'tiny@v1', rank: 4 }]]);

  const complete = async (url: string, model: string, prompt: string) => {
    const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, prompt, max_tokens: 10, temperature: 0 }) });
    assert.equal(r.status, 200);
    return ((await r.json()) as { choices: Array<{ text: string }> }).choices[0]!.text;
  };
  let differsFromBase = 0;
  for (const prompt of PROMPTS) {
    const lora = await complete(unmergedUrl, 'tiny-lora', prompt), full = await complete(mergedUrl, 'tiny-lora', prompt), plain = await complete(unmergedUrl, 'tiny', prompt);
    assert.deepEqual(loraBackend.tokenize(lora), loraBackend.tokenize(full), `greedy tokens for ${JSON.stringify(prompt)}`);
    if (lora !== plain) differsFromBase++;
  }
  assert.ok(differsFromBase > 0, 'the adapter changes what the base would say');
});
