/**
 * Checkpoints too large to hold in memory, read and written one tensor at a time, in model/checkpoint.ts's format
 * byte for byte. A GPT-2-small checkpoint (weights + AdamW moments) is ~1.5 GB: the coordinator merges shard
 * checkpoints into it and cuts it into other layouts' shards (model/checkpoint-merge.ts) while holding one tensor,
 * not the model.
 *
 * Reading (`openCheckpointFiles`): the files are given by name → path (a checkpoint folder's, or the artifact store's
 * content-addressed files). Opening verifies everything `loadCheckpoint` does — manifest.json, each listed file's
 * size and sha256 (hashed in 4 MiB reads), the safetensors headers, state.json and the consistency of the parts,
 * with the same MDL_ERR_CHECKPOINT_CORRUPT messages — but reads no tensor. `read` then fetches one tensor's bytes
 * by its header offsets. The bytes are read again after they were hashed: a file changed in between would go
 * unnoticed, which is why the inputs are immutable content-addressed files or a folder only this process writes.
 *
 * Writing (`writeCheckpointFiles`): the headers are laid out from the tensors' kinds first (safetensorsLayout), then
 * each tensor is asked for as the writer reaches it, written and hashed on the way; manifest.json comes last.
 *
 * A DiLoCo job's checkpoints (training.diloco, model/diloco.ts) hold one more, optional file: outer.safetensors, the
 * outer optimizer's momentum `outer_momentum.<name>` per trained weight ({"format": "meshtrain-diloco"}). It is a file
 * of its own rather than more tensors in optimizer.safetensors so that every reader of the three required files —
 * loadCheckpoint, the registry, a user's PyTorch — reads such a checkpoint unchanged; a checkpoint without it (plain
 * data parallelism, or older) opens with no outer momentum, which a DiLoCo resume takes as zero.
 */
import { createHash } from 'node:crypto';
import { open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ModelError } from './errors.ts';
import {
  checkCheckpointContents, manifestBytes, momentNames, openListed, optimizerMetadata, parseManifest, readManifestText,
  CHECKPOINT_FORMAT, CHECKPOINT_VERSION, MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE,
  type CheckpointManifest, type CheckpointState, type JsonValue, type ManifestEntry,
} from './checkpoint.ts';
import { emptyTensor, parseSafetensorsHeader, safetensorsHeaderLength, safetensorsLayout, type Tensor, type TensorInfo, type TensorKind } from './safetensors.ts';

/** Bytes per read and per hash update: large enough to be fast, small enough to interleave with other work. */
export const IO_CHUNK_BYTES = 4 << 20;

/** A checkpoint's files: name → path. */
export type CheckpointPaths = Readonly<Record<string, string>>;

/** Which tensors of a checkpoint: the weights, or one of AdamW's moments (keyed by the weight's name). */
export type TensorGroup = 'model' | 'expAvg' | 'expAvgSq';
/** What can be read: those, and DiLoCo's outer momentum when the checkpoint has it. */
export type ReadGroup = TensorGroup | 'outerMomentum';

/** DiLoCo's outer momentum: the optional fourth file of a checkpoint (see the file comment). */
export const OUTER_FILE = 'outer.safetensors';
const OUTER_PREFIX = 'outer_momentum.';
const OUTER_FORMAT = 'meshtrain-diloco';

/** A verified checkpoint whose tensors are still on disk. */
export interface CheckpointFiles {
  readonly step: number;
  readonly manifest: CheckpointManifest;
  readonly state: CheckpointState;
  readonly modelMetadata: Record<string, string>;
  readonly optimizerStep: number;
  /** Each group's tensors by weight name, as the headers describe them (outerMomentum: empty without outer.safetensors). */
  readonly tensors: Readonly<Record<ReadGroup, ReadonlyMap<string, TensorInfo>>>;
  /** One tensor, read into memory of its own. */
  read(group: ReadGroup, name: string): Promise<Tensor>;
  /** Bytes [fromByte, fromByte + into.byteLength) of one tensor's data, read straight into `into`. */
  readInto(group: ReadGroup, name: string, into: Uint8Array, fromByte?: number): Promise<void>;
  close(): Promise<void>;
}

