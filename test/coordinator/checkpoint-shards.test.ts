/**
 * The coordinator's CheckpointSharder on a checkpoint of GPT-2-small's embedding size: cutting it into two pipeline
 * stages and merging them back runs in a worker, tensor by tensor, so the coordinator's event loop (heartbeats) stays
 * free and its memory holds a tensor, not a checkpoint. Run: npx tsx --test test/coordinator/checkpoint-shards.test.ts
 *
 * Measured on the 2-core machine, merging the two 549 MB shards of this test's checkpoint: the old load-everything
 * merge on the main thread computed 2,442 ms in one turn (timer 2.8–3.3 s late) and peaked at 1.93–1.97 GB RSS;
 * this test's reshard + merge in a worker, 35 ms in one turn and ~815 MB peak (from 310 MB), at load average ~13.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArtifactStore } from '../../coordinator/store/artifact-store.ts';
import { CheckpointSharder, type FileSet } from '../../coordinator/jobs/checkpoint-shards.ts';
import { writeCheckpointFiles } from '../../model/checkpoint-files.ts';
import { MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE } from '../../model/checkpoint.ts';
import { paramLayout, type GPTConfig } from '../../model/params.ts';
import { allShards } from '../../model/shard-layout.ts';
import { peakRss, watchEventLoop } from '../support/loop-watch.ts';

// GPT-2-small's vocabulary and width, two blocks: 52.8 M parameters, a 634 MB checkpoint with the moments.
const CONFIG: GPTConfig = { vocabSize: 50257, nCtx: 64, nLayer: 2, nHead: 12, nEmbd: 768 };
const STAGES: Array<[number, number]> = [[0, 1], [1, 2]];
// The longest one turn of the event loop may compute (CPU time, which other processes' load does not inflate; the
// loop's busy wall time and timer delay are reported, as test/support/loop-watch.ts explains). The old code computed
// for seconds in one turn.
const CPU_BOUND_MS = 250;

let dir: string;
let store: ArtifactStore;
let canonical: FileSet;
const sizeOf = (files: FileSet) => Object.values(files).reduce((n, d) => n + store.sizeOf(d)!, 0);

/** Writes a canonical checkpoint of CONFIG into the store, one generated tensor at a time (the test never holds it whole). */
async function storeCanonical(): Promise<FileSet> {
  const layout = paramLayout(CONFIG);
  const scratch = await store.scratchDir();
  const salt = { model: 1, expAvg: 2, expAvgSq: 3 } as const;
  const files = await writeCheckpointFiles(scratch, {
    step: 40,
    weights: layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape }] as const),
    moments: layout.specs.map((s) => s.name),
    optimizerStep: 40,
    state: { cursor: { shard: 0, offset: 0 }, jobId: 'big' },
    async tensor(group, name) {
      const s = layout.specs.find((p) => p.name === name)!;
      const out = new Float32Array(s.size);
      for (let i = 0; i < out.length; i++) out[i] = Math.sin((s.offset + i) * 0.001 * salt[group]);
      return out;
    },
  });
  const out: FileSet = {};
  for (const [name, f] of Object.entries(files)) {
    await store.commitFile(f.path, f.sha256);
    out[name] = f.sha256;
  }
  rmSync(scratch, { recursive: true, force: true });
  return out;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'checkpoint-shards-'));
  store = new ArtifactStore(join(dir, 'store'));
  canonical = await storeCanonical();
});

after(() => rmSync(dir, { recursive: true, force: true }));

test('cutting a 634 MB checkpoint into two stages and merging them back keeps the event loop free and memory under 2 shards', async () => {
  const sharder = new CheckpointSharder(store, join(dir, 'scratch'));
  const rssBefore = process.memoryUsage.rss();
  const watch = watchEventLoop();
  const t0 = performance.now();
  const parts = await sharder.reshard({ config: CONFIG }, canonical, allShards(STAGES, 1));
  const t1 = performance.now();
  const merged = await sharder.mergeShards({ config: CONFIG }, parts, { layout: { data: 1, pipeline: 2, tensor: 1 } });
  const t2 = performance.now();
  const loop = watch.stop();
  const rssPeak = peakRss(); // since the process started: the test's set-up holds one tensor at a time too

  // The weights and moments survive the round trip bit for bit: the files are the same bytes.
  assert.equal(merged[MODEL_FILE], canonical[MODEL_FILE]);
  assert.equal(merged[OPTIMIZER_FILE], canonical[OPTIMIZER_FILE]);
  const largest = Math.max(sizeOf(canonical), ...parts.map(sizeOf));
  console.log(`# reshard ${(t1 - t0).toFixed(0)} ms (shards of ${parts.map((p) => (sizeOf(p) / 1e6).toFixed(0)).join(' + ')} MB), ` +
    `merge ${(t2 - t1).toFixed(0)} ms; event loop busy ${loop.busyMs.toFixed(0)} ms in all, at most ${loop.maxBusyMs.toFixed(0)} ms at a time (${loop.maxCpuMs.toFixed(0)} ms of CPU in one turn), ` +
    `longest timer delay ${loop.maxDelayMs.toFixed(0)} ms; rss ${(rssBefore / 1e6).toFixed(0)} → peak ${(rssPeak / 1e6).toFixed(0)} MB ` +
    `(largest checkpoint ${(largest / 1e6).toFixed(0)} MB)`);
  const turnMs = Number.isNaN(loop.maxCpuMs) ? loop.maxBusyMs : loop.maxCpuMs; // no schedstat (not Linux): wall time
  assert.ok(turnMs < CPU_BOUND_MS, `one turn of the event loop computed for ${turnMs.toFixed(0)} ms`);
  assert.ok(rssPeak < 2 * largest, `peak RSS ${(rssPeak / 1e6).toFixed(0)} MB is not under 2 × ${(largest / 1e6).toFixed(0)} MB`);
});

test('a shard file damaged in the store fails the merge with an error naming the shard and the file, and leaves no scratch files', async () => {
  const small: GPTConfig = { vocabSize: 300, nCtx: 8, nLayer: 2, nHead: 2, nEmbd: 16 };
  const smallStore = new ArtifactStore(join(dir, 'small'));
  const layout = paramLayout(small);
  const scratch = await smallStore.scratchDir();
  const files = await writeCheckpointFiles(scratch, {
    step: 2, weights: layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape }] as const), moments: layout.specs.map((s) => s.name),
    optimizerStep: 2, state: {}, tensor: async (_g, name) => new Float32Array(layout.specs.find((s) => s.name === name)!.size).fill(0.5),
  });
  const set: FileSet = {};
  for (const [name, f] of Object.entries(files)) {
    await smallStore.commitFile(f.path, f.sha256);
    set[name] = f.sha256;
  }
  rmSync(scratch, { recursive: true, force: true });
  const sharder = new CheckpointSharder(smallStore, join(dir, 'scratch'));
  const parts = await sharder.reshard({ config: small }, set, allShards([[0, 1], [1, 2]], 1));
  writeFileSync(smallStore.pathOf(parts[1]![OPTIMIZER_FILE]!), 'not what was uploaded');
  await assert.rejects(sharder.mergeShards({ config: small }, parts), /shard 2 of 2: optimizer\.safetensors is 21 bytes but manifest\.json says \d+ \(truncated\)/);
  assert.deepEqual(readdirSync(join(dir, 'small', 'tmp')), [], 'the scratch folder is gone');
  await assert.rejects(sharder.mergeShards({ config: small }, [{ [MANIFEST_FILE]: 'f'.repeat(64) }]), /no artifact f{64}/);
});
