/**
 * Merging shard checkpoints into one layout-free checkpoint, and cutting that into any layout's shard checkpoints,
 * from files to files one tensor at a time (model/checkpoint-reshard.ts says what merging and cutting mean; this
 * module streams them). A merge holds one full parameter, its coverage map and one shard's slice of it; a reshard
 * one full parameter and its slice — for GPT-2-small at most wte: 154 MB, never the 1.5 GB checkpoint.
 *
 * Every input is verified first (model/checkpoint-files.ts: sizes, sha256, headers, consistency), and every shard's
 * tensors are checked against its layout before a byte is written, so a bad input fails with the same
 * MDL_ERR_CHECKPOINT_CORRUPT / MDL_ERR_RESHARD messages as the in-memory path, and leaves no output.
 */
import { openCheckpointFiles, writeCheckpointFiles, type CheckpointFiles, type CheckpointPaths, type TensorGroup, type WrittenFile } from './checkpoint-files.ts';
import type { CheckpointLayouts } from './checkpoint-reshard.ts';
import { ParamMerger, shardName } from './checkpoint-reshard.ts';
import { ModelError } from './errors.ts';
import type { JsonValue } from './checkpoint.ts';
import { extractParam, shardOfCheckpoint, type ShardLayout, type ShardSpec } from './shard-layout.ts';

const GROUPS: readonly TensorGroup[] = ['model', 'expAvg', 'expAvgSq'];
const reshardError = (message: string) => new ModelError('MDL_ERR_RESHARD', message);
const groupLabel = (group: TensorGroup, name: string) => (group === 'model' ? name : `${group === 'expAvg' ? 'exp_avg' : 'exp_avg_sq'}.${name}`);

/** Throws unless `c` holds `name` in every group as F32 of `shape`, the way checkpoint-reshard.ts's f32Data words it. */
function checkF32(c: CheckpointFiles, name: string, shape: readonly number[], where: string): void {
  for (const group of GROUPS) {
    const t = c.tensors[group].get(name);
    const label = groupLabel(group, name);
    if (t === undefined) throw reshardError(`${where} lacks ${label}`);
    if (t.dtype !== 'F32') throw reshardError(`${where}: ${label} is ${t.dtype}, expected F32`);
    if (t.shape.join() !== shape.join()) throw reshardError(`${where}: ${label} has shape [${t.shape}], expected [${shape}]`);
  }
}

const f32 = (t: { data: ArrayBufferView }) => t.data as Float32Array;

async function openAll(parts: readonly CheckpointPaths[], label: (i: number) => string): Promise<CheckpointFiles[]> {
  const opened: CheckpointFiles[] = [];
  try {
    for (let i = 0; i < parts.length; i++) opened.push(await openCheckpointFiles(parts[i]!, label(i)));
    return opened;
  } catch (err) {
    await Promise.all(opened.map((c) => c.close()));
    throw err;
  }
}

/**
 * Merges every shard checkpoint of one step (weights and moments) into the canonical checkpoint, written into the
 * existing folder `outDir`. state.json is the first shard's without `shard`, with `extraState` over it.
 */
export async function mergeCheckpointFiles(
  nLayer: number,
  layouts: CheckpointLayouts,
  parts: readonly CheckpointPaths[],
  extraState: Record<string, JsonValue>,
  outDir: string,
): Promise<Record<string, WrittenFile>> {
  if (parts.length === 0) throw new Error('no shard checkpoints to merge');
  const opened = await openAll(parts, (i) => `shard ${i + 1} of ${parts.length}`);
  try {
    const steps = new Set(opened.map((c) => c.step));
    if (steps.size !== 1) throw new Error(`shard checkpoints of different steps: ${[...steps].join(', ')}`);
    const optimizerSteps = new Set(opened.map((c) => c.optimizerStep));
    if (optimizerSteps.size !== 1) throw new Error(`shards disagree on AdamW's step: ${[...optimizerSteps].join(', ')}`);
    const full = new Map(layouts.full.specs.map((s) => [s.name, s]));
    const withLayout: Array<{ c: CheckpointFiles; layout: ShardLayout }> = opened.map((c) => ({ c, layout: layouts.shard(shardOfCheckpoint(c.state, nLayer)) }));
    // Everything that can be checked without the data is checked before the first byte is written.
    for (const { c, layout } of withLayout) {
      for (const spec of layout.specs) {
        const s = full.get(spec.name);
        if (s === undefined) throw reshardError(`${shardName(layout.shard)} holds ${spec.name}, which is no parameter of this model`);
        if (spec.fullShape.join() !== s.shape.join()) throw reshardError(`${shardName(layout.shard)}: ${spec.name} is a slice of [${spec.fullShape}], but the model's is [${s.shape}]`);
        checkF32(c, spec.name, spec.shape, shardName(layout.shard));
      }
    }
    const holders = new Map<string, Array<{ c: CheckpointFiles; layout: ShardLayout }>>();
    for (const p of withLayout) for (const spec of p.layout.specs) holders.set(spec.name, [...(holders.get(spec.name) ?? []), p]);
    const first = opened[0]!;
    const { shard: _shard, ...state } = first.state;
    return await writeCheckpointFiles(outDir, {
      step: first.step,
      weights: layouts.full.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape }] as const),
      moments: layouts.full.specs.map((s) => s.name),
      optimizerStep: first.optimizerStep,
      state: { ...state, ...extraState },
      async tensor(group, name) {
        const s = full.get(name)!;
        const m = new ParamMerger(name, s.shape);
        for (const { c, layout } of holders.get(name) ?? []) {
          const spec = layout.byName.get(name)!;
          m.add(spec, layout.shard, f32(await c.read(group, name))); // one slice in memory at a time
        }
        return m.finish();
      },
    });
  } finally {
    await Promise.all(opened.map((c) => c.close()));
  }
}

/**
 * Cuts the canonical checkpoint into the shard checkpoint of each of `shards`, the i-th written into the existing
 * folder `outDirs[i]`; state.json is the canonical one's with `shard` set.
 */
export async function reshardCheckpointFiles(
  layouts: CheckpointLayouts,
  canonical: CheckpointPaths,
  shards: readonly ShardSpec[],
  outDirs: readonly string[],
): Promise<Array<Record<string, WrittenFile>>> {
  const [c] = await openAll([canonical], () => 'canonical');
  try {
    const { shard: _old, ...state } = c!.state;
    const out: Array<Record<string, WrittenFile>> = [];
    for (const [i, shard] of shards.entries()) {
      const layout = layouts.shard(shard);
      for (const spec of layout.specs) checkF32(c!, spec.name, spec.fullShape, 'full tensors');
      out.push(await writeCheckpointFiles(outDirs[i]!, {
        step: c!.step,
        weights: layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape }] as const),
        moments: layout.specs.map((s) => s.name),
        optimizerStep: c!.optimizerStep,
        state: { ...state, shard: { ...shard } },
        async tensor(group, name) {
          return extractParam(f32(await c!.read(group, name)), layout.byName.get(name)!);
        },
      }));
    }
    return out;
  } finally {
    await c!.close();
  }
}
