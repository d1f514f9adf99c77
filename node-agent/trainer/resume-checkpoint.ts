/**
 * The checkpoint a rank resumes from, read and verified inside the trainer worker from the files main downloaded
 * (model/checkpoint.ts loadCheckpoint: sizes, sha256 against the manifest, consistency), then checked against the
 * job: its step, its model, the shard this rank needs (the coordinator reshards the layout-free checkpoint for each
 * shard), a data cursor and AdamW's step. Reading ~1.5 GB and hashing it takes seconds: on main it would stall
 * heartbeats, and a copy posted to the worker would double the memory.
 */
import { loadCheckpoint, MANIFEST_FILE } from '../../model/checkpoint.ts';
import { shardOfCheckpoint, type ShardSpec } from '../../model/shard-layout.ts';
import type { ShardCursor } from '../../model/token-shard-reader.ts';
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { coordsOf } from '../../protocol/layout.ts';
import type { Placement, ResumeState } from './messages.ts';

/** The shard a rank of `placement` holds. */
export function shardOf(spec: ResolvedJobSpec, placement: Placement): ShardSpec {
  const { layout, stages, rank } = placement;
  const { pp, tp } = coordsOf(rank, layout);
  const [firstLayer, endLayer] = stages[pp]!;
  return { stage: pp, stages: layout.pipeline, firstLayer, endLayer, tpRank: tp, tpSize: layout.tensor };
}

const sameShard = (a: ShardSpec, b: ShardSpec) =>
  a.stage === b.stage && a.stages === b.stages && a.firstLayer === b.firstLayer && a.endLayer === b.endLayer && a.tpRank === b.tpRank && a.tpSize === b.tpSize;

/** Loads the checkpoint of `step` from `dir` and checks that it fits the job and holds exactly `shard`. */
export async function loadResume(dir: string, step: number, spec: ResolvedJobSpec, shard: ShardSpec): Promise<ResumeState> {
  const ckpt = await loadCheckpoint(dir);
  const bad = (why: string) => new Error(`resume checkpoint of step ${step}: ${why}`);
  if (ckpt.step !== step) throw bad(`${MANIFEST_FILE} says step ${ckpt.step}`);
  const saved = ckpt.state.spec as unknown as ResolvedJobSpec | undefined;
  if (!saved || typeof saved !== 'object' || JSON.stringify(saved.model) !== JSON.stringify(spec.model)) {
    throw bad(`state.json's model ${JSON.stringify(saved?.model)} is not this job's ${JSON.stringify(spec.model)}`);
  }
  const held = shardOfCheckpoint(ckpt.state, spec.model.nLayer);
  if (!sameShard(held, shard)) throw bad(`it holds shard ${JSON.stringify(held)}, this rank needs ${JSON.stringify(shard)}`);
  const cursor = ckpt.state.cursor as unknown as ShardCursor | undefined;
  if (!cursor || !Number.isInteger(cursor.shard) || !Number.isInteger(cursor.offset)) throw bad(`state.json has no data cursor`);
  if (ckpt.optimizer.step !== step) throw bad(`optimizer.safetensors has ${ckpt.optimizer.step} updates, not ${step}`);
  return { model: ckpt.model, optimizer: ckpt.optimizer, step, cursor: { shard: cursor.shard, offset: cursor.offset } };
}
