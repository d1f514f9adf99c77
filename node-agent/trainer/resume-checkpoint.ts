/**
 * The checkpoint a rank resumes from, read and verified inside the trainer worker from the files main downloaded
 * (model/checkpoint.ts loadCheckpoint: sizes, sha256 against the manifest, consistency), then checked against the
 * job: its step, its model, the shard this rank needs (the coordinator reshards the layout-free checkpoint for each
 * shard), a data cursor and AdamW's step. Reading ~1.5 GB and hashing it takes seconds: on main it would stall
 * heartbeats, and a copy posted to the worker would double the memory. The files are verified by streaming them
 * through sha256 (model/checkpoint-files.ts) and their tensors read one at a time into the trainer's own buffers
 * (fillFromResume): the checkpoint is never held whole in memory.
 */
import { MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE } from '../../model/checkpoint.ts';
import { OUTER_FILE, openCheckpointFiles, type TensorGroup } from '../../model/checkpoint-files.ts';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { shardOfCheckpoint, type ShardSpec } from '../../model/shard-layout.ts';
import type { ShardCursor } from '../../model/token-shard-reader.ts';
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { coordsOf } from '../../protocol/layout.ts';
import { AgentError } from '../errors.ts';
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

/** Opens and verifies the checkpoint of `step` in `dir` and checks that it fits the job and holds exactly `shard`. */
export async function loadResume(dir: string, step: number, spec: ResolvedJobSpec, shard: ShardSpec): Promise<ResumeState> {
  // outer.safetensors (DiLoCo's outer momentum) is there only when the checkpoint has one.
  const names = [MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, ...(existsSync(join(dir, OUTER_FILE)) ? [OUTER_FILE] : [])];
  const paths = Object.fromEntries(names.map((f) => [f, join(dir, f)]));
  const files = await openCheckpointFiles(paths, `of step ${step}`);
  try {
    const bad = (why: string) => new AgentError('AGT_ERR_RESUME', `resume checkpoint of step ${step}: ${why}`);
    if (files.step !== step) throw bad(`${MANIFEST_FILE} says step ${files.step}`);
    const saved = files.state.spec as unknown as ResolvedJobSpec | undefined;
    if (!saved || typeof saved !== 'object' || JSON.stringify(saved.model) !== JSON.stringify(spec.model)) {
      throw bad(`state.json's model ${JSON.stringify(saved?.model)} is not this job's ${JSON.stringify(spec.model)}`);
    }
    const held = shardOfCheckpoint(files.state, spec.model.nLayer);
    if (!sameShard(held, shard)) throw bad(`it holds shard ${JSON.stringify(held)}, this rank needs ${JSON.stringify(shard)}`);
    const cursor = files.state.cursor as unknown as ShardCursor | undefined;
    if (!cursor || !Number.isInteger(cursor.shard) || !Number.isInteger(cursor.offset)) throw bad(`state.json has no data cursor`);
    if (files.optimizerStep !== step) throw bad(`optimizer.safetensors has ${files.optimizerStep} updates, not ${step}`);
    return { files, step, cursor: { shard: cursor.shard, offset: cursor.offset } };
  } catch (err) {
    await files.close();
    throw err;
  }
}

/** Where one trained tensor goes: its offset and size in the shard's flat layout. */
interface Slot {
  readonly name: string;
  readonly offset: number;
  readonly size: number;
  readonly shape: readonly number[];
}

/**
 * Reads the checkpoint's tensors one at a time straight into the trainer's buffers: every weight into `params` (flat,
 * layout order), and of each moment the part inside the optimizer's `range` into `expAvg`/`expAvgSq` (range
 * length). Each tensor must be float32 of its slot's size. With `outerMomentum` (a DiLoCo job, flat like `params`),
 * the checkpoint's outer momentum goes there when it has one; a checkpoint without (plain data parallelism, or
 * older) leaves it as it is: zero. Closes the files.
 */
export async function fillFromResume(
  resume: ResumeState, slots: readonly Slot[], params: Float32Array, range: readonly [number, number], expAvg: Float32Array, expAvgSq: Float32Array,
  outerMomentum?: Float32Array,
): Promise<void> {
  const [lo, hi] = range;
  try {
    for (const s of slots) {
      for (const [group, label] of [['model', ''], ['expAvg', 'exp_avg.'], ['expAvgSq', 'exp_avg_sq.']] as Array<[TensorGroup, string]>) {
        const from = s.offset, to = s.offset + s.size;
        if (group !== 'model' && (to <= lo || from >= hi)) continue; // outside this rank's ZeRO-1 range
        const info = resume.files.tensors[group].get(s.name);
        if (!info || info.dtype !== 'F32' || info.shape.reduce((a, b) => a * b, 1) !== s.size) {
          throw new AgentError('AGT_ERR_RESUME', `the resume checkpoint's ${label}${s.name} does not fit this shard (expected ${s.shape.join('×')} float32)`);
        }
        // Straight into place: all of a weight; of a moment, the part inside the range.
        const a = group === 'model' ? from : Math.max(lo, from), b = group === 'model' ? to : Math.min(hi, to);
        const into = group === 'model' ? params.subarray(a, b) : (group === 'expAvg' ? expAvg : expAvgSq).subarray(a - lo, b - lo);
        await resume.files.readInto(group, s.name, new Uint8Array(into.buffer, into.byteOffset, into.byteLength), (a - from) * 4);
      }
      if (outerMomentum && resume.files.tensors.outerMomentum.size > 0) {
        const info = resume.files.tensors.outerMomentum.get(s.name);
        if (!info || info.dtype !== 'F32' || info.shape.reduce((a, b) => a * b, 1) !== s.size) {
          throw new AgentError('AGT_ERR_RESUME', `the resume checkpoint's outer_momentum.${s.name} does not fit this shard (expected ${s.shape.join('×')} float32)`);
        }
        const into = outerMomentum.subarray(s.offset, s.offset + s.size);
        await resume.files.readInto('outerMomentum', s.name, new Uint8Array(into.buffer, into.byteOffset, into.byteLength));
      }
    }
  } finally {
    await resume.files.close();
  }
}
