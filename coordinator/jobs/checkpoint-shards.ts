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
 * (for GPT-2-small at most wte, 154 MB), never a checkpoint. Checkpoints under INLINE_BYTES run the same code on
 * the calling thread: milliseconds of work, less than starting a worker. `load` reads a whole checkpoint into
 * memory, for small ones and tests; `hfModelFile` hands the registry a merged model.safetensors as a file.
 */
import { mkdir, mkdtemp, open, readFile, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { loadCheckpoint, MANIFEST_FILE, MODEL_FILE, type JsonValue, type LoadedCheckpoint } from '../../model/checkpoint.ts';
import { createHash } from 'node:crypto';
import { writeCheckpointFiles, type WrittenFile } from '../../model/checkpoint-files.ts';
import { mergeCheckpointFiles, reshardCheckpointFiles } from '../../model/checkpoint-merge.ts';
import { modelLayouts, type CheckpointLayouts } from '../../model/checkpoint-reshard.ts';
import { ModelError } from '../../model/errors.ts';
import { paramLayout, type GPTConfig } from '../../model/params.ts';
import { studentFromTeacher } from '../../model/student-init.ts';
import { hfConfig, importHf } from '../../model/hf-format.ts';
import { safetensorsLayout } from '../../model/safetensors.ts';
import type { Tokenizer } from '../../model/tokenizer.ts';
import { loraLayouts, loraSpec, type LoraSpec } from '../../model/lora.ts';
import type { ShardSpec } from '../../model/shard-layout.ts';
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { CoordinatorError } from '../errors.ts';
import type { VersionFile } from '../registry/registry.ts';

/** What the sharder needs of an artifact store (coordinator/store/artifact-store.ts). */
export interface CheckpointStore {
  pathOf(digest: string): string;
  has(digest: string): boolean;
  scratchDir(): Promise<string>;
  commitFile(path: string, sha256: string): Promise<void>;
  /** Re-hashes a stored file, streamed; throws when it is corrupt. */
  verify(digest: string): Promise<number>;
  sizeOf(digest: string): number | undefined;
}

/**
 * Checkpoints up to this many bytes in all are merged or cut on the event loop itself (the same streamed code, a few
 * milliseconds of work): starting a worker thread costs more than the work, and a small job would run ahead of it.
 */
export const INLINE_BYTES = 16 << 20;

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

/** A registered version's file: where it is and the sha256 the registry recorded. */
export interface RecordedFile {
  path: string;
  sha256: string;
  bytes: number;
}

/** What checkpoint-worker.ts is asked to do, with every input as a file path. */
export type CheckpointTask =
  | { type: 'merge'; kind: CheckpointKind; parts: Array<Record<string, string>>; extraState: Record<string, JsonValue>; outDirs: [string] }
  | { type: 'reshard'; kind: CheckpointKind; canonical: Record<string, string>; shards: ShardSpec[]; outDirs: string[] }
  | { type: 'init'; version: Record<string, RecordedFile>; student?: GPTConfig; state: Record<string, JsonValue>; outDirs: [string] };

const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$/;

export class CheckpointSharder {
  readonly #artifacts: CheckpointStore;
  readonly #scratch: string | undefined;

  /** `scratchDir`: where `load` lays out a checkpoint's folder (links to the store's files); default: the store's. */
  constructor(artifacts: CheckpointStore, scratchDir?: string) {
    this.#artifacts = artifacts;
    this.#scratch = scratchDir;
  }

  /** Verifies a checkpoint in the artifact store and reads it whole into memory (for small checkpoints and tests). */
  async load(files: FileSet): Promise<LoadedCheckpoint> {
    const paths = this.#pathsOf(files);
    if (this.#scratch) await mkdir(this.#scratch, { recursive: true });
    const dir = this.#scratch ? await mkdtemp(join(this.#scratch, 'ckpt-')) : await this.#artifacts.scratchDir();
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
    const [merged] = await this.#run(this.#bytesOf(parts), 1, (outDirs) => ({ type: 'merge', kind, parts: parts.map((p) => this.#pathsOf(p)), extraState, outDirs: outDirs as [string] }));
    return merged!;
  }

  /** The shard checkpoint each of `shards` needs, cut from a canonical checkpoint; returns their files in order. */
  async reshard(kind: CheckpointKind, canonical: FileSet, shards: ShardSpec[]): Promise<FileSet[]> {
    return this.#run(this.#bytesOf([canonical]), shards.length, (outDirs) => ({ type: 'reshard', kind, canonical: this.#pathsOf(canonical), shards, outDirs }));
  }

  /**
   * The canonical checkpoint's model.safetensors as a stored file (verified, streamed) when it is byte for byte the
   * file model/hf-format.ts exportHf writes for `config` — GPT-2 names and shapes in F32, {"format": "pt"} and
   * nothing else, which every whole-model checkpoint merged here is — else undefined. Registering a trained model
   * then copies that file rather than loading the checkpoint and encoding the weights again.
   */
  async hfModelFile(config: GPTConfig, files: FileSet): Promise<{ path: string; sha256: string } | undefined> {
    const digest = files[MODEL_FILE];
    if (!digest || !this.#artifacts.has(digest)) return undefined;
    const path = this.#artifacts.pathOf(digest);
    const expected = safetensorsLayout(paramLayout(config).specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape }] as const), { format: 'pt' });
    const fh = await open(path, 'r');
    try {
      const { size } = await fh.stat();
      if (size !== expected.totalBytes) return undefined;
      const head = Buffer.alloc(expected.header.length);
      const { bytesRead } = await fh.read(head, 0, head.length, 0);
      if (bytesRead !== head.length || !head.equals(expected.header)) return undefined;
    } finally {
      await fh.close();
    }
    await this.#artifacts.verify(digest);
    return { path, sha256: digest };
  }

  /**
   * The step-0 canonical checkpoint of a job that starts from a registered version: its weights (checked against
   * the registry's sha256), or with `student` the layers distillation takes from that teacher (studentFromTeacher),
   * and zero AdamW moments.
   */
  async initFromVersion(version: Record<string, RecordedFile>, student: GPTConfig | undefined, state: Record<string, JsonValue>): Promise<FileSet> {
    const bytes = Object.values(version).reduce((n, f) => n + f.bytes, 0);
    const [out] = await this.#run(bytes, 1, (outDirs) => ({ type: 'init', version, ...(student ? { student } : {}), state, outDirs: outDirs as [string] }));
    return out!;
  }

  /** The bytes of the stored files of `sets`. */
  #bytesOf(sets: FileSet[]): number {
    return sets.flatMap((set) => Object.values(set)).reduce((n, digest) => n + (this.#artifacts.sizeOf(digest) ?? Infinity), 0);
  }

  /** Runs a task reading `inputBytes` (in checkpoint-worker.ts unless that is small) and moves what it wrote into the store. */
  async #run(inputBytes: number, outputs: number, task: (outDirs: string[]) => CheckpointTask): Promise<FileSet[]> {
    const scratch = await this.#artifacts.scratchDir();
    try {
      const outDirs = Array.from({ length: outputs }, (_, i) => join(scratch, String(i)));
      for (const d of outDirs) await mkdir(d);
      const t = task(outDirs);
      const written = inputBytes <= INLINE_BYTES ? await runCheckpointTask(t) : await inWorker(t);
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

/** What checkpoint-worker.ts does with a task; small tasks run it on the calling thread. */
export async function runCheckpointTask(task: CheckpointTask): Promise<Array<Record<string, WrittenFile>>> {
  if (task.type === 'init') return [await writeInitCheckpoint(task)];
  const layouts = layoutsOf(task.kind);
  return task.type === 'merge'
    ? [await mergeCheckpointFiles(task.kind.config.nLayer, layouts, task.parts, task.extraState, task.outDirs[0])]
    : reshardCheckpointFiles(layouts, task.canonical, task.shards, task.outDirs);
}

/** The 'init' task: a version's files, checked and parsed, written as a step-0 checkpoint tensor by tensor. */
async function writeInitCheckpoint(task: Extract<CheckpointTask, { type: 'init' }>): Promise<Record<string, WrittenFile>> {
  const files: Record<string, Uint8Array | undefined> = {};
  for (const [file, { path, sha256 }] of Object.entries(task.version)) {
    const bytes = await readFile(path);
    const actual = createHash('sha256').update(bytes).digest('hex');
    if (actual !== sha256) throw new CoordinatorError('CRD_ERR_STORAGE', `${path} changed since it was registered (sha256 ${actual}, expected ${sha256})`);
    files[file] = bytes;
  }
  const loaded = importHf(files);
  for (const file of Object.keys(files)) files[file] = undefined; // the weights live on in loaded.params
  const config = task.student ?? loaded.config;
  const layout = paramLayout(config);
  const flat = task.student ? studentFromTeacher(loaded.config, loaded.params, task.student) : loaded.params;
  const bySpec = new Map(layout.specs.map((s) => [s.name, s]));
  return writeCheckpointFiles(task.outDirs[0], {
    step: 0,
    weights: layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape }] as const),
    moments: layout.specs.map((s) => s.name),
    optimizerStep: 0,
    state: task.state,
    async tensor(group, name) {
      const s = bySpec.get(name)!;
      return group === 'model' ? flat.subarray(s.offset, s.offset + s.size) : new Float32Array(s.size);
    },
  });
}

