/**
 * The import's heavy part runs off the coordinator's event loop: importing a model of 23 M parameters (GPT-2's
 * 50,257-token vocabulary, width 384, fp16 on disk: ~46 MB in, ~92 MB out) keeps the loop's longest stall far below
 * the time the same conversion takes when run on the loop, measured side by side in this test. And the pure
 * conversion refuses what importHf refuses, with the same MDL_ERR.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { silentLogger } from '../../common/log.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import { convertImport, importVersion } from '../../coordinator/registry/import.ts';
import { createCoordinator } from '../../coordinator/api/server.ts';
import { gptConfig, initParams, paramLayout, stateDict } from '../../model/params.ts';
import { hfConfig } from '../../model/hf-format.ts';
import { writeSafetensors, type Tensor, type TensorMap } from '../../model/safetensors.ts';
import { f32ToF16Bits } from '../../model/half-float.ts';
import { tokenizer } from '../support/gpt2-folder.ts';

const config = gptConfig({ vocabSize: 50257, nCtx: 64, nLayer: 2, nHead: 6, nEmbd: 384 });

let published: Record<string, Uint8Array> | undefined;
/** Built once: 23 M parameters in F16 take seconds to lay out. Callers spread it; nobody mutates it. */
function publishedFiles(): Record<string, Uint8Array> {
  return (published ??= buildPublishedFiles());
}

function buildPublishedFiles(): Record<string, Uint8Array> {
  const layout = paramLayout(config);
  const dict: TensorMap = {};
  for (const [k, t] of Object.entries(stateDict(initParams(layout, 1), layout))) {
    dict[`transformer.${k}`] = { dtype: 'F16', shape: t.shape, data: Uint16Array.from(t.data, f32ToF16Bits) } as Tensor;
  }
  return {
    'config.json': Buffer.from(JSON.stringify(hfConfig(config, tokenizer))),
    'model.safetensors': writeSafetensors(dict, { format: 'pt' }),
    'tokenizer.json': Buffer.from(JSON.stringify(tokenizer.toJSON())),
  };
}

test("importing 23 M parameters stalls the coordinator's event loop far less than the conversion takes on it", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'import-loop-'));
  const c = createCoordinator(resolveConfig({ dataDir: dir, token: 'import-loop-token' }), silentLogger);
  t.after(async () => {
    await c.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const given = publishedFiles();
  const files: Record<string, string> = {};
  for (const [name, bytes] of Object.entries(given)) files[name] = await c.artifacts.put(bytes);

  const started = performance.now();
  const onLoop = convertImport(given); // what importing used to do on the event loop
  const onLoopMs = performance.now() - started;
  assert.equal(onLoop.params, paramLayout(config).totalSize);
  assert.ok(onLoopMs > 200, `the conversion takes ${onLoopMs.toFixed(0)} ms on the loop: big enough for this test to mean something`);

  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  await new Promise((r) => setTimeout(r, 50)); // the monitor's timer is running before the import begins
  const version = await importVersion(c.registry, c.artifacts, 'loop-check', { files, source: 'test' });
  delay.disable();
  const worstMs = delay.max / 1e6;
  assert.equal(version.version, 1);
  assert.equal(version.files['model.safetensors']!.sha256, onLoop.sha256['model.safetensors'], 'the worker converts exactly as the loop does');
  assert.ok(worstMs < onLoopMs / 3, `longest event-loop stall during the import ${worstMs.toFixed(0)} ms, against ${onLoopMs.toFixed(0)} ms for the conversion on the loop`);
});

test('convertImport refuses a weight that disagrees with config.json, and JSON files that are not objects', () => {
  const given = publishedFiles();
  assert.throws(() => convertImport({ ...given, 'config.json': Buffer.from(JSON.stringify({ ...hfConfig(config, tokenizer), n_embd: 192 })) }),
    (err: Error & { code?: string }) => err.code === 'MDL_ERR_MODEL_FILES' && /wte\.weight has shape \[50257, 384\], config\.json implies \[50257, 192\]/.test(err.message));
  assert.throws(() => convertImport({ ...given, 'tokenizer_config.json': Buffer.from('[1, 2]') }),
    (err: Error & { code?: string }) => err.code === 'MDL_ERR_MODEL_FILES' && /tokenizer_config\.json is not a JSON object/.test(err.message));
});
