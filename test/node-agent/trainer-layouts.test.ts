/**
 * Every layout trains the same model as one rank (ARCHITECTURE.md, "Parallelism"): data × pipeline × tensor
 * ranks run in one process on in-memory rings (test/support/fake-topology.ts), each rank with its own compute
 * worker, and their losses and final (merged) weights are compared with a single rank's on the same global batch
 * and seed. The real-process versions are in test/integration/layouts.test.ts.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CheckpointSharder } from '../../coordinator/jobs/checkpoint-shards.ts';
import { allShards, splitLayers } from '../../model/shard-layout.ts';
import { coordsOf, type ParallelLayout } from '../../protocol/layout.ts';
import { finalCheckpoints, maxRel, progressOf, relDiff, runRanks, tinyDataset, tinySpec, trainedParams, type Dataset, type RankRun } from './trainer-support.ts';

let ds: Dataset;
let one: RankRun[];
let oneParams: Float32Array;
// 2 blocks and 2 heads: room for 2 stages and 2 tensor shards; 4 sequences in 2 micro-batches per step.
const spec = tinySpec({ batchSize: 4, microBatches: 2, steps: 5 });
spec.model = { ...spec.model, nLayer: 2, nHead: 2 };

before(async () => {
  ds = await tinyDataset();
  one = await runRanks({ world: 1, spec, ds, jobId: 'one' });
  oneParams = await trainedParams(one, ds, spec);
});
after(async () => {
  await rm(ds.root, { recursive: true, force: true });
});

async function sameAsOneRank(layout: ParallelLayout, extra: { zero?: 0 | 1; stages?: Array<[number, number]> } = {}) {
  const world = layout.data * layout.pipeline * layout.tensor;
  const runs = await runRanks({ world, layout, spec, ds, jobId: `l${layout.data}${layout.pipeline}${layout.tensor}${extra.zero ?? 0}`, ...extra });
  const failed = runs.filter((r) => !r.finished.ok);
  assert.equal(failed.length, 0, failed.map((r) => `rank ${r.finished.rank}: ${r.finished.error}\n${r.log.slice(-5).join('\n')}`).join('\n'));
  const a = progressOf(one[0]!.messages), b = progressOf(runs[0]!.messages);
  assert.equal(b.length, 5);
  for (let i = 0; i < 5; i++) assert.ok(relDiff(b[i]!.loss, a[i]!.loss) < 1e-4, `step ${i + 1}: ${b[i]!.loss} vs one rank's ${a[i]!.loss}`);
  assert.ok(relDiff(b[4]!.evalLoss!, a[4]!.evalLoss!) < 1e-4, `held-out ${b[4]!.evalLoss} vs ${a[4]!.evalLoss}`);
  const rel = maxRel(await trainedParams(runs, ds, spec), oneParams);
  assert.ok(rel < 1e-4, `final weights differ by ${rel}`);
  return runs;
}

test('two pipeline stages (1×2×1) train the same model as one rank', async () => {
  const runs = await sameAsOneRank({ data: 1, pipeline: 2, tensor: 1 });
  const p = progressOf(runs[0]!.messages).at(-1)!;
  assert.equal(p.stageBusyMs?.length, 2);
  assert.ok(p.bubble !== undefined && p.bubble > 0 && p.bubble < 1, `bubble ${p.bubble}`);
});

test('two tensor-parallel shards (1×1×2) train the same model as one rank', async () => {
  await sameAsOneRank({ data: 1, pipeline: 1, tensor: 2 });
});

test('2×2×1, 1×2×2 and 2×1×2 on four ranks train the same model as one rank', async () => {
  await sameAsOneRank({ data: 2, pipeline: 2, tensor: 1 });
  await sameAsOneRank({ data: 1, pipeline: 2, tensor: 2 });
  await sameAsOneRank({ data: 2, pipeline: 1, tensor: 2 });
});

test('ZeRO-1 over two replicas trains the same model and halves the optimizer state per rank', async () => {
  const plain = await runRanks({ world: 2, layout: { data: 2, pipeline: 1, tensor: 1 }, spec, ds, jobId: 'dp2' });
  const zero = await sameAsOneRank({ data: 2, pipeline: 1, tensor: 1 }, { zero: 1 });
  const bytes = (runs: RankRun[]) => progressOf(runs[0]!.messages).at(-1)!.optimizerBytes!;
  assert.ok(Math.abs(bytes(zero) / bytes(plain) - 0.5) < 0.01, `ZeRO-1 ${bytes(zero)} B vs ${bytes(plain)} B`);
});

test('a checkpoint saved at 2×2×1 resumes at 1×2×2, 1×1×1 and 4×1×1 and ends where an uninterrupted run ends', async () => {
  const long = { ...spec, training: { ...spec.training, steps: 6, checkpointEvery: 3 } };
  const reference = await runRanks({ world: 1, spec: long, ds, jobId: 'ref6' });
  const refParams = await trainedParams(reference, ds, long);
  const saved = await runRanks({ world: 4, layout: { data: 2, pipeline: 2, tensor: 1 }, spec: long, ds, jobId: 'saved' });
  const shards = finalCheckpoints(saved, 3);
  assert.equal(shards.length, 2, 'one shard checkpoint per stage, from data-parallel rank 0');
  const sharder = new CheckpointSharder(ds.store, join(ds.root, 'scratch'));
  const canonicalFiles = await sharder.mergeShards({ config: long.model }, shards.map((s) => s.files));
  const canonical = await sharder.load(canonicalFiles);
  assert.equal(canonical.step, 3);

  const resumeAt = async (layout: ParallelLayout, microBatches: number) => {
    const stages = splitLayers(long.model.nLayer, Array(layout.pipeline).fill(1));
    const shards = allShards(stages, layout.tensor);
    const cut = await sharder.reshard({ config: long.model }, canonicalFiles, shards);
    const files = new Map(shards.map((shard, i) => [`${shard.stage}.${shard.tpRank}`, cut[i]!]));
    const world = layout.data * layout.pipeline * layout.tensor;
    const runs = await runRanks({
      world, layout, stages, microBatches, spec: long, ds, jobId: `resumed${layout.data}${layout.pipeline}${layout.tensor}`,
      resume: (rank) => {
        const { pp, tp } = coordsOf(rank, layout);
        return { step: 3, files: files.get(`${pp}.${tp}`)! };
      },
    });
    const steps = progressOf(runs[0]!.messages).map((p) => p.step);
    assert.deepEqual(steps, [4, 5, 6], 'the resumed run does steps 4–6 only');
    const a = progressOf(reference[0]!.messages).slice(3), b = progressOf(runs[0]!.messages);
    for (let i = 0; i < 3; i++) assert.ok(relDiff(b[i]!.loss, a[i]!.loss) < 1e-4, `${layout.data}×${layout.pipeline}×${layout.tensor} step ${i + 4}: ${b[i]!.loss} vs ${a[i]!.loss}`);
    const rel = maxRel(await trainedParams(runs, ds, long), refParams);
    assert.ok(rel < 1e-4, `final weights differ by ${rel}`);
  };
  await resumeAt({ data: 1, pipeline: 2, tensor: 2 }, 2);
  await resumeAt({ data: 1, pipeline: 1, tensor: 1 }, 2);
  await resumeAt({ data: 4, pipeline: 1, tensor: 1 }, 1); // 1 row per replica: micro-batches do not change the model
});

test('stages may hold unequal numbers of blocks: [0, 1) and [1, 3) of a 3-block model train as one rank does', async () => {
  const deep = { ...spec, model: { ...spec.model, nLayer: 3 }, training: { ...spec.training, steps: 3 } };
  const [ref] = await runRanks({ world: 1, spec: deep, ds, jobId: 'deep1' });
  const runs = await runRanks({ world: 2, layout: { data: 1, pipeline: 2, tensor: 1 }, stages: [[0, 1], [1, 3]], spec: deep, ds, jobId: 'deep2' });
  const a = progressOf(ref!.messages), b = progressOf(runs[0]!.messages);
  assert.equal(b.length, 3);
  for (let i = 0; i < 3; i++) assert.ok(relDiff(b[i]!.loss, a[i]!.loss) < 1e-4, `step ${i + 1}: ${b[i]!.loss} vs ${a[i]!.loss}`);
  const rel = maxRel(await trainedParams(runs, ds, deep), await trainedParams([ref!], ds, deep));
  assert.ok(rel < 1e-4, `final weights differ by ${rel}`);
});
