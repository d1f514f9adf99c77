/**
 * npx tsx --test test/node-agent/trainer-diloco.test.ts
 *
 * DiLoCo (training.diloco) on two in-memory replicas, each rank with its own compute worker: inner steps send
 * nothing over any ring, a round's end sends one pseudo-gradient all-reduce, both replicas continue from the same
 * weights, checkpoints carry the outer momentum, and a resume takes it back (or zero from a checkpoint without one).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { Ring } from '../../node-agent/collectives/ring.ts';
import type { AgentMessage } from '../../protocol/control.ts';
import { readSafetensors } from '../../model/safetensors.ts';
import { checkpointsOf, progressOf, relDiff, runRanks, tinyDataset, tinySpec, type Dataset, type RankRun } from './trainer-support.ts';

let ds: Dataset;
before(async () => {
  ds = await tinyDataset();
});
after(async () => {
  await rm(ds.root, { recursive: true, force: true });
});

const dilocoSpec = (training: object = {}) => tinySpec({ steps: 7, checkpointEvery: 3, diloco: { innerSteps: 3 }, ...training });
const ranksOf = (msgs: AgentMessage[]) => msgs.filter((m): m is Extract<AgentMessage, { type: 'job.rank' }> => m.type === 'job.rank');

/** Runs `fn` counting every ring collective each rank starts, by kind and buffer length. */
async function countingCollectives<T>(fn: () => Promise<T>): Promise<{ result: T; calls: Array<{ kind: string; elems: number; rank: number; size: number }> }> {
  const calls: Array<{ kind: string; elems: number; rank: number; size: number }> = [];
  const proto = Ring.prototype as unknown as Record<string, (this: Ring, buf: Float32Array, ...rest: unknown[]) => Promise<unknown>>;
  const originals = new Map<string, (this: Ring, buf: Float32Array, ...rest: unknown[]) => Promise<unknown>>();
  for (const kind of ['allReduce', 'reduceScatter', 'allGather', 'broadcast']) {
    const original = proto[kind]!;
    originals.set(kind, original);
    proto[kind] = function (this: Ring, buf: Float32Array, ...rest: unknown[]) {
      if (this.size > 1) calls.push({ kind, elems: buf.length, rank: this.rank, size: this.size });
      return original.call(this, buf, ...rest);
    };
  }
  try {
    return { result: await fn(), calls };
  } finally {
    for (const [kind, original] of originals) proto[kind] = original;
  }
}

let diloco: RankRun[];

test('DiLoCo replicas send nothing on inner steps, synchronise after every innerSteps-th and the last step, and agree on the weights', async () => {
  const { result, calls } = await countingCollectives(() => runRanks({ world: 2, spec: dilocoSpec(), ds, jobId: 'diloco' }));
  diloco = result;
  for (const r of diloco) assert.ok(r.finished.ok, r.finished.error);
  const paramCount = progressOf(diloco[0]!.messages)[0]!.paramCount!;
  // Per rank: one all-reduce of the whole pseudo-gradient per round (steps 3, 6, 7) and the held-out loss's two
  // floats at the end. Nothing else: no per-step norm, loss or gradient exchange.
  for (const rank of [0, 1]) {
    const mine = calls.filter((c) => c.rank === rank).map((c) => `${c.kind}:${c.elems}`);
    assert.deepEqual(mine, [`allReduce:${paramCount}`, `allReduce:${paramCount}`, `allReduce:${paramCount}`, 'allReduce:2'], `rank ${rank}`);
  }
  const reports = diloco.map((r) => ranksOf(r.messages));
  for (const rs of reports) {
    assert.deepEqual(rs.filter((m) => m.link).map((m) => m.step), [3, 6, 7], 'the data ring is used only at the end of a round');
    assert.deepEqual(rs.filter((m) => m.outer).map((m) => [m.step, m.outer!.steps]), [[3, 1], [6, 2], [7, 3]]);
    for (const m of rs.filter((x) => x.link)) assert.equal(m.link!.bytes, paramCount * 4, 'f32 pseudo-gradient, ring of 2: each rank sends the buffer once');
  }
  // both replicas continue from bit-identical weights after every synchronisation
  assert.deepEqual(reports[0]!.filter((m) => m.outer).map((m) => m.outer!.checksum), reports[1]!.filter((m) => m.outer).map((m) => m.outer!.checksum));
  const progress = progressOf(diloco[0]!.messages);
  assert.deepEqual(progress.map((p) => p.outerSteps), [undefined, undefined, 1, undefined, undefined, 2, 3]);
  assert.deepEqual(progress.filter((p) => p.outerSyncBytes !== undefined).map((p) => [p.step, p.outerSyncBytes]), [[3, paramCount * 4], [6, paramCount * 4], [7, paramCount * 4]]);
  assert.ok(progress.every((p) => Number.isFinite(p.loss) && p.loss > 0));
  assert.ok(progress.at(-1)!.evalLoss! > 0, 'the held-out loss at the end, on the outer weights');
});

