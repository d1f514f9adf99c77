/**
 * model/checkpoint.ts on a real file system (a fresh temporary folder per test): round trips, damaged checkpoints
 * refused and skipped, interrupted saves ignored and cleaned, retention.
 */
import { afterEach, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, mkdir, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  checkpointDirName,
  cleanLeftovers,
  listCheckpoints,
  loadCheckpoint,
  loadLatestGoodCheckpoint,
  optimizerFromPrefixed,
  optimizerToPrefixed,
  pruneCheckpoints,
  saveCheckpoint,
  snapshotTensors,
  type CheckpointContents,
} from '../../model/checkpoint.ts';
import { readSafetensors, type TensorMap } from '../../model/safetensors.ts';
import { ModelError } from '../../model/errors.ts';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshtrain-ckpt-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A tiny GPT-2-shaped model (d=4, 1 layer, vocab 8, ctx 3) whose values depend on `seed`, with AdamW moments. */
function contents(seed: number, extraState: Record<string, unknown> = {}): CheckpointContents {
  const d = 4;
  const shapes: Record<string, number[]> = {
    'wte.weight': [8, d],
    'wpe.weight': [3, d],
    'h.0.ln_1.weight': [d],
    'h.0.attn.c_attn.weight': [d, 3 * d],
    'h.0.attn.c_attn.bias': [3 * d],
    'ln_f.bias': [d],
  };
  const model: TensorMap = {};
  const expAvg: TensorMap = {};
  const expAvgSq: TensorMap = {};
  for (const [name, shape] of Object.entries(shapes)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const fill = (k: number) => Float32Array.from({ length: n }, (_, i) => seed * 1000 + k * 100 + i * 0.25);
    model[name] = { dtype: 'F32', shape, data: fill(0) };
    expAvg[name] = { dtype: 'F32', shape, data: fill(1) };
    expAvgSq[name] = { dtype: 'F32', shape, data: fill(2) };
  }
  return {
    model,
    optimizer: { step: seed, expAvg, expAvgSq },
    state: { dataCursor: { shard: 1, offset: seed * 64 }, rng: [1, 2, 3, seed], config: { nLayer: 1, nEmbd: d }, metrics: { loss: 2.5 }, ...(extraState as object) },
  };
}