/** config.json and tokenizer.json as exportHf writes them, beside a model.safetensors that is a file on disk. */
export function hfFilesAround(config: GPTConfig, tokenizer: Tokenizer, model: { path: string; sha256: string }): Record<string, VersionFile> {
  if (tokenizer.vocabSize > config.vocabSize) throw new ModelError('MDL_ERR_MODEL_FILES', `tokenizer has ${tokenizer.vocabSize} ids, the model only ${config.vocabSize}`);
  const json = (v: unknown) => Buffer.from(JSON.stringify(v, null, 2));
  return { 'config.json': json(hfConfig(config, tokenizer)), 'model.safetensors': model, 'tokenizer.json': json(tokenizer.toJSON()) };
}

function inWorker(task: CheckpointTask): Promise<Array<Record<string, WrittenFile>>> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('../../common/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./checkpoint-worker.ts', import.meta.url).href, ...task },
    });
    let settled = false;
    worker.on('message', (m: { type: 'done'; files: Array<Record<string, WrittenFile>> } | { type: 'error'; message: string; code?: string }) => {
      settled = true;
      if (m.type === 'done') resolve(m.files);
      else reject(ModelError.isCode(m.code) ? new ModelError(m.code, m.message) : new Error(m.message));
    });
    worker.once('error', (err) => !settled && ((settled = true), reject(err)));
    worker.once('exit', (code) => !settled && reject(new Error(`the checkpoint worker exited with ${code} before answering`)));
  });
}
