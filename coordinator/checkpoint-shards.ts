/**
 * Layout-free checkpoints. Agents save what they hold: data-parallel rank 0 of every (stage, tensor shard) uploads
 * a shard checkpoint (model/checkpoint.ts's folder format with local tensor shapes and `shard` in state.json).
 * When every shard of a step is in, `mergeShards` writes ONE canonical checkpoint of the whole model (GPT-2 names
 * and shapes, AdamW moments likewise) into the artifact store: that is what the job records, what the registry is
 * fed from at the end, and what a user can load. `reshard` turns a canonical checkpoint into the shard checkpoints
 * the ranks of any other layout need (a 2×2×1 run resumed at 1×1×1 or 1×2×2 …). A canonical checkpoint is itself
 * the shard checkpoint of the trivial shard (one stage, one tensor shard), so pure data parallelism sends it as is.
 *
 * Both run in a worker thread (checkpoint-worker.ts) and stream tensor by tensor from the store's files into a
 * scratch folder of the store (model/checkpoint-merge.ts), each output file hashed as it is written and then
 * renamed into the store: the coordinator's event loop does no hashing or copying, and memory holds one tensor
 * (for GPT-2-small at most wte, 154 MB), never a checkpoint. `load` reads a whole checkpoint into memory, for
 * small ones and tests.
 */
import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { loadCheckpoint, MANIFEST_FILE, type JsonValue, type LoadedCheckpoint } from '../model/checkpoint.ts';
import type { WrittenFile } from '../model/checkpoint-files.ts';
import { modelLayouts, type CheckpointLayouts } from '../model/checkpoint-reshard.ts';
import { ModelError, type ModelErrorCode } from '../model/errors.ts';
import type { GPTConfig } from '../model/gpt.ts';
import { loraLayouts, loraSpec, type LoraSpec } from '../model/lora.ts';
import type { ShardSpec } from '../model/shard-layout.ts';
import type { ResolvedJobSpec } from '../protocol/job-spec.ts';

/** What the sharder needs of an artifact store (coordinator/artifact-store.ts). */
export interface CheckpointStore {
  pathOf(digest: string): string;
  has(digest: string): boolean;
  scratchDir(): Promise<string>;
  commitFile(path: string, sha256: string): Promise<void>;
}

export type FileSet = Record<string, string>; // file name → sha256 in the artifact store

/** What a job's checkpoints hold: the whole model, or with `lora` only its adapter's factors. Plain data (it crosses into the worker). */
export interface CheckpointKind {
  config: GPTConfig;
  lora?: LoraSpec;
}

/** The checkpoint kind of a job. */
export function checkpointKind(spec: ResolvedJobSpec): CheckpointKind {
  return { config: spec.model, ...(spec.lora ? { lora: loraSpec(spec.lora, spec.model) } : {}) };
}

/** How a kind's checkpoints are laid out and cut. */
export function layoutsOf(kind: CheckpointKind): CheckpointLayouts {
  return kind.lora ? loraLayouts(kind.config, kind.lora) : modelLayouts(kind.config);
}

/** What checkpoint-worker.ts is asked to do, with every input as a file path. */
export type CheckpointTask =
  | { type: 'merge'; kind: CheckpointKind; parts: Array<Record<string, string>>; extraState: Record<string, JsonValue>; outDirs: [string] }
  | { type: 'reshard'; kind: CheckpointKind; canonical: Record<string, string>; shards: ShardSpec[]; outDirs: string[] };

const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$/;

export class CheckpointSharder {
  readonly #artifacts: CheckpointStore;
  readonly #scratch: string;

  /** `scratchDir`: where `load` lays out a checkpoint's folder (links to the store's files). */
  constructor(artifacts: CheckpointStore, scratchDir: string) {
    this.#artifacts = artifacts;
    this.#scratch = scratchDir;
  }

  /** Verifies a checkpoint in the artifact store and reads it whole into memory (for small checkpoints and tests). */
  async load(files: FileSet): Promise<LoadedCheckpoint> {
    const paths = this.#pathsOf(files);
    await mkdir(this.#scratch, { recursive: true });
    const dir = await mkdtemp(join(this.#scratch, 'ckpt-'));
    try {
      const folder = join(dir, 'in');
      await mkdir(folder);
      for (const [name, path] of Object.entries(paths)) await symlink(path, join(folder, name));
      return await loadCheckpoint(folder);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Merges every shard checkpoint of one step into the canonical one; returns its files. */
  async mergeShards(kind: CheckpointKind, parts: FileSet[], extraState: Record<string, JsonValue> = {}): Promise<FileSet> {
    const [merged] = await this.#run(1, (outDirs) => ({ type: 'merge', kind, parts: parts.map((p) => this.#pathsOf(p)), extraState, outDirs: outDirs as [string] }));
    return merged!;
  }

  /** The shard checkpoint each of `shards` needs, cut from a canonical checkpoint; returns their files in order. */
  async reshard(kind: CheckpointKind, canonical: FileSet, shards: ShardSpec[]): Promise<FileSet[]> {
    return this.#run(shards.length, (outDirs) => ({ type: 'reshard', kind, canonical: this.#pathsOf(canonical), shards, outDirs }));
  }

  /** Runs a task in checkpoint-worker.ts and moves what it wrote into the store. */
  async #run(outputs: number, task: (outDirs: string[]) => CheckpointTask): Promise<FileSet[]> {
    const scratch = await this.#artifacts.scratchDir();
    try {
      const outDirs = Array.from({ length: outputs }, (_, i) => join(scratch, String(i)));
      for (const d of outDirs) await mkdir(d);
      const written = await inWorker(task(outDirs));
      const out: FileSet[] = [];
      for (const files of written) {
        const set: FileSet = {};
        for (const [name, f] of Object.entries(files)) {
          await this.#artifacts.commitFile(f.path, f.sha256);
          set[name] = f.sha256;
        }
        out.push(set);
      }
      return out;
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }

  /** The store's path of each file; names must be plain and every file stored. */
  #pathsOf(files: FileSet): Record<string, string> {
    if (!Object.hasOwn(files, MANIFEST_FILE)) throw new Error(`the checkpoint's files lack ${MANIFEST_FILE}`);
    const paths: Record<string, string> = {};
    for (const [name, digest] of Object.entries(files)) {
      if (!SAFE_NAME.test(name)) throw new Error(`checkpoint file name ${JSON.stringify(name)} is not a plain file name`);
      if (!this.#artifacts.has(digest)) throw new Error(`checkpoint file ${name}: no artifact ${digest} in the store`);
      paths[name] = this.#artifacts.pathOf(digest);
    }
    return paths;
  }
}

function inWorker(task: CheckpointTask): Promise<Array<Record<string, WrittenFile>>> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('../node-agent/compute/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./checkpoint-worker.ts', import.meta.url).href, ...task },
    });
    let settled = false;
    worker.on('message', (m: { type: 'done'; files: Array<Record<string, WrittenFile>> } | { type: 'error'; message: string; code?: string }) => {
      settled = true;
      if (m.type === 'done') resolve(m.files);
      else reject(m.code?.startsWith('MDL_ERR') ? new ModelError(m.code as ModelErrorCode, m.message) : new Error(m.message));
    });
    worker.once('error', (err) => !settled && ((settled = true), reject(err)));
    worker.once('exit', (code) => !settled && reject(new Error(`the checkpoint worker exited with ${code} before answering`)));
  });
}