test('with a bf16 wire the pseudo-gradient travels in half the bytes and the replicas still agree bit for bit', async () => {
  const runs = await runRanks({ world: 2, spec: dilocoSpec({ steps: 6, gradientWire: 'bf16' }), ds, jobId: 'diloco-bf16' });
  for (const r of runs) assert.ok(r.finished.ok, r.finished.error);
  const paramCount = progressOf(runs[0]!.messages)[0]!.paramCount!;
  const synced = runs.map((r) => ranksOf(r.messages).filter((m) => m.outer));
  assert.deepEqual(synced[0]!.map((m) => m.link!.bytes), [paramCount * 2, paramCount * 2]);
  assert.deepEqual(synced[0]!.map((m) => m.outer!.checksum), synced[1]!.map((m) => m.outer!.checksum));
});

test('plain data parallelism on the same job runs two collectives per step: DiLoCo sends innerSteps times fewer gradient buffers', async () => {
  const { result, calls } = await countingCollectives(() => runRanks({ world: 2, spec: tinySpec({ steps: 6, checkpointEvery: 3 }), ds, jobId: 'plain' }));
  for (const r of result) assert.ok(r.finished.ok, r.finished.error);
  const paramCount = progressOf(result[0]!.messages)[0]!.paramCount!;
  const rank0 = calls.filter((c) => c.rank === 0);
  assert.equal(rank0.filter((c) => c.elems === paramCount).length, 6, 'a gradient all-reduce every step');
  assert.equal(rank0.filter((c) => c.elems < paramCount).length, 6 + 1, 'the world sums every step, and the held-out loss');
});

test('a DiLoCo checkpoint holds the outer weights and momentum; resuming from it gives the same round', async () => {
  const ckpt = checkpointsOf(diloco[0]!.messages).find((c) => c.step === 3);
  assert.ok(ckpt && ckpt.files['outer.safetensors'], `the step-3 checkpoint has outer.safetensors: ${JSON.stringify(ckpt?.files)}`);
  const outer = readSafetensors(Buffer.from(await ds.store.get(ckpt.files['outer.safetensors']!)));
  assert.equal(outer.metadata.format, 'meshtrain-diloco');
  const names = Object.keys(outer.tensors);
  assert.ok(names.length > 0 && names.every((n) => n.startsWith('outer_momentum.')));
  assert.ok(names.some((n) => (outer.tensors[n]!.data as Float32Array).some((x) => x !== 0)), 'the momentum after one outer step is not zero');

  const resumed = await runRanks({ world: 2, spec: dilocoSpec(), ds, jobId: 'resumed', resume: { step: 3, files: ckpt.files } });
  for (const r of resumed) assert.ok(r.finished.ok, r.finished.error);
  const a = progressOf(diloco[0]!.messages).slice(3), b = progressOf(resumed[0]!.messages);
  assert.deepEqual(b.map((p) => p.step), [4, 5, 6, 7]);
  // Rank 0 resumes with its own weights, moments and data: its round is the uninterrupted one. (Replica 1 takes
  // replica 0's AdamW moments, so the rounds after the next synchronisation differ a little.)
  for (let i = 0; i < 3; i++) assert.ok(relDiff(b[i]!.loss, a[i]!.loss) < 1e-5, `step ${i + 4}: resumed ${b[i]!.loss}, uninterrupted ${a[i]!.loss}`);
  assert.deepEqual(ranksOf(resumed[0]!.messages).filter((m) => m.outer).map((m) => m.outer!.steps), [2, 3], 'outer steps counted on from the checkpoint');
  assert.ok(relDiff(b[3]!.loss, a[3]!.loss) < 0.05, `step 7: resumed ${b[3]!.loss}, uninterrupted ${a[3]!.loss}`);
});

test('a DiLoCo job resumes from a plain data-parallel checkpoint, which has no outer momentum, starting it at zero', async () => {
  const plain = await runRanks({ world: 2, spec: tinySpec({ steps: 3, checkpointEvery: 3 }), ds, jobId: 'plain-ckpt' });
  const ckpt = checkpointsOf(plain[0]!.messages).find((c) => c.step === 3)!;
  assert.equal(ckpt.files['outer.safetensors'], undefined);
  const resumed = await runRanks({ world: 2, spec: dilocoSpec({ steps: 6 }), ds, jobId: 'from-plain', resume: { step: 3, files: ckpt.files } });
  for (const r of resumed) assert.ok(r.finished.ok, r.finished.error);
  assert.deepEqual(ranksOf(resumed[0]!.messages).filter((m) => m.outer).map((m) => m.outer!.steps), [2]);
});

test('a plan that splits a DiLoCo replica over pipeline stages is refused as a fault of the job', async () => {
  const runs = await runRanks({ world: 2, layout: { data: 1, pipeline: 2, tensor: 1 }, spec: { ...dilocoSpec(), model: { ...dilocoSpec().model, nLayer: 2 } }, ds, jobId: 'diloco-split' });
  for (const r of runs) {
    assert.equal(r.finished.ok, false);
    assert.equal(r.finished.fatal, true);
    assert.match(r.finished.error!, /training\.diloco needs whole-model replicas without ZeRO-1; the plan is 1×2×1/);
  }
});