/** Verifies the checkpoint given by `paths` (see the file comment); `label` names it in errors. */
export async function openCheckpointFiles(paths: CheckpointPaths, label: string): Promise<CheckpointFiles> {
  const corrupt = (message: string, cause?: unknown) => new ModelError('MDL_ERR_CHECKPOINT_CORRUPT', `checkpoint ${label}: ${message}`, { cause });
  const pathOf = (file: string) => (Object.hasOwn(paths, file) ? paths[file] : undefined);
  const manifestPath = pathOf(MANIFEST_FILE);
  if (manifestPath === undefined) throw corrupt(`${MANIFEST_FILE} is missing: the checkpoint is incomplete`);
  const manifest = parseManifest(await readManifestText(manifestPath, corrupt), corrupt);
  for (const [file, expected] of Object.entries(manifest.files)) {
    const path = pathOf(file);
    if (path === undefined) throw corrupt(`${file} is listed in manifest.json but not among the checkpoint's files`);
    const sha256 = await hashFile(path, expected.bytes, file, corrupt);
    if (sha256 !== expected.sha256) throw corrupt(`${file}: sha256 is ${sha256} but manifest.json says ${expected.sha256}`);
  }
  let state: unknown;
  try {
    state = JSON.parse(await readFile(pathOf(STATE_FILE)!, 'utf8'));
  } catch (err) {
    throw corrupt(`${STATE_FILE}: ${(err as Error).message}`, err);
  }
  const handles: FileHandle[] = [];
  try {
    const model = await openSafetensors(pathOf(MODEL_FILE)!, MODEL_FILE, corrupt, handles);
    const opt = await openSafetensors(pathOf(OPTIMIZER_FILE)!, OPTIMIZER_FILE, corrupt, handles);
    const infos = (h: { header: { tensors: Map<string, TensorInfo> } }) => Object.fromEntries(h.header.tensors);
    const checked = checkCheckpointContents(manifest.step, state, infos(model), { tensors: infos(opt), metadata: opt.header.metadata }, corrupt);
    const outer = pathOf(OUTER_FILE) !== undefined && Object.hasOwn(manifest.files, OUTER_FILE) ? await openSafetensors(pathOf(OUTER_FILE)!, OUTER_FILE, corrupt, handles) : undefined;
    const tensors = {
      model: model.header.tensors, expAvg: new Map(Object.entries(checked.expAvg)), expAvgSq: new Map(Object.entries(checked.expAvgSq)),
      outerMomentum: outer ? outerMomentumOf(outer.header, model.header.tensors, corrupt) : new Map<string, TensorInfo>(),
    };
    const where = { model, expAvg: opt, expAvgSq: opt, outerMomentum: outer ?? opt };
    const fileOf = (group: ReadGroup) => (group === 'model' ? MODEL_FILE : group === 'outerMomentum' ? OUTER_FILE : OPTIMIZER_FILE);
    const infoOf = (group: ReadGroup, name: string): TensorInfo => {
      const info = tensors[group].get(name);
      if (!info) throw new ModelError('MDL_ERR_CHECKPOINT_CORRUPT', `checkpoint ${label}: it has no ${group === 'model' ? '' : `${group} of `}${name}`);
      return info;
    };
    const readInto = async (group: ReadGroup, name: string, into: Uint8Array, fromByte = 0): Promise<void> => {
      const [begin, end] = infoOf(group, name).dataOffsets;
      if (fromByte < 0 || begin + fromByte + into.byteLength > end) throw new RangeError(`bytes [${fromByte}, ${fromByte + into.byteLength}) are outside ${name} (${end - begin} bytes)`);
      const { fh, header } = where[group];
      await readFully(fh, into, header.dataStart + begin + fromByte, () => corrupt(`${fileOf(group)} ended while ${name} was read`));
    };
    return {
      step: manifest.step,
      manifest,
      state: checked.state,
      modelMetadata: model.header.metadata,
      optimizerStep: checked.optimizerStep,
      tensors,
      async read(group, name) {
        const info = infoOf(group, name);
        const t = emptyTensor(info.dtype, info.shape);
        await readInto(group, name, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
        return t;
      },
      readInto,
      async close() {
        await Promise.all(handles.map((h) => h.close().catch(() => {})));
      },
    };
  } catch (err) {
    await Promise.all(handles.map((h) => h.close().catch(() => {})));
    throw err;
  }
}

/** outer.safetensors's tensors by weight name: DiLoCo's format, `outer_momentum.<weight>` each of its weight's kind. */
function outerMomentumOf(
  header: { tensors: Map<string, TensorInfo>; metadata: Record<string, string> }, weights: ReadonlyMap<string, TensorInfo>, corrupt: (m: string) => ModelError,
): Map<string, TensorInfo> {
  if (header.metadata.format !== OUTER_FORMAT) throw corrupt(`${OUTER_FILE}: __metadata__.format is ${JSON.stringify(header.metadata.format)}, not "${OUTER_FORMAT}"`);
  const out = new Map<string, TensorInfo>();
  for (const [key, t] of header.tensors) {
    const name = key.startsWith(OUTER_PREFIX) ? key.slice(OUTER_PREFIX.length) : undefined;
    const w = name === undefined ? undefined : weights.get(name);
    if (!w) throw corrupt(`${OUTER_FILE}: tensor "${key}" is not ${OUTER_PREFIX}<a weight of the model>`);
    if (t.dtype !== w.dtype || t.shape.join() !== w.shape.join()) throw corrupt(`${OUTER_FILE}: ${key} is ${t.dtype} [${t.shape.join(', ')}] but the weight is ${w.dtype} [${w.shape.join(', ')}]`);
    out.set(name!, t);
  }
  return out;
}

async function openSafetensors(path: string, file: string, corrupt: (m: string, cause?: unknown) => ModelError, handles: FileHandle[]) {
  const fh = await open(path, 'r');
  handles.push(fh);
  const { size } = await fh.stat();
  try {
    const first8 = new Uint8Array(Math.min(8, size));
    await readFully(fh, first8, 0, () => corrupt(`${file} ended while its header was read`));
    const n = safetensorsHeaderLength(first8, size);
    const head = new Uint8Array(8 + n);
    await readFully(fh, head, 0, () => corrupt(`${file} ended while its header was read`));
    return { fh, header: parseSafetensorsHeader(head, size) };
  } catch (err) {
    if (err instanceof ModelError && err.code === 'MDL_ERR_CHECKPOINT_CORRUPT') throw err;
    throw corrupt(`${file}: ${(err as Error).message}`, err);
  }
}

async function readFully(fh: FileHandle, into: Uint8Array, position: number, ended: () => Error): Promise<void> {
  for (let at = 0; at < into.byteLength; ) {
    const { bytesRead } = await fh.read(into, at, Math.min(into.byteLength - at, 1 << 30), position + at);
    if (bytesRead === 0) throw ended();
    at += bytesRead;
  }
}

/** The sha256 of a file read in IO_CHUNK_BYTES pieces, refusing one whose size is not `expectedBytes`. */
export async function hashFile(path: string, expectedBytes: number, file: string, corrupt: (m: string, cause?: unknown) => ModelError): Promise<string> {
  const { fh, size } = await openListed(path, expectedBytes, file, corrupt);
  try {
    const hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(Math.min(IO_CHUNK_BYTES, Math.max(1, size)));
    for (let at = 0; at < size; ) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - at), at);
      if (bytesRead === 0) throw corrupt(`${file} ended after ${at} of ${size} bytes while being read`);
      hash.update(buf.subarray(0, bytesRead));
      at += bytesRead;
    }
    return hash.digest('hex');
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------------- writing

