/** Adapter checkpoints through the coordinator's CheckpointSharder: cut for pipeline × tensor ranks and merged back. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArtifactStore } from '../../coordinator/store/artifact-store.ts';
import { CheckpointSharder } from '../../coordinator/jobs/checkpoint-shards.ts';
import { MANIFEST_FILE, saveCheckpoint } from '../../model/checkpoint.ts';
import { flatFromStateDict, stateDict, type GPTConfig } from '../../model/params.ts';
import { loraLayout, loraSpec } from '../../model/lora.ts';
import { allShards } from '../../model/shard-layout.ts';

const CONFIG: GPTConfig = { vocabSize: 32, nCtx: 8, nLayer: 4, nHead: 2, nEmbd: 16 };
const SPEC = loraSpec({ rank: 2, alpha: 4, dropout: 0, targets: ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'] });

test('an adapter checkpoint (weights and AdamW moments) resharded to 2 stages × 2 tensor ranks merges back bit for bit', async (t) => {
  const scratch = mkdtempSync(join(tmpdir(), 'adapter-ckpt-'));
  t.after(() => rmSync(scratch, { recursive: true, force: true }));
  const layout = loraLayout(CONFIG, SPEC);
  const values = (k: number) => Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(i * k + 1));
  const saved = await saveCheckpoint(join(scratch, 'canonical'), 7, {
    model: stateDict(values(0.37), layout),
    optimizer: { step: 7, expAvg: stateDict(values(0.11), layout), expAvgSq: stateDict(values(0.05).map(Math.abs), layout) },
    state: { jobId: 'job-1' },
  });
  const store = new ArtifactStore(join(scratch, 'store'));
  const canonical: Record<string, string> = {};
  for (const name of [...Object.keys(saved.manifest.files), MANIFEST_FILE]) canonical[name] = await store.put(readFileSync(join(saved.dir, name)));
  const sharder = new CheckpointSharder(store, join(scratch, 'scratch'));
  const adapter = { config: CONFIG, lora: SPEC };
  const parts = await sharder.reshard(adapter, canonical, allShards([[0, 2], [2, 4]], 2));
  const oneShard = await sharder.load(parts[3]!);
  assert.deepEqual(oneShard.state.shard, { stage: 1, stages: 2, firstLayer: 2, endLayer: 4, tpRank: 1, tpSize: 2 });
  assert.equal(oneShard.model['h.0.attn.c_attn.lora_A'], undefined, 'stage 1 holds blocks 2–3 only');
  assert.deepEqual(oneShard.model['h.2.mlp.c_proj.lora_A']!.shape, [32, 2], 'row-parallel: half of A\'s 64 rows');

  const merged = await sharder.load(await sharder.mergeShards(adapter, parts));
  assert.deepEqual(flatFromStateDict(merged.model, layout), values(0.37));
  assert.deepEqual(flatFromStateDict(merged.optimizer.expAvg, layout), values(0.11));
  assert.equal(merged.state.shard, undefined);
  assert.equal(merged.state.jobId, 'job-1');
  await assert.rejects(sharder.mergeShards({ config: CONFIG }, parts), /holds h\.0\.attn\.c_attn\.lora_A, which is no parameter of this model|lacks/, 'the full-model layouts do not fit adapter shards');
});
