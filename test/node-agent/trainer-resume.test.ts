import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { checkpointsOf, maxRel, progressOf, relDiff, runRanks, sha256, tinyDataset, tinySpec, trainedParams, type Dataset, type RankRun } from './trainer-support.ts';

let ds: Dataset;
let full: RankRun[];
const spec = tinySpec({ steps: 6, checkpointEvery: 3, evalEvery: 3 });

before(async () => {
  ds = await tinyDataset();
});
after(async () => {
  await rm(ds.root, { recursive: true, force: true });
});

const weightsOf = (runs: RankRun[]): Promise<Float32Array> => trainedParams(runs, ds, spec);

function step3Files(): Record<string, string> {
  const ckpt = checkpointsOf(full[0]!.messages).find((c) => c.step === 3);
  assert.ok(ckpt, 'a checkpoint of step 3');
  return ckpt.files;
}

test('two ranks checkpoint every 3 steps: rank 0 uploads step 3 and step 6 with the cursor and the resolved spec', async () => {
  full = await runRanks({ world: 2, spec, ds, jobId: 'full' });
  for (const r of full) assert.ok(r.finished.ok, r.finished.error);
  const ckpts = checkpointsOf(full[0]!.messages);
  assert.deepEqual(ckpts.map((c) => c.step), [3, 6]);
  assert.equal(checkpointsOf(full[1]!.messages).length, 0);
  const files = ckpts[0]!.files;
  assert.deepEqual(Object.keys(files).sort(), ['manifest.json', 'model.safetensors', 'optimizer.safetensors', 'state.json']);
  const state = JSON.parse(Buffer.from(await ds.store.get(files['state.json']!)).toString('utf8'));
  assert.equal(state.step, 3);
  assert.ok(Number.isInteger(state.cursor.shard) && state.cursor.offset === 3 * 4 * 16, JSON.stringify(state.cursor));
  assert.equal(state.spec.training.checkpointEvery, 3);
  assert.equal(state.spec.training.beta2, 0.95, 'defaults are resolved');
  // the checkpoint message comes after that step's progress (it is uploaded in the background)
  const order = full[0]!.messages.map((m) => (m.type === 'job.checkpoint' ? `c${m.step}` : m.type === 'job.progress' ? `p${m.step}` : m.type));
  assert.ok(order.indexOf('c3') > order.indexOf('p3') && order.at(-1) === 'job.finished', order.join(' '));
  assert.deepEqual(progressOf(full[0]!.messages).filter((p) => p.evalLoss !== undefined).map((p) => p.step), [3, 6]);
});

test('resuming from the step-3 checkpoint runs steps 4–6 with the losses and final weights of the uninterrupted run', async () => {
  const resumed = await runRanks({ world: 2, spec, ds, jobId: 'resumed', resume: { step: 3, files: step3Files() } });
  for (const r of resumed) assert.ok(r.finished.ok, r.finished.error);
  const a = progressOf(full[0]!.messages).slice(3), b = progressOf(resumed[0]!.messages);
  assert.deepEqual(b.map((p) => p.step), [4, 5, 6]);
  for (let i = 0; i < 3; i++) {
    assert.ok(relDiff(b[i]!.loss, a[i]!.loss) < 1e-4, `step ${i + 4}: resumed ${b[i]!.loss}, uninterrupted ${a[i]!.loss}`);
    assert.equal(b[i]!.lr, a[i]!.lr);
  }
  assert.ok(relDiff(b[2]!.evalLoss!, a[2]!.evalLoss!) < 1e-4);
  const rel = maxRel(await weightsOf(resumed), await weightsOf(full));
  assert.ok(rel < 1e-5, `weights differ by ${rel}`);
});

test('a checkpoint made by two ranks resumes on one rank (the data cursor is global)', async () => {
  const [one] = await runRanks({ world: 1, spec, ds, jobId: 'replanned', resume: { step: 3, files: step3Files() } });
  assert.ok(one!.finished.ok, one!.finished.error);
  const a = progressOf(full[0]!.messages).slice(3), b = progressOf(one!.messages);
  assert.deepEqual(b.map((p) => p.step), [4, 5, 6]);
  for (let i = 0; i < 3; i++) assert.ok(relDiff(b[i]!.loss, a[i]!.loss) < 1e-4, `step ${i + 4}: ${b[i]!.loss} vs ${a[i]!.loss}`);
});

test('ZeRO-1 ranks resume from the same checkpoint, each reading only its range of the moments, with the uninterrupted losses', async () => {
  const resumed = await runRanks({ world: 2, spec, ds, jobId: 'resumed-zero', zero: 1, resume: { step: 3, files: step3Files() } });
  for (const r of resumed) assert.ok(r.finished.ok, r.finished.error);
  const a = progressOf(full[0]!.messages).slice(3), b = progressOf(resumed[0]!.messages);
  assert.deepEqual(b.map((p) => p.step), [4, 5, 6]);
  for (let i = 0; i < 3; i++) assert.ok(relDiff(b[i]!.loss, a[i]!.loss) < 1e-4, `step ${i + 4}: ${b[i]!.loss} vs ${a[i]!.loss}`);
  const rel = maxRel(await weightsOf(resumed), await weightsOf(full));
  assert.ok(rel < 1e-5, `weights differ by ${rel}`);
});

test('a resume file whose stored bytes no longer match its sha256 fails on every rank, naming the file', async () => {
  const files = step3Files();
  const digest = files['model.safetensors']!;
  const good = await readFile(ds.store.pathOf(digest));
  const bad = Buffer.from(good);
  bad[bad.length - 1] = bad[bad.length - 1]! ^ 0xff;
  await writeFile(ds.store.pathOf(digest), bad);
  try {
    const t0 = performance.now();
    const runs = await runRanks({ world: 2, spec, ds, jobId: 'corrupt', resume: { step: 3, files } });
    assert.ok(performance.now() - t0 < 10_000);
    for (const r of runs) {
      assert.equal(r.finished.ok, false);
      assert.match(r.finished.error!, /model\.safetensors/);
      assert.match(r.finished.error!, /hash/);
      assert.equal(progressOf(r.messages).length, 0);
      assert.equal(r.messages.length, 1, 'job.finished only');
    }
  } finally {
    await writeFile(ds.store.pathOf(digest), good);
  }
});

test('a resume file set that does not match its manifest fails, naming the file', async () => {
  const files = { ...step3Files() };
  const opt = Buffer.from(await ds.store.get(files['optimizer.safetensors']!));
  opt[opt.length - 1] = opt[opt.length - 1]! ^ 0x01; // intact in the store under its new address, but not what manifest.json lists
  files['optimizer.safetensors'] = await ds.store.put(opt);
  assert.equal(files['optimizer.safetensors'], sha256(opt));
  const [r] = await runRanks({ world: 1, spec, ds, jobId: 'mismatch', resume: { step: 3, files } });
  assert.equal(r!.finished.ok, false);
  assert.match(r!.finished.error!, /optimizer\.safetensors: sha256 is [0-9a-f]{64} but manifest\.json says/);
});

test('a resume step that disagrees with the checkpoint fails', async () => {
  const [r] = await runRanks({ world: 1, spec, ds, jobId: 'wrongstep', resume: { step: 4, files: step3Files() } });
  assert.equal(r!.finished.ok, false);
  assert.match(r!.finished.error!, /step/);
});
