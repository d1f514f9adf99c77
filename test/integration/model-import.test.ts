/**
 * `coordinator models import DIR --name NAME` against a real coordinator process: a GPT-2-layout folder written the
 * way transformers publishes one (F16 weights, `transformer.` prefix, causal-mask buffers, a tied lm_head,
 * generation_config.json and tokenizer_config.json with a chat_template) is uploaded, checked and registered in the
 * registry's canonical form; its lineage names the source and every uploaded file's sha256; it quantizes like a
 * trained version. A folder whose weights disagree with its config is refused naming the tensor, and registers nothing.
 *
 * Run: npx tsx --test test/integration/model-import.test.ts
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { importHf } from '../../model/hf-format.ts';
import { readSafetensors, type Tensor } from '../../model/safetensors.ts';
import { f16BitsToF32, f32ToF16Bits } from '../../model/half-float.ts';
import { layout, params, tokenizer, writeGpt2Folder, writeGpt2VocabFolder } from '../support/gpt2-folder.ts';
import { spawnProc, startCluster, waitForLine, type LocalCluster } from '../../scripts/local-cluster.ts';
import type { ModelVersion } from '../../coordinator/registry/registry.ts';
import type { JobRecord } from '../../coordinator/store/job-store.ts';
import { untilJob, writeCorpus } from '../support/jobs.ts';

const COORDINATOR = new URL('../../bin/coordinator.js', import.meta.url).pathname;
const GATEWAY = new URL('../../bin/gateway.js', import.meta.url).pathname;
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

describe('importing a published GPT-2 folder into the registry', () => {
  let cluster: LocalCluster;
  let dir: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'import-'));
    cluster = await startCluster({ agents: 0 });
  });
  after(async () => {
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const cli = async (args: string[]) => {
    const p = spawnProc([COORDINATOR, ...args, '--url', cluster.url, '--token', cluster.token], { stderr: 'capture', env: { LOG_LEVEL: 'warn' } });
    const code = await p.exited;
    return { code, output: p.output.join('\n') };
  };

  test('an fp16 folder with the transformer. prefix becomes a canonical float32 version whose lineage names every uploaded file', async () => {
    const folder = join(dir, 'gpt2-fp16');
    writeGpt2Folder(folder);
    const { code, output } = await cli(['models', 'import', folder, '--name', 'tiny-gpt2']);
    assert.equal(code, 0, output);
    assert.match(output, /registered tiny-gpt2 v1: imported from .*gpt2-fp16 \(0\.01 M parameters, weights F16\/F32 stored as F32\)/);

    const version = await cluster.api<ModelVersion>('GET', '/api/models/tiny-gpt2/versions/1');
    assert.deepEqual(Object.keys(version.files).sort(), ['config.json', 'generation_config.json', 'lineage.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    const imported = version.lineage.imported as { source: string; files: Record<string, { sha256: string; bytes: number }> };
    assert.equal(imported.source, folder);
    for (const file of ['config.json', 'model.safetensors', 'tokenizer.json', 'generation_config.json', 'tokenizer_config.json']) {
      const bytes = readFileSync(join(folder, file));
      assert.deepEqual(imported.files[file], { sha256: sha256(bytes), bytes: bytes.byteLength }, file);
    }

    const get = async (file: string) => Buffer.from(await (await cluster.fetch(`${cluster.url}/api/models/tiny-gpt2/versions/1/files/${file}`, { headers: { authorization: `Bearer ${cluster.token}` } })).arrayBuffer());
    const weights = await get('model.safetensors');
    const tensors = readSafetensors(weights).tensors;
    assert.deepEqual(Object.keys(tensors).sort(), layout.specs.map((s) => s.name).sort(), 'our names only: no prefix, no buffers, no lm_head');
    assert.ok(Object.values(tensors).every((t) => t.dtype === 'F32'));
    const loaded = importHf({ 'config.json': await get('config.json'), 'model.safetensors': weights, 'tokenizer.json': await get('tokenizer.json') });
    assert.deepEqual(loaded.params, Float32Array.from(params, (x) => f16BitsToF32(f32ToF16Bits(x))), 'the fp16 values, widened exactly');
    const cfg = JSON.parse((await get('config.json')).toString());
    assert.deepEqual(cfg.task_specific_params, { 'text-generation': { max_length: 50 } }, 'their extra config keys are kept');
    assert.match(JSON.parse((await get('tokenizer_config.json')).toString()).chat_template, /messages/);
    assert.deepEqual(loaded.tokenizer.encode('the lazy fox'), tokenizer.encode('the lazy fox'));

    const quantized = await cluster.api<ModelVersion>('POST', '/api/models/tiny-gpt2/versions/1/quantize', {});
    assert.equal(quantized.version, 2, 'an imported version quantizes like a trained one');
    for (const file of ['tokenizer_config.json', 'generation_config.json']) {
      assert.equal(quantized.files[file]?.sha256, version.files[file]?.sha256, `its INT8 variant keeps ${file} (the chat template, generation defaults)`);
    }
  });

  test("a folder with GPT-2's own vocab.json and merges.txt (no tokenizer.json) imports with GPT-2's ids", async () => {
    const folder = join(dir, 'gpt2-vocab');
    writeGpt2VocabFolder(folder);
    const { code, output } = await cli(['models', 'import', folder, '--name', 'gpt2-vocab']);
    assert.equal(code, 0, output);
    const version = await cluster.api<ModelVersion>('GET', '/api/models/gpt2-vocab/versions/1');
    assert.ok(version.files['vocab.json'] && version.files['merges.txt'] && version.files['tokenizer.json'], 'converted to tokenizer.json, originals kept');
    const get = async (file: string) => Buffer.from(await (await cluster.fetch(`${cluster.url}/api/models/gpt2-vocab/versions/1/files/${file}`, { headers: { authorization: `Bearer ${cluster.token}` } })).arrayBuffer());
    const loaded = importHf({ 'config.json': await get('config.json'), 'model.safetensors': await get('model.safetensors'), 'tokenizer.json': await get('tokenizer.json') });
    assert.equal(loaded.tokenizer.vocabSize, 50257);
    assert.deepEqual(loaded.tokenizer.encode('Hello world'), [15496, 995]);
    assert.equal(loaded.tokenizer.endOfText, 50256);
  });

  test('an imported version serves through the gateway and is an init.from like a trained one', async () => {
    const gateway = spawnProc([GATEWAY, 'serve', '--registry', cluster.url, '--token', cluster.token, '--model', 'tiny-gpt2@1', '--port', '0', '--host', '127.0.0.1'], { stderr: 'capture', env: { LOG_LEVEL: 'warn' } });
    try {
      const port = Number((await waitForLine(gateway, /gateway listening on http:\/\/127\.0\.0\.1:(\d+)/, 60_000))[1]);
      const res = await fetch(`http://127.0.0.1:${port}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny-gpt2', prompt: 'the lazy', max_tokens: 4, temperature: 0 }) });
      assert.equal(res.status, 200, await res.clone().text());
      const body = (await res.json()) as { choices: Array<{ text: string }>; usage: { completion_tokens: number } };
      assert.equal(body.usage.completion_tokens, 4);
      assert.equal(typeof body.choices[0]!.text, 'string');
    } finally {
      gateway.child.kill('SIGTERM');
      await gateway.exited;
    }
    const job = await cluster.api<JobRecord>('POST', '/api/jobs', {
      name: 'from-imported',
      model: { vocabSize: 300, nCtx: 16, nLayer: 2, nHead: 2, nEmbd: 16 },
      data: { corpus: writeCorpus(dir, 0, 6), heldOutFraction: 0.2 },
      training: { steps: 2, batchSize: 2, seqLen: 16, lr: 1e-3, evalEvery: 2, evalBatches: 1, checkpointEvery: 2 },
      init: { from: 'tiny-gpt2@1' },
    });
    const agent = cluster.startAgent('init-agent');
    try {
      await untilJob(cluster, job.id, (v) => v.job.state === 'succeeded', 180_000);
      const trained = (await cluster.api<{ versions: ModelVersion[] }>('GET', '/api/models/from-imported/versions')).versions[0]!;
      assert.deepEqual(trained.lineage.parent, { name: 'tiny-gpt2', version: 1 });
    } finally {
      agent.child.kill('SIGTERM');
      await agent.exited;
    }
  });

  test("a pretrain job takes the imported GPT-2 tokenizer with data.tokenizer, pinned at submit, and trains with it", async () => {
    const spec = (over: Record<string, unknown> = {}) => ({
      name: 'gpt2-vocab-pretrain',
      model: { vocabSize: 50257, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 8 },
      data: { corpus: writeCorpus(dir, 0, 6), heldOutFraction: 0.2, tokenizer: 'gpt2-vocab' },
      training: { steps: 3, batchSize: 2, seqLen: 16, lr: 1e-3, evalEvery: 3, evalBatches: 1, checkpointEvery: 3 },
      ...over,
    });
    const refused = async (body: object, re: RegExp) => {
      const res = await cluster.fetch(`${cluster.url}/api/jobs`, { method: 'POST', headers: { authorization: `Bearer ${cluster.token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      assert.equal(res.status, 400);
      assert.match(JSON.stringify(await res.json()), re);
    };
    await refused(spec({ model: { vocabSize: 1000, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 8 } }), /model\/vocabSize 1000 is smaller than gpt2-vocab@1's tokenizer \(50257 ids\)/);
    await refused(spec({ init: { from: 'gpt2-vocab' } }), /\/data\/tokenizer: a job that starts from a version/);
    await refused(spec({ data: { corpus: 'demo', tokenizer: 'no-such-model' } }), /\/data\/tokenizer names model no-such-model, which has no registered version/);

    const job = await cluster.api<JobRecord>('POST', '/api/jobs', spec());
    assert.equal(job.spec.data.tokenizer, 'gpt2-vocab@1', 'pinned when accepted');
    const agent = cluster.startAgent('import-agent');
    try {
      const done = await untilJob(cluster, job.id, (v) => v.job.state === 'succeeded', 180_000);
      assert.equal(done.job.state, 'succeeded');
      const trained = (await cluster.api<{ versions: ModelVersion[] }>('GET', '/api/models/gpt2-vocab-pretrain/versions')).versions[0]!;
      const source = await cluster.api<ModelVersion>('GET', '/api/models/gpt2-vocab/versions/1');
      assert.equal(trained.files['tokenizer.json']!.sha256, source.files['tokenizer.json']!.sha256, "the trained model carries GPT-2's tokenizer");
    } finally {
      agent.child.kill('SIGTERM');
      await agent.exited;
    }
  });

  test('weights that disagree with config.json are refused naming the tensor, and nothing is registered', async () => {
    const folder = join(dir, 'gpt2-bad');
    writeGpt2Folder(folder, (dict) => {
      const w = dict['transformer.h.1.mlp.c_fc.weight']!;
      dict['transformer.h.1.mlp.c_fc.weight'] = { ...w, shape: [64, 16] } as Tensor; // nn.Linear's [out, in], not Conv1D
    });
    const { code, output } = await cli(['models', 'import', folder, '--name', 'bad-gpt2']);
    assert.equal(code, 1, output);
    assert.match(output, /MDL_ERR_MODEL_FILES: model\.safetensors: h\.1\.mlp\.c_fc\.weight has shape \[64, 16\], config\.json implies \[16, 64\]/);
    const { models } = await cluster.api<{ models: Array<{ name: string }> }>('GET', '/api/models');
    assert.ok(!models.some((m) => m.name === 'bad-gpt2'));
  });

  test('a bad import request names each problem: unknown file, malformed digest, missing file, bytes never uploaded', async () => {
    const res = await cluster.fetch(`${cluster.url}/api/models/x/import`, {
      method: 'POST',
      headers: { authorization: `Bearer ${cluster.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ files: { 'config.json': 'abc', 'evil.py': 'a'.repeat(64) }, extra: 1 }),
    });
    assert.equal(res.status, 400);
    const { error } = (await res.json()) as { error: { code: string; details: string[] } };
    assert.equal(error.code, 'CRD_ERR_BAD_REQUEST');
    for (const re of [/\/extra is not a field/, /\/files\/evil\.py is not a file an import takes/, /\/files\/config\.json must be a lowercase hex sha256/, /\/files\/model\.safetensors is required/]) {
      assert.ok(error.details.some((d) => re.test(d)), `${re}: ${error.details.join(' | ')}`);
    }
    const never = await cluster.fetch(`${cluster.url}/api/models/x/import`, {
      method: 'POST',
      headers: { authorization: `Bearer ${cluster.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ files: { 'config.json': 'b'.repeat(64), 'model.safetensors': 'c'.repeat(64), 'tokenizer.json': 'd'.repeat(64) } }),
    });
    assert.equal(never.status, 400);
    assert.match(((await never.json()) as { error: { message: string } }).error.message, /config\.json: no artifact b{64}; upload it first/);
  });

  test('the CLI says what a folder lacks before uploading anything', async () => {
    const folder = join(dir, 'empty');
    mkdirSync(folder);
    writeFileSync(join(folder, 'config.json'), '{}');
    const { code, output } = await cli(['models', 'import', folder, '--name', 'nothing']);
    assert.equal(code, 2, output);
    assert.match(output, /lacks model\.safetensors, tokenizer\.json/);
    const noName = await cli(['models', 'import', folder]);
    assert.equal(noName.code, 2);
    assert.match(noName.output, /models import needs --name NAME/);
  });
});
