/**
 * npx tsx --test test/model/checkpoint-outer.test.ts
 *
 * A DiLoCo checkpoint's optional outer.safetensors (model/checkpoint-files.ts): written beside the three required
 * files and listed in the manifest, read back by weight name, refused when it is not DiLoCo's, and ignored by the
 * in-memory loader, so every other reader takes such a checkpoint unchanged.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCheckpoint } from '../../model/checkpoint.ts';
import { OUTER_FILE, openCheckpointFiles, writeCheckpointFiles, type StreamedCheckpoint } from '../../model/checkpoint-files.ts';
import { ModelError } from '../../model/errors.ts';
import { paramLayout } from '../../model/params.ts';

const root = mkdtempSync(join(tmpdir(), 'checkpoint-outer-'));
after(() => rmSync(root, { recursive: true, force: true }));
const layout = paramLayout({ vocabSize: 300, nCtx: 8, nLayer: 1, nHead: 2, nEmbd: 8 });
const values = (k: number) => Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(i * k));
const slice = (flat: Float32Array, name: string) => ((s) => flat.subarray(s.offset, s.offset + s.size))(layout.specs.find((p) => p.name === name)!);
let n = 0;

async function written(outer?: StreamedCheckpoint['outerMomentum']): Promise<Record<string, string>> {
  const dir = join(root, `c${++n}`);
  mkdirSync(dir);
  const flat = { model: values(0.3), expAvg: values(0.1), expAvgSq: values(0.05).map(Math.abs) };
  const files = await writeCheckpointFiles(dir, {
    step: 10, weights: layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape }] as const), moments: layout.specs.map((s) => s.name),
    optimizerStep: 10, state: {}, tensor: async (group, name) => slice(flat[group], name), ...(outer ? { outerMomentum: outer } : {}),
  });
  return Object.fromEntries(Object.entries(files).map(([name, f]) => [name, f.path]));
}

test('the outer momentum is written as outer.safetensors, listed in the manifest, and read back by weight name', async () => {
  const momentum = values(0.7);
  const paths = await written({ names: layout.specs.map((s) => s.name), tensor: async (name) => slice(momentum, name) });
  assert.ok(paths[OUTER_FILE]);
  const c = await openCheckpointFiles(paths, 'diloco');
  try {
    assert.equal(c.tensors.outerMomentum.size, layout.specs.length);
    assert.deepEqual((await c.read('outerMomentum', 'wte.weight')).data, slice(momentum, 'wte.weight'));
  } finally {
    await c.close();
  }
  const loaded = await loadCheckpoint(join(root, `c${n}`));
  assert.equal(loaded.step, 10, 'the in-memory loader takes it, ignoring the extra file');
});

test('a checkpoint without it opens with no outer momentum', async () => {
  const c = await openCheckpointFiles(await written(), 'plain');
  try {
    assert.equal(c.tensors.outerMomentum.size, 0);
  } finally {
    await c.close();
  }
});

test('the outer momentum of some weights only is written, and of a name that is no weight is refused', async () => {
  const paths = await written({ names: ['wte.weight'], tensor: async () => new Float32Array(slice(values(1), 'wte.weight').length) });
  const ok = await openCheckpointFiles(paths, 'partial');
  await ok.close(); // some weights only: allowed (a resume then asks for each; resume-checkpoint.ts refuses a gap)
  await assert.rejects(
    written({ names: ['no.such.weight'], tensor: async () => new Float32Array(1) }),
    (err: unknown) => err instanceof ModelError && err.code === 'MDL_ERR_CHECKPOINT_WRITE' && /outer momentum of "no.such.weight"/.test(err.message),
  );
});