/** Writes a new file chunk by chunk, hashing as it goes. */
export class HashingFileWriter {
  readonly path: string;
  readonly #fh: FileHandle;
  readonly #hash = createHash('sha256');
  #bytes = 0;

  private constructor(path: string, fh: FileHandle) {
    this.path = path;
    this.#fh = fh;
  }

  static async create(path: string): Promise<HashingFileWriter> {
    return new HashingFileWriter(path, await open(path, 'wx'));
  }

  async write(chunk: Uint8Array): Promise<void> {
    for (let at = 0; at < chunk.byteLength; at += IO_CHUNK_BYTES) this.#hash.update(chunk.subarray(at, at + IO_CHUNK_BYTES));
    // One write() may write less than asked (Linux caps a call near 2 GiB), so loop.
    for (let at = 0; at < chunk.byteLength; ) {
      const { bytesWritten } = await this.#fh.write(chunk, at, Math.min(chunk.byteLength - at, 1 << 30));
      at += bytesWritten;
    }
    this.#bytes += chunk.byteLength;
  }

  /** Closes the file (fsynced first with `sync`) and returns its size and sha256. */
  async finish(sync = false): Promise<ManifestEntry> {
    try {
      if (sync) await this.#fh.sync();
    } finally {
      await this.#fh.close();
    }
    return { bytes: this.#bytes, sha256: this.#hash.digest('hex') };
  }

  async abort(): Promise<void> {
    await this.#fh.close().catch(() => {});
    await rm(this.path, { force: true });
  }
}

/**
 * Writes a safetensors file of tensors of these kinds, asking `bytesOf` for each one's bytes in data order (so it
 * holds one at a time), and returns its size and sha256.
 */
export async function writeSafetensorsFile(
  path: string,
  kinds: ReadonlyArray<readonly [string, TensorKind]>,
  metadata: Record<string, string> | undefined,
  bytesOf: (name: string) => Promise<ArrayBufferView>,
): Promise<ManifestEntry> {
  const layout = safetensorsLayout(kinds, metadata);
  const w = await HashingFileWriter.create(path);
  try {
    await w.write(layout.header);
    for (const { name, dataOffsets: [begin, end] } of layout.order) {
      const v = await bytesOf(name);
      if (v.byteLength !== end - begin) throw new ModelError('MDL_ERR_CHECKPOINT_WRITE', `${name}: got ${v.byteLength} bytes for a tensor of ${end - begin}`);
      await w.write(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    }
    return await w.finish();
  } catch (err) {
    await w.abort();
    throw err;
  }
}

/** A checkpoint to write tensor by tensor. */
export interface StreamedCheckpoint {
  step: number;
  /** The weights' dtypes and shapes by name. */
  weights: ReadonlyArray<readonly [string, TensorKind]>;
  /** The names of the weights that have AdamW moments (of the same kind as the weight). */
  moments: readonly string[];
  optimizerStep: number;
  state: Record<string, JsonValue>;
  /** Extra `__metadata__` of model.safetensors; {"format": "pt"} is always added. */
  modelMetadata?: Record<string, string>;
  /** DiLoCo: the weights whose outer momentum goes into outer.safetensors, and each one's bytes; absent: no such file. */
  outerMomentum?: { names: readonly string[]; tensor(name: string): Promise<ArrayBufferView> };
  /** One tensor's bytes, asked for when the writer reaches it. */
  tensor(group: TensorGroup, name: string): Promise<ArrayBufferView>;
}

/** A written file: where it is, its size and sha256. */
export interface WrittenFile extends ManifestEntry {
  path: string;
}

/**
 * Writes the checkpoint's four files into the existing folder `dir` (not atomically, and not fsynced: the caller
 * moves them somewhere durable, e.g. the artifact store's commit) and returns each one by name.
 */
export async function writeCheckpointFiles(dir: string, c: StreamedCheckpoint): Promise<Record<string, WrittenFile>> {
  const kindOf = new Map(c.weights);
  const optimizerKinds: Array<[string, TensorKind]> = [];
  const momentOf = new Map<string, [TensorGroup, string]>();
  for (const name of c.moments) {
    const kind = kindOf.get(name);
    if (!kind) throw new ModelError('MDL_ERR_CHECKPOINT_WRITE', `checkpoint step ${c.step}: moments of "${name}", which is not a weight`);
    const { expAvg, expAvgSq } = momentNames(name);
    optimizerKinds.push([expAvg, kind], [expAvgSq, kind]);
    momentOf.set(expAvg, ['expAvg', name]).set(expAvgSq, ['expAvgSq', name]);
  }
  const files: Record<string, WrittenFile> = {};
  const put = (name: string, entry: ManifestEntry) => (files[name] = { ...entry, path: join(dir, name) });
  put(MODEL_FILE, await writeSafetensorsFile(join(dir, MODEL_FILE), c.weights, { ...c.modelMetadata, format: 'pt' }, (name) => c.tensor('model', name)));
  put(OPTIMIZER_FILE, await writeSafetensorsFile(join(dir, OPTIMIZER_FILE), optimizerKinds, optimizerMetadata(c.optimizerStep), (name) => {
    const [group, weight] = momentOf.get(name)!;
    return c.tensor(group, weight);
  }));
  if (c.outerMomentum) {
    const outer = c.outerMomentum;
    const kinds = outer.names.map((name) => {
      const kind = kindOf.get(name);
      if (!kind) throw new ModelError('MDL_ERR_CHECKPOINT_WRITE', `checkpoint step ${c.step}: outer momentum of "${name}", which is not a weight`);
      return [OUTER_PREFIX + name, kind] as const;
    });
    put(OUTER_FILE, await writeSafetensorsFile(join(dir, OUTER_FILE), kinds, { format: OUTER_FORMAT }, (key) => outer.tensor(key.slice(OUTER_PREFIX.length))));
  }
  put(STATE_FILE, await writeBytes(join(dir, STATE_FILE), Buffer.from(`${JSON.stringify({ ...c.state, step: c.step }, null, 2)}\n`)));
  const manifest: CheckpointManifest = {
    format: CHECKPOINT_FORMAT, version: CHECKPOINT_VERSION, step: c.step, createdMs: Date.now(),
    files: Object.fromEntries(Object.entries(files).map(([name, { bytes, sha256 }]) => [name, { bytes, sha256 }])),
  };
  put(MANIFEST_FILE, await writeBytes(join(dir, MANIFEST_FILE), manifestBytes(manifest)));
  return files;
}

async function writeBytes(path: string, bytes: Uint8Array): Promise<ManifestEntry> {
  const w = await HashingFileWriter.create(path);
  await w.write(bytes);
  return w.finish();
}
