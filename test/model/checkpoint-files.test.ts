/**
 * model/checkpoint-files.ts: checkpoints read and written one tensor at a time, in model/checkpoint.ts's format.
 * loadCheckpoint (everything in memory) is the oracle: the same files, the same verdicts.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCheckpoint, MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE, saveCheckpoint, STATE_FILE } from '../../model/checkpoint.ts';
import { openCheckpointFiles, writeCheckpointFiles } from '../../model/checkpoint-files.ts';
import { ModelError } from '../../model/errors.ts';
import { paramLayout, stateDict } from '../../model/params.ts';

const root = mkdtempSync(join(tmpdir(), 'checkpoint-files-'));
after(() => rmSync(root, { recursive: true, force: true }));
const layout = paramLayout({ vocabSize: 300, nCtx: 8, nLayer: 2, nHead: 2, nEmbd: 16 });
const values = (k: number) => Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(i * k));
let n = 0;

async function saved() {
  const ref = await saveCheckpoint(join(root, `saved-${++n}`), 5, {
    model: stateDict(values(0.3), layout),
    optimizer: { step: 5, expAvg: stateDict(values(0.1), layout), expAvgSq: stateDict(values(0.05).map(Math.abs), layout) },
    state: { cursor: { shard: 0, offset: 40 } },
  });
  const paths = Object.fromEntries([MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, MANIFEST_FILE].map((f) => [f, join(ref.dir, f)]));
  return { dir: ref.dir, paths };
}

const corrupt = (pattern: RegExp) => (err: unknown) => err instanceof ModelError && err.code === 'MDL_ERR_CHECKPOINT_CORRUPT' && pattern.test(err.message);

test('a saved checkpoint opens with its state and header entries, and each tensor reads back equal', async () => {
  const { paths } = await saved();
  const c = await openCheckpointFiles(paths, 'saved');
  try {
    assert.equal(c.step, 5);
    assert.equal(c.optimizerStep, 5);
    assert.deepEqual(c.state.cursor, { shard: 0, offset: 40 });
    assert.deepEqual([...c.tensors.model.keys()].sort(), layout.specs.map((s) => s.name).sort());
    const wte = layout.specs.find((s) => s.name === 'wte.weight')!;
    assert.deepEqual((await c.read('model', 'wte.weight')).data, values(0.3).subarray(0, wte.size));
    assert.deepEqual((await c.read('expAvg', 'wte.weight')).data, values(0.1).subarray(0, wte.size));
  } finally {
    await c.close();
  }
});

test('what writeCheckpointFiles writes, tensor by tensor, loadCheckpoint loads with the same tensors', async () => {
  const out = join(root, `written-${++n}`);
  mkdirSync(out);
  const flat = { model: values(0.3), expAvg: values(0.1), expAvgSq: values(0.05).map(Math.abs) };
  const files = await writeCheckpointFiles(out, {
    step: 7, weights: layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape }] as const), moments: layout.specs.map((s) => s.name),
    optimizerStep: 7, state: { note: 'streamed' },
    tensor: async (group, name) => {
      const s = layout.specs.find((p) => p.name === name)!;
      return flat[group].subarray(s.offset, s.offset + s.size);
    },
  });
  assert.deepEqual(Object.keys(files).sort(), [MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE]);
  const dir = join(root, `step-${++n}`, 'step-000007');
  mkdirSync(dir, { recursive: true });
  for (const [name, f] of Object.entries(files)) writeFileSync(join(dir, name), readFileSync(f.path));
  const loaded = await loadCheckpoint(dir);
  assert.equal(loaded.state.note, 'streamed');
  assert.equal(loaded.optimizer.step, 7);
  assert.deepEqual(loaded.model['h.1.mlp.c_fc.weight'], stateDict(flat.model, layout)['h.1.mlp.c_fc.weight']);
  assert.deepEqual(loaded.optimizer.expAvgSq['wpe.weight'], stateDict(flat.expAvgSq, layout)['wpe.weight']);
});

test('a flipped byte, a truncated file, a missing file and a missing manifest are refused as loadCheckpoint refuses them', async () => {
  for (const [damage, pattern] of [
    [(p: Record<string, string>) => {
      const b = readFileSync(p[MODEL_FILE]!);
      b[b.length - 1] = b[b.length - 1]! ^ 0xff;
      writeFileSync(p[MODEL_FILE]!, b);
    }, /model\.safetensors: sha256 is [0-9a-f]{64} but manifest\.json says/],
    [(p: Record<string, string>) => truncateSync(p[OPTIMIZER_FILE]!, 100), /optimizer\.safetensors is 100 bytes but manifest\.json says \d+ \(truncated\)/],
    [(p: Record<string, string>) => rmSync(p[STATE_FILE]!), /state\.json is listed in manifest\.json but cannot be opened/],
    [(p: Record<string, string>) => rmSync(p[MANIFEST_FILE]!), /manifest\.json cannot be read/],
  ] as const) {
    const { dir, paths } = await saved();
    damage(paths);
    await assert.rejects(openCheckpointFiles(paths, 'damaged'), corrupt(pattern));
    await assert.rejects(loadCheckpoint(dir), corrupt(pattern), 'the in-memory loader says the same');
  }
  const { paths } = await saved();
  const { [STATE_FILE]: _state, ...without } = paths;
  await assert.rejects(openCheckpointFiles(without, 'partial'), corrupt(/state\.json is listed in manifest\.json but not among the checkpoint's files/));
});
