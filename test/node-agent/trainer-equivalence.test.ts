import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { checkpointsOf, maxRel, progressOf, relDiff, runRanks, tinyDataset, tinySpec, trainedParams, type Dataset, type RankRun } from './trainer-support.ts';

let ds: Dataset;
let one: RankRun;
before(async () => {
  ds = await tinyDataset();
});
after(async () => {
  await rm(ds.root, { recursive: true, force: true });
});

/** The trained weights, as the coordinator registers them: from the final step's checkpoint. */
const modelOf = async (runs: RankRun[]) => ({ params: await trainedParams(runs, ds, tinySpec()) });

test('one rank trains 5 steps, reports progress every step with an eval at the end, and uploads its final checkpoint', async () => {
  [one] = await runRanks({ world: 1, spec: tinySpec(), ds }) as [RankRun];
  assert.ok(one.finished.ok, one.finished.error);
  assert.equal(one.finished.step, 5);
  const progress = progressOf(one.messages);
  assert.deepEqual(progress.map((p) => p.step), [1, 2, 3, 4, 5]);
  assert.ok(progress.every((p) => Number.isFinite(p.loss) && p.tokensPerS > 0 && p.stepMs > 0 && p.lr > 0));
  assert.ok(progress[0]!.loss > 5, `initial loss ${progress[0]!.loss} should be near ln(300) ≈ 5.7`);
  assert.ok(progress[4]!.loss < progress[0]!.loss, 'the loss goes down');
  assert.equal(progress.filter((p) => p.evalLoss !== undefined).map((p) => p.step).join(), '5');
  assert.ok(one.log.some((l) => /step 5\/5 loss \d+\.\d+ .*tok\/s/.test(l)), 'a live line per step in the log');
  assert.deepEqual(checkpointsOf(one.messages).map((c) => c.step), [5]);
  assert.equal((await modelOf([one])).params.length, 300 * 16 + 16 * 16 + (12 * 16 * 16 + 13 * 16) + 2 * 16); // wte, wpe, one block, ln_f
});

test('two ranks with the same global batch and seed give the losses and weights of one rank', async () => {
  const runs = await runRanks({ world: 2, spec: tinySpec(), ds });
  for (const r of runs) assert.ok(r.finished.ok, r.finished.error);
  assert.equal(progressOf(runs[1]!.messages).length, 0, 'only rank 0 reports progress');
  assert.equal(checkpointsOf(runs[1]!.messages).length, 0, 'only data-parallel rank 0 of a shard saves it');
  const a = progressOf(one.messages), b = progressOf(runs[0]!.messages);
  assert.equal(b.length, 5);
  for (let i = 0; i < 5; i++) {
    assert.ok(relDiff(b[i]!.loss, a[i]!.loss) < 1e-4, `step ${i + 1}: world 2 loss ${b[i]!.loss}, world 1 ${a[i]!.loss}`);
    assert.equal(b[i]!.lr, a[i]!.lr);
  }
  assert.ok(relDiff(b[4]!.evalLoss!, a[4]!.evalLoss!) < 1e-4, `eval ${b[4]!.evalLoss} vs ${a[4]!.evalLoss}`);
  const w1 = await modelOf([one]), w2 = await modelOf(runs);
  const rel = maxRel(w2.params, w1.params);
  assert.ok(rel < 1e-4, `weights differ by ${rel}`);
});

test('three ranks with two micro-batches each equal one rank with six', async () => {
  const spec = tinySpec({ batchSize: 6, microBatches: 2, steps: 3 });
  const [w1] = await runRanks({ world: 1, spec, ds, jobId: 'w1' });
  const w3 = await runRanks({ world: 3, spec, ds, jobId: 'w3' });
  for (const r of [w1!, ...w3]) assert.ok(r.finished.ok, r.finished.error);
  const a = progressOf(w1!.messages), b = progressOf(w3[0]!.messages);
  assert.equal(b.length, 3);
  for (let i = 0; i < 3; i++) assert.ok(relDiff(b[i]!.loss, a[i]!.loss) < 1e-4, `step ${i + 1}: ${b[i]!.loss} vs ${a[i]!.loss}`);
  const rel = maxRel((await modelOf(w3)).params, (await modelOf([w1!])).params);
  assert.ok(rel < 1e-4, `weights differ by ${rel}`);
});

test('a held-out split too small for one global batch skips evaluation with a warning instead of failing the job', async () => {
  const [r] = await runRanks({ world: 1, spec: tinySpec({ batchSize: 64, microBatches: 4, steps: 2 }), ds, jobId: 'bigbatch' });
  assert.ok(r!.finished.ok, r!.finished.error);
  const progress = progressOf(r!.messages);
  assert.deepEqual(progress.map((p) => p.step), [1, 2]);
  assert.ok(progress.every((p) => p.evalLoss === undefined));
  assert.ok(r!.log.some((l) => /no held-out evaluation: .*heldOut split cannot serve/.test(l)), r!.log.join('\n'));
});