async function rejects(promise: Promise<unknown>, code: string, message: RegExp): Promise<ModelError> {
  let caught: unknown;
  await assert.rejects(promise, (err: unknown) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof ModelError, `expected a ModelError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  assert.match(caught.message, message);
  return caught;
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('saving and loading', () => {
  test('a saved checkpoint loads back with the same weights, moments, optimizer step and state', async () => {
    const c = contents(3);
    const saved = await saveCheckpoint(root, 3, c);
    assert.equal(saved.dir, join(root, 'step-000003'));
    const loaded = await loadCheckpoint(saved.dir);
    assert.equal(loaded.step, 3);
    for (const [name, t] of Object.entries(c.model)) {
      assert.deepEqual(loaded.model[name], { dtype: t.dtype, shape: t.shape, data: t.data });
      assert.deepEqual(loaded.optimizer.expAvg[name]!.data, c.optimizer.expAvg[name]!.data);
      assert.deepEqual(loaded.optimizer.expAvgSq[name]!.data, c.optimizer.expAvgSq[name]!.data);
    }
    assert.equal(loaded.optimizer.step, 3);
    assert.deepEqual(loaded.state, { ...c.state, step: 3 });
    assert.equal(loaded.modelMetadata.format, 'pt');
  });

  test('the folder holds the four files and the manifest records each one\'s size and sha256', async () => {
    const { dir, manifest } = await saveCheckpoint(root, 12, contents(1));
    assert.deepEqual((await readdir(dir)).sort(), ['manifest.json', 'model.safetensors', 'optimizer.safetensors', 'state.json']);
    const onDisk = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8'));
    assert.deepEqual(onDisk, manifest);
    assert.equal(manifest.format, 'meshtrain-checkpoint');
    assert.equal(manifest.version, 1);
    assert.equal(manifest.step, 12);
    assert.deepEqual(Object.keys(manifest.files).sort(), ['model.safetensors', 'optimizer.safetensors', 'state.json']);
    for (const [file, entry] of Object.entries(manifest.files)) {
      const bytes = await readFile(join(dir, file));
      assert.equal(entry.bytes, bytes.length, file);
      assert.equal(entry.sha256, sha256(bytes), file);
    }
  });

  test('model.safetensors is a plain safetensors file with GPT-2 names and the "pt" format tag transformers expects', async () => {
    const { dir } = await saveCheckpoint(root, 1, { ...contents(1), modelMetadata: { source: 'test' } });
    const file = readSafetensors(await readFile(join(dir, 'model.safetensors')));
    assert.deepEqual(file.metadata, { format: 'pt', source: 'test' });
    assert.deepEqual(file.tensors['h.0.attn.c_attn.weight']!.shape, [4, 12]);
    const opt = readSafetensors(await readFile(join(dir, 'optimizer.safetensors')));
    assert.deepEqual(opt.metadata, { format: 'meshtrain-adamw', step: '1' });
    assert.ok('exp_avg.wte.weight' in opt.tensors && 'exp_avg_sq.wte.weight' in opt.tensors);
  });

  test('a model without optimizer moments (say, exported for inference) saves and loads', async () => {
    const c = contents(2);
    const { dir } = await saveCheckpoint(root, 2, { ...c, optimizer: { step: 0, expAvg: {}, expAvgSq: {} } });
    const loaded = await loadCheckpoint(dir);
    assert.deepEqual(loaded.optimizer, { step: 0, expAvg: {}, expAvgSq: {} });
  });

  test('saving refuses moments that do not match the weights, and writes nothing', async () => {
    const c = contents(1);
    const bad = (optimizer: CheckpointContents['optimizer']) => saveCheckpoint(root, 1, { ...c, optimizer });
    await rejects(bad({ ...c.optimizer, expAvgSq: { ...c.optimizer.expAvgSq, 'wte.weight': { dtype: 'F32', shape: [4, 8], data: new Float32Array(32) } } }), 'MDL_ERR_CHECKPOINT_WRITE', /exp_avg_sq of "wte.weight" is F32 \[4, 8\] but the weight is F32 \[8, 4\]/);
    const { 'ln_f.bias': _dropped, ...fewer } = c.optimizer.expAvgSq;
    await rejects(bad({ ...c.optimizer, expAvgSq: fewer }), 'MDL_ERR_CHECKPOINT_WRITE', /"ln_f.bias" has exp_avg but not exp_avg_sq/);
    await rejects(bad({ ...c.optimizer, expAvg: { ...c.optimizer.expAvg, nope: { dtype: 'F32', shape: [1], data: new Float32Array(1) } } }), 'MDL_ERR_CHECKPOINT_WRITE', /exp_avg has "nope", which is not a weight/);
    await rejects(saveCheckpoint(root, 1, { ...c, state: { step: 2 } }), 'MDL_ERR_CHECKPOINT_WRITE', /state.step is 2, not 1/);
    await rejects(saveCheckpoint(root, 1, { ...c, state: { big: 1n } as never }), 'MDL_ERR_CHECKPOINT_WRITE', /BigInt/);
    await rejects(saveCheckpoint(root, -1, c), 'MDL_ERR_CHECKPOINT_WRITE', /step must be a non-negative integer/);
    assert.deepEqual(await readdir(root), []);
  });

  test('saving a step that already exists replaces it', async () => {
    await saveCheckpoint(root, 5, contents(1));
    await saveCheckpoint(root, 5, contents(2));
    assert.deepEqual((await readdir(root)).sort(), ['step-000005']);
    const loaded = await loadCheckpoint(join(root, 'step-000005'));
    assert.equal(loaded.optimizer.step, 2);
  });

  test('moments in the one-map form of model/optim.ts (exp_avg.<name> keys) convert both ways', async () => {
    const c = contents(2);
    const flat = optimizerToPrefixed(c.optimizer);
    assert.equal(flat.tensors.size, 12);
    assert.deepEqual(flat.tensors.get('exp_avg_sq.wte.weight'), { shape: [8, 4], data: c.optimizer.expAvgSq['wte.weight']!.data });
    const { dir } = await saveCheckpoint(root, 2, { ...c, optimizer: optimizerFromPrefixed(flat) });
    assert.deepEqual(optimizerToPrefixed((await loadCheckpoint(dir)).optimizer), flat);
    assert.throws(() => optimizerFromPrefixed({ step: 1, tensors: new Map([['m.x', { shape: [1], data: new Float32Array(1) }]]) }), /"m\.x" is neither/);
  });

  test('a background save of snapshots is unaffected by changes made to the originals meanwhile', async () => {
    const c = contents(1);
    const pending = saveCheckpoint(root, 1, { ...c, model: snapshotTensors(c.model) });
    (c.model['wte.weight']!.data as Float32Array).fill(-1);
    const loaded = await loadCheckpoint((await pending).dir);
    assert.equal(loaded.model['wte.weight']!.data[0], 1000);
  });
});

describe('damaged checkpoints are refused, and the latest good one is used', () => {
  test('one flipped byte in model.safetensors fails the sha256 check and the previous step is loaded instead', async () => {
    await saveCheckpoint(root, 1, contents(1));
    const { dir } = await saveCheckpoint(root, 2, contents(2));
    const path = join(dir, 'model.safetensors');
    const bytes = await readFile(path);
    bytes[bytes.length - 5]! ^= 0x01;
    await writeFile(path, bytes);
    await rejects(loadCheckpoint(dir), 'MDL_ERR_CHECKPOINT_CORRUPT', /step-000002: model\.safetensors: sha256 is [0-9a-f]{64} but manifest\.json says [0-9a-f]{64}/);

    const skipped: Array<{ step: number; code: string; message: string }> = [];
    const good = await loadLatestGoodCheckpoint(root, { onSkip: (s) => skipped.push({ step: s.step, code: s.error.code, message: s.error.message }) });
    assert.equal(good?.step, 1);
    assert.deepEqual(good?.state.rng, [1, 2, 3, 1]);
    assert.equal(skipped.length, 1);
    assert.equal(skipped[0]!.step, 2);
    assert.equal(skipped[0]!.code, 'MDL_ERR_CHECKPOINT_CORRUPT');
    assert.match(skipped[0]!.message, /model\.safetensors: sha256/);
  });

  test('a truncated file is caught by its size before it is hashed', async () => {
    const { dir, manifest } = await saveCheckpoint(root, 4, contents(4));
    const size = manifest.files['optimizer.safetensors']!.bytes;
    await truncate(join(dir, 'optimizer.safetensors'), size - 10);
    await rejects(loadCheckpoint(dir), 'MDL_ERR_CHECKPOINT_CORRUPT', new RegExp(`optimizer\\.safetensors is ${size - 10} bytes but manifest\\.json says ${size} \\(truncated\\)`));
  });

  test('a missing file, a missing manifest and an unreadable manifest are each refused by name', async () => {
    const { dir } = await saveCheckpoint(root, 7, contents(7));
    await rm(join(dir, 'state.json'));
    await rejects(loadCheckpoint(dir), 'MDL_ERR_CHECKPOINT_CORRUPT', /state\.json is listed in manifest\.json but cannot be opened \(ENOENT\)/);
    await writeFile(join(dir, 'manifest.json'), '{"format": "meshtrain-checkpoint", ');
    await rejects(loadCheckpoint(dir), 'MDL_ERR_CHECKPOINT_CORRUPT', /manifest\.json is not valid JSON/);
    await rm(join(dir, 'manifest.json'));
    await rejects(loadCheckpoint(dir), 'MDL_ERR_CHECKPOINT_CORRUPT', /manifest\.json cannot be read \(ENOENT\): the checkpoint is incomplete/);
  });

  test('a manifest that leaves out a required file or names another step is refused', async () => {
    const { dir, manifest } = await saveCheckpoint(root, 8, contents(8));
    const { 'state.json': _left, ...files } = manifest.files;
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, files }));
    await rejects(loadCheckpoint(dir), 'MDL_ERR_CHECKPOINT_CORRUPT', /manifest\.json does not list state\.json/);
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, step: 9 }));
    await rejects(loadCheckpoint(dir), 'MDL_ERR_CHECKPOINT_CORRUPT', /step is 9 but the folder is named for step 8/);
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, version: 2 }));
    await rejects(loadCheckpoint(dir), 'MDL_ERR_CHECKPOINT_CORRUPT', /format version 2 is not supported/);
  });

  test('files that match the manifest but disagree with each other are refused', async () => {
    const { dir, manifest } = await saveCheckpoint(root, 3, contents(3));
    const state = Buffer.from(JSON.stringify({ step: 4 }));
    await writeFile(join(dir, 'state.json'), state);
    const files = { ...manifest.files, 'state.json': { bytes: state.length, sha256: sha256(state) } };
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, files }));
    await rejects(loadCheckpoint(dir), 'MDL_ERR_CHECKPOINT_CORRUPT', /state\.json: step is 4 but manifest\.json says 3/);
  });

  test('a verified file that is not valid safetensors is refused with the parser\'s reason', async () => {
    const { dir, manifest } = await saveCheckpoint(root, 3, contents(3));
    const junk = Buffer.from('not safetensors at all');
    await writeFile(join(dir, 'model.safetensors'), junk);
    const files = { ...manifest.files, 'model.safetensors': { bytes: junk.length, sha256: sha256(junk) } };
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, files }));
    await rejects(loadCheckpoint(dir), 'MDL_ERR_CHECKPOINT_CORRUPT', /model\.safetensors: header length \d+ is above/);
  });

  test('with no checkpoints there is nothing to load; with only bad ones loading fails and names each', async () => {
    assert.equal(await loadLatestGoodCheckpoint(join(root, 'does-not-exist')), undefined);
    assert.equal(await loadLatestGoodCheckpoint(root), undefined);
    for (const step of [1, 2]) {
      const { dir } = await saveCheckpoint(root, step, contents(step));
      await truncate(join(dir, 'model.safetensors'), 8);
    }
    const skipped: number[] = [];
    const err = await rejects(loadLatestGoodCheckpoint(root, { onSkip: (s) => skipped.push(s.step) }), 'MDL_ERR_NO_GOOD_CHECKPOINT', /none of the 2 checkpoints/);
    assert.deepEqual(skipped, [2, 1]);
    assert.match(err.message, /step-000002: model\.safetensors is 8 bytes/);
    assert.match(err.message, /step-000001: model\.safetensors is 8 bytes/);
  });
});

describe('interrupted saves', () => {
  test('a leftover temporary folder from a crashed save is ignored by listing and loading, and removed by the next save', async () => {
    await saveCheckpoint(root, 1, contents(1));
    // What a process killed mid-save leaves: a complete-looking folder that was never renamed into place.
    const crashed = join(root, '.tmp-step-000002.999999999.0badc0de');
    await mkdir(crashed);
    await writeFile(join(crashed, 'model.safetensors'), 'half');
    await writeFile(join(crashed, 'manifest.json'), '{}');
    assert.deepEqual((await listCheckpoints(root)).map((r) => r.step), [1]);
    assert.equal((await loadLatestGoodCheckpoint(root))?.step, 1);

    await saveCheckpoint(root, 2, contents(2));
    assert.deepEqual((await readdir(root)).sort(), ['step-000001', 'step-000002']);
  });

  test('a temporary folder of a save still running in another process is left alone', async () => {
    const live = join(root, `.tmp-step-000003.${process.ppid}.00000001`);
    await mkdir(live);
    assert.deepEqual(await cleanLeftovers(root), []);
    await stat(live);
  });

  test('clean-up during a save in this same process leaves the temporary folder of that save alone', async () => {
    const big = contents(1);
    big.model['wte.weight'] = { dtype: 'F32', shape: [1 << 22], data: new Float32Array(1 << 22) };
    big.optimizer = { step: 1, expAvg: {}, expAvgSq: {} };
    const pending = saveCheckpoint(root, 1, big);
    let saved = false;
    void pending.then(() => (saved = true), () => (saved = true));
    for (const deadline = Date.now() + 30_000; !(await readdir(root)).some((n) => n.startsWith('.tmp-')); await new Promise((r) => setImmediate(r))) {
      assert.ok(!saved, 'the save ended before its temporary folder was seen: nothing to clean up during it');
      assert.ok(Date.now() < deadline, 'no temporary folder of the save appeared within 30 s');
    }
    assert.deepEqual(await cleanLeftovers(root), []);
    await Promise.all([pending, saveCheckpoint(root, 2, contents(2)), pruneCheckpoints(root, 5)]);
    assert.deepEqual((await listCheckpoints(root)).map((r) => r.step), [1, 2]);
    assert.equal((await loadCheckpoint(join(root, 'step-000001'))).model['wte.weight']!.data.length, 1 << 22);
  });

  test('a save that fails after writing its files leaves neither a checkpoint nor a temporary folder', async () => {
    await writeFile(join(root, checkpointDirName(6)), 'a file where the folder must go');
    await rejects(saveCheckpoint(root, 6, contents(6)), 'MDL_ERR_CHECKPOINT_WRITE', /checkpoint step 6: could not write .*step-000006/);
    assert.deepEqual(await readdir(root), ['step-000006']);
    assert.ok((await stat(join(root, 'step-000006'))).isFile());
    assert.deepEqual(await listCheckpoints(root), []);
  });
});

describe('a process killed while saving', () => {
  test('leaves only checkpoints that verify, and leftovers that the next clean-up removes', async () => {
    // A child saves 24 MB checkpoints back to back; it is killed at a moment that varies from run to run, most
    // likely in the middle of writing one. Whatever it left must either verify or not look like a checkpoint.
    const script = join(root, 'saver.mts'); // .mts: ESM without a package.json beside it
    const checkpointModule = pathToFileURL(fileURLToPath(new URL('../../model/checkpoint.ts', import.meta.url))).href;
    await writeFile(script, [
      `import { saveCheckpoint } from ${JSON.stringify(checkpointModule)};`,
      `const root = ${JSON.stringify(join(root, 'ckpt'))};`,
      `const t = (v) => ({ dtype: 'F32', shape: [1 << 21], data: new Float32Array(1 << 21).fill(v) });`,
      `for (let step = 1; ; step++) {`,
      `  await saveCheckpoint(root, step, { model: { w: t(step) }, optimizer: { step, expAvg: { w: t(1) }, expAvgSq: { w: t(2) } }, state: {} });`,
      `  console.log(step);`,
      `}`,
    ].join('\n'));
    const cwd = fileURLToPath(new URL('../..', import.meta.url)); // where tsx resolves
    const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd, stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      let out = '';
      child.stdout.setEncoding('utf8');
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (chunk: string) => {
          out += chunk;
          if (out.split('\n').includes('2')) resolve();
        });
        child.once('exit', (code) => reject(new Error(`saver exited early with ${code}`)));
      });
      await new Promise((r) => setTimeout(r, Math.random() * 60));
    } finally {
      child.kill('SIGKILL');
      if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
    }
    const ckpt = join(root, 'ckpt');
    const refs = await listCheckpoints(ckpt);
    assert.ok(refs.length >= 2);
    for (const ref of refs) {
      const loaded = await loadCheckpoint(ref.dir);
      assert.equal(loaded.model.w!.data[0], ref.step);
    }
    await cleanLeftovers(ckpt);
    assert.deepEqual((await readdir(ckpt)).sort(), refs.map((r) => checkpointDirName(r.step)));
  });
});

describe('listing and retention', () => {
  test('checkpoints are listed oldest first by step number; other names and files are ignored', async () => {
    for (const step of [10, 9, 1000000, 100]) await saveCheckpoint(root, step, contents(1));
    await mkdir(join(root, 'step-7'));
    await mkdir(join(root, 'step-0000011'));
    await writeFile(join(root, 'step-000012'), '');
    await mkdir(join(root, 'notes'));
    assert.deepEqual((await listCheckpoints(root)).map((r) => r.step), [9, 10, 100, 1000000]);
    assert.equal(checkpointDirName(1000000), 'step-1000000');
  });

  test('pruning keeps the newest N checkpoints and removes leftovers', async () => {
    for (const step of [1, 2, 3, 4, 5]) await saveCheckpoint(root, step, contents(step));
    await mkdir(join(root, '.del-step-000000.999999999.abcdef01'));
    const removed = await pruneCheckpoints(root, 2);
    assert.deepEqual(removed.map((r) => r.step), [1, 2, 3]);
    assert.deepEqual((await readdir(root)).sort(), ['step-000004', 'step-000005']);
    assert.deepEqual(await pruneCheckpoints(root, 5), []);
    assert.equal((await loadLatestGoodCheckpoint(root))?.step, 5);
  });

  test('pruning refuses to keep fewer than one', async () => {
    await rejects(pruneCheckpoints(root, 0), 'MDL_ERR_CHECKPOINT_WRITE', /keep must be an integer ≥ 1, got 0/);
  });
});
