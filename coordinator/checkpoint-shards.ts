/**
 * Layout-free checkpoints. Agents save what they hold: data-parallel rank 0 of every (stage, tensor shard) uploads
 * a shard checkpoint (model/checkpoint.ts's folder format with local tensor shapes and `shard` in state.json).
 * When every shard of a step is in, `mergeShards` writes ONE canonical checkpoint of the whole model (GPT-2 names
 * and shapes, AdamW moments likewise) into the artifact store: that is what the job records, what the registry is
 * fed from at the end, and what a user can load. `reshard` turns a canonical checkpoint into the shard checkpoint
 * one rank of any other layout needs (a 2×2×1 run resumed at 1×1×1 or 1×2×2 …). A canonical checkpoint is itself
 * the shard checkpoint of the trivial shard (one stage, one tensor shard), so pure data parallelism sends it as is.
 *
 * Files travel through a scratch folder under the coordinator's data folder because model/checkpoint.ts verifies
 * (sizes, sha256 against the manifest) and writes (atomically) folders; the folder is removed afterwards.
 */
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadCheckpoint, MANIFEST_FILE, saveCheckpoint, type JsonValue, type LoadedCheckpoint } from '../model/checkpoint.ts';
import { mergeShardTensors, modelLayouts, shardTensors, type CheckpointLayouts } from '../model/checkpoint-reshard.ts';
import type { GPTConfig } from '../model/gpt.ts';
import { shardOfCheckpoint, type ShardSpec } from '../model/shard-layout.ts';
import type { TensorMap } from '../model/safetensors.ts';
/** What the sharder needs of an artifact store (coordinator/artifact-store.ts; tests pass an in-memory one). */
export interface ArtifactStore {
  get(digest: string): Promise<Uint8Array>;
  put(bytes: Uint8Array): Promise<string>;
}

export type FileSet = Record<string, string>; // file name → sha256 in the artifact store

const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$/;

export class CheckpointSharder {
  readonly #artifacts: ArtifactStore;
  readonly #scratch: string;

  constructor(artifacts: ArtifactStore, scratchDir: string) {
    this.#artifacts = artifacts;
    this.#scratch = scratchDir;
  }

  /** Downloads and verifies a checkpoint from the artifact store. */
  async load(files: FileSet): Promise<LoadedCheckpoint> {
    return this.#withScratch(async (dir) => {
      if (!Object.hasOwn(files, MANIFEST_FILE)) throw new Error(`the checkpoint's files lack ${MANIFEST_FILE}`);
      const folder = join(dir, 'in');
      await mkdir(folder, { recursive: true });
      for (const [name, digest] of Object.entries(files)) {
        if (!SAFE_NAME.test(name)) throw new Error(`checkpoint file name ${JSON.stringify(name)} is not a plain file name`);
        await writeFile(join(folder, name), await this.#artifacts.get(digest));
      }
      return loadCheckpoint(folder);
    });
  }

  /**
   * Merges every shard checkpoint of one step into the canonical one; returns its files. `layouts` says what the
   * checkpoints hold: the whole model by default, or e.g. a LoRA adapter (model/lora.ts's `loraLayouts`).
   */
  async mergeShards(config: GPTConfig, parts: FileSet[], extraState: Record<string, JsonValue> = {}, layouts: CheckpointLayouts = modelLayouts(config)): Promise<FileSet> {
    const loaded = [];
    for (const files of parts) loaded.push(await this.load(files));
    const first = loaded[0];
    if (!first) throw new Error('no shard checkpoints to merge');
    const steps = new Set(loaded.map((c) => c.step));
    if (steps.size !== 1) throw new Error(`shard checkpoints of different steps: ${[...steps].join(', ')}`);
    const withLayout = loaded.map((c) => ({ c, layout: layouts.shard(shardOfCheckpoint(c.state, config.nLayer)) }));
    const model = mergeShardTensors(config, withLayout.map(({ c, layout }) => ({ layout, tensors: c.model })), layouts.full);
    const expAvg = mergeShardTensors(config, withLayout.map(({ c, layout }) => ({ layout, tensors: c.optimizer.expAvg })), layouts.full);
    const expAvgSq = mergeShardTensors(config, withLayout.map(({ c, layout }) => ({ layout, tensors: c.optimizer.expAvgSq })), layouts.full);
    const optimizerSteps = new Set(loaded.map((c) => c.optimizer.step));
    if (optimizerSteps.size !== 1) throw new Error(`shards disagree on AdamW's step: ${[...optimizerSteps].join(', ')}`);
    const { shard: _shard, ...state } = first.state;
    return this.#save(first.step, { model, optimizer: { step: first.optimizer.step, expAvg, expAvgSq }, state: { ...state, ...extraState } });
  }

  /** The shard checkpoint `shard` needs, cut from a canonical checkpoint (of the whole model unless `layouts` says otherwise). */
  async reshard(config: GPTConfig, canonical: LoadedCheckpoint, shard: ShardSpec, layouts: CheckpointLayouts = modelLayouts(config)): Promise<FileSet> {
    const layout = layouts.shard(shard);
    const { shard: _old, ...state } = canonical.state;
    return this.#save(canonical.step, {
      model: shardTensors(canonical.model, layout),
      optimizer: { step: canonical.optimizer.step, expAvg: shardTensors(canonical.optimizer.expAvg, layout), expAvgSq: shardTensors(canonical.optimizer.expAvgSq, layout) },
      state: { ...state, shard: { ...shard } },
    });
  }

  async #save(step: number, contents: { model: TensorMap; optimizer: { step: number; expAvg: TensorMap; expAvgSq: TensorMap }; state: Record<string, JsonValue> }): Promise<FileSet> {
    return this.#withScratch(async (dir) => {
      const saved = await saveCheckpoint(dir, step, contents);
      const bytes: Record<string, Uint8Array> = {};
      for (const name of [...Object.keys(saved.manifest.files), MANIFEST_FILE]) bytes[name] = await readFile(join(saved.dir, name));
      const out: FileSet = {};
      for (const [name, b] of Object.entries(bytes)) out[name] = await this.#artifacts.put(b);
      return out;
    });
  }

  async #withScratch<T>(fn: (dir: string) => Promise<T>): Promise<T> {
    await mkdir(this.#scratch, { recursive: true });
    const dir = await mkdtemp(join(this.#scratch, 'ckpt-'));
    try {
      return await fn(dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
}
