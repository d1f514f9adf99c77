/**
 * The trainer on the WebGPU backend (Dawn on Mesa's llvmpipe, `webgpu-software`: every machine has it, CI
 * included) against wasm: the same job, the same seed and data, in ranks each with its own compute worker on the
 * in-memory rings of test/support/fake-topology.ts. Unsplit, tensor-parallel and pipeline shards must give wasm's
 * losses and final weights within 1e-4 relative (float32 kernels differ in summation order, nothing more), and a
 * job whose ranks compute on different backends must train the same model.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { maxRel, progressOf, relDiff, runRanks, tinyDataset, tinySpec, trainedParams, type Dataset, type RankRun } from './trainer-support.ts';
import type { ParallelLayout } from '../../protocol/layout.ts';
import type { BackendChoice } from '../../model/compute/backend.ts';

let ds: Dataset;
let wasm: RankRun[];
let wasmParams: Float32Array;
// 2 blocks and 2 heads: room for 2 stages and 2 tensor shards; 4 sequences in 2 micro-batches per step.
const spec = tinySpec({ batchSize: 4, microBatches: 2, steps: 4 });
spec.model = { ...spec.model, nLayer: 2, nHead: 2 };
const STEPS = 4;

before(async () => {
  ds = await tinyDataset();
  wasm = await runRanks({ world: 1, spec, ds, jobId: 'wasm', backend: 'wasm' });
  wasmParams = await trainedParams(wasm, ds, spec);
});
after(async () => {
  await rm(ds.root, { recursive: true, force: true });
});

async function sameAsWasm(layout: ParallelLayout, backend: BackendChoice | BackendChoice[], jobId: string): Promise<RankRun[]> {
  const runs = await runRanks({ world: layout.data * layout.pipeline * layout.tensor, layout, spec, ds, jobId, backend });
  const failed = runs.filter((r) => !r.finished.ok);
  assert.equal(failed.length, 0, failed.map((r) => `rank ${r.finished.rank}: ${r.finished.error}\n${r.log.slice(-5).join('\n')}`).join('\n'));
  const a = progressOf(wasm[0]!.messages), b = progressOf(runs[0]!.messages);
  assert.equal(b.length, STEPS);
  for (let i = 0; i < STEPS; i++) assert.ok(relDiff(b[i]!.loss, a[i]!.loss) < 1e-4, `step ${i + 1}: ${b[i]!.loss} vs wasm's ${a[i]!.loss}`);
  assert.ok(relDiff(b[STEPS - 1]!.evalLoss!, a[STEPS - 1]!.evalLoss!) < 1e-4, `held-out ${b[STEPS - 1]!.evalLoss} vs ${a[STEPS - 1]!.evalLoss}`);
  const rel = maxRel(await trainedParams(runs, ds, spec), wasmParams);
  assert.ok(rel < 1e-4, `final weights differ from wasm's by ${rel}`);
  assert.ok(a[0]!.loss > a[STEPS - 1]!.loss, 'the loss falls: the comparison is of a model that trains');
  return runs;
}

test('one rank on WebGPU trains the model wasm trains (losses, held-out loss, final weights within 1e-4)', async () => {
  const runs = await sameAsWasm({ data: 1, pipeline: 1, tensor: 1 }, 'webgpu-software', 'gpu1');
  assert.ok(runs[0]!.log.some((l) => /webgpu/.test(l)), `the rank says it computes on webgpu:\n${runs[0]!.log.join('\n')}`);
});

test('two tensor-parallel shards on WebGPU train the model wasm trains', async () => {
  await sameAsWasm({ data: 1, pipeline: 1, tensor: 2 }, 'webgpu-software', 'gputp');
});

test('two pipeline stages on WebGPU train the model wasm trains', async () => {
  await sameAsWasm({ data: 1, pipeline: 2, tensor: 1 }, 'webgpu-software', 'gpupp');
});

// Not tensor-parallel: the replicated tensors of a TP group (LayerNorms, biases, embeddings) stay equal only when
// every rank computes them with the same kernels, so the planner keeps a TP group on one backend.
test('a job whose ranks compute on WebGPU and on wasm trains the same model (data-parallel and pipeline)', async () => {
  await sameAsWasm({ data: 2, pipeline: 1, tensor: 1 }, ['webgpu-software', 'wasm'], 'mixdp');
  await sameAsWasm({ data: 1, pipeline: 2, tensor: 1 }, ['wasm', 'webgpu-software'], 'mixpp');
});
