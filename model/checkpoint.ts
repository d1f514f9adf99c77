/**
 * Training checkpoints: what a resume needs, written so that a crash at any moment never leaves something that
 * looks complete, and checked on load so that a damaged one is refused instead of silently trained from.
 *
 * A checkpoint is a folder `<root>/step-000123/` (at least six digits) holding
 *
 *   model.safetensors      the weights by GPT-2 name (`__metadata__` {"format": "pt"}, as transformers expects)
 *   optimizer.safetensors  AdamW's moments `exp_avg.<name>` and `exp_avg_sq.<name>` for each trained weight;
 *                          `__metadata__` {"format": "meshtrain-adamw", "step": "<AdamW's step count>"}
 *   state.json             {"step": 123, …}: data cursor, RNG state, resolved job config, metrics, anything JSON
 *   outer.safetensors      only a DiLoCo job's: the outer momentum `outer_momentum.<name>` (model/checkpoint-files.ts
 *                          writes and reads it; every reader here ignores it)
 *   manifest.json          {"format": "meshtrain-checkpoint", "version": 1, "step": 123, "createdMs": …,
 *                           "files": {"model.safetensors": {"bytes": N, "sha256": "…"}, …}}, written last
 *
 * Saving writes everything into `<root>/.tmp-step-000123.<pid>.<random>/`, fsyncs each file and then the folder,
 * renames the folder to `step-000123` (atomic on one file system) and fsyncs the root. A crash before the rename
 * leaves only a `.tmp-*` folder, which listing ignores and the next save or prune deletes. Saving a step that
 * already exists (a resumed run redoing steps past a checkpoint it could not use) replaces it: the old folder is
 * first renamed aside to `.old-*`, so a crash in between leaves no half of either. Leftovers are deleted only when
 * the process that made them (the pid in the name) is gone or, for this process, when that save is no longer under
 * way; two processes saving the same step into one root at once is not supported.
 *
 * Loading reads each file listed in the manifest, checks its size and sha256 and parses it from the same bytes it
 * hashed, so what is returned is exactly what was verified. The manifest's sha256 values are also the keys of the
 * coordinator's content-addressed artifact store, so a checkpoint can be uploaded file by file under them.
 *
 * Writing in the background: `saveCheckpoint` is async and does its file I/O on libuv's thread pool; only the
 * sha256 (≈1–2 GB/s) runs on the calling thread. The tensors must not change until its promise settles: a trainer
 * that wants to go on stepping meanwhile passes `snapshotTensors(…)` copies (one memcpy of the model and moments).
 *
 * Everything here is plain typed arrays and shapes (model/safetensors.ts), independent of TensorFlow.js, so agents
 * and the coordinator can both use it. Checkpoints too large for memory are read and written tensor by tensor in
 * the same format by model/checkpoint-files.ts; `encodeCheckpointChunks` gives an agent the files as chunks to
 * stream, without joining them.
 *
 * Long: the folder format, its crash-safe commit (temp files, fsync, rename, leftovers of a crashed writer) and
 * its checked reader live together, so that every rule the reader enforces sits beside what the writer does.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as bufferConstants } from 'node:buffer';
import { mkdir, open, readdir, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ModelError } from './errors.ts';
import { prepareSafetensors, readSafetensors, safetensorsChunks, type PreparedSafetensors, type Tensor, type TensorMap } from './safetensors.ts';

export const CHECKPOINT_FORMAT = 'meshtrain-checkpoint';
export const CHECKPOINT_VERSION = 1;
export const MODEL_FILE = 'model.safetensors';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const STATE_FILE = 'state.json';
export const MANIFEST_FILE = 'manifest.json';
const REQUIRED_FILES = [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] as const;

const EXP_AVG = 'exp_avg.';
const EXP_AVG_SQ = 'exp_avg_sq.';
const OPTIMIZER_FORMAT = 'meshtrain-adamw';

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** state.json: `step` is the number of optimizer steps done; the rest is the trainer's (cursor, RNG, config, …). */
export interface CheckpointState {
  step: number;
  [key: string]: JsonValue;
}

/** AdamW's state: its step count (for bias correction) and first and second moments, keyed by weight name. */
export interface OptimizerState {
  step: number;
  expAvg: TensorMap;
  expAvgSq: TensorMap;
}

export interface CheckpointContents {
  model: TensorMap;
  optimizer: OptimizerState;
  /** Anything JSON: data cursor, RNG state, resolved job config, metrics snapshot. `step` is filled in. */
  state: Record<string, JsonValue>;
  /** Extra `__metadata__` for model.safetensors; {"format": "pt"} is always added. */
  modelMetadata?: Record<string, string>;
}

export interface ManifestEntry {
  bytes: number;
  sha256: string;
}

export interface CheckpointManifest {
  format: typeof CHECKPOINT_FORMAT;
  version: number;
  step: number;
  createdMs: number;
  files: Record<string, ManifestEntry>;
}

export interface CheckpointRef {
  step: number;
  dir: string;
}

export interface LoadedCheckpoint extends CheckpointRef {
  model: TensorMap;
  modelMetadata: Record<string, string>;
  optimizer: OptimizerState;
  state: CheckpointState;
  manifest: CheckpointManifest;
}

const STEP_DIR = /^step-(\d{6,})$/;
const LEFTOVER = /^\.(tmp|old|del)-.*\.(\d+)\.[0-9a-f]+$/;

/** The entries of `dir`, or none when it does not exist (no checkpoint has been written yet). */
async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** The folder name of a step: `step-000123`. */
export function checkpointDirName(step: number): string {
  if (!Number.isSafeInteger(step) || step < 0) throw new ModelError('MDL_ERR_CHECKPOINT_WRITE', `step must be a non-negative integer, got ${step}`);
  return `step-${String(step).padStart(6, '0')}`;
}

/** The checkpoints under `rootDir`, oldest first; [] when the folder does not exist. Leftovers are ignored. */
export async function listCheckpoints(rootDir: string): Promise<CheckpointRef[]> {
  const names = await readdirOrEmpty(rootDir);
  const refs: CheckpointRef[] = [];
  for (const name of names) {
    const m = STEP_DIR.exec(name);
    if (!m) continue;
    const step = Number(m[1]);
    if (!Number.isSafeInteger(step) || checkpointDirName(step) !== name) continue; // only canonical names
    const dir = join(rootDir, name);
    const isDir = await stat(dir).then((s) => s.isDirectory(), () => false); // gone meanwhile (pruned): skip
    if (isDir) refs.push({ step, dir });
  }
  return refs.sort((a, b) => a.step - b.step);
}

// ---------------------------------------------------------------------------------------------------- saving

/**
 * Writes a checkpoint of `step` into `rootDir` atomically (see the file comment) and returns its folder and
 * manifest. The tensors are read, not copied: do not change them until the promise settles.
 */
export async function saveCheckpoint(rootDir: string, step: number, contents: CheckpointContents): Promise<CheckpointRef & { manifest: CheckpointManifest }> {
  const name = checkpointDirName(step);
  const writeError = checkpointWriteError(step);
  const { model, optimizer, state } = prepareCheckpoint(step, contents);

  await mkdir(rootDir, { recursive: true });
  await cleanLeftovers(rootDir);
  const tmp = join(rootDir, `.tmp-${name}.${process.pid}.${randomBytes(4).toString('hex')}`);
  const final = join(rootDir, name);
  inFlight.add(tmp);
  try {
    await mkdir(tmp);
    const files: Record<string, ManifestEntry> = {};
    files[MODEL_FILE] = await writeDurably(join(tmp, MODEL_FILE), safetensorsChunks(model));
    files[OPTIMIZER_FILE] = await writeDurably(join(tmp, OPTIMIZER_FILE), safetensorsChunks(optimizer));
    files[STATE_FILE] = await writeDurably(join(tmp, STATE_FILE), [state]);
    const manifest: CheckpointManifest = { format: CHECKPOINT_FORMAT, version: CHECKPOINT_VERSION, step, createdMs: Date.now(), files };
    await writeDurably(join(tmp, MANIFEST_FILE), [manifestBytes(manifest)]);
    await syncDir(tmp);
    let old: string | undefined;
    try {
      await rename(tmp, final);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
      old = join(rootDir, `.old-${name}.${process.pid}.${randomBytes(4).toString('hex')}`);
      await rename(final, old);
      await rename(tmp, final);
    }
    await syncDir(rootDir);
    if (old) await rm(old, { recursive: true, force: true });
    return { step, dir: final, manifest };
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }).catch(() => {});
    throw err instanceof ModelError ? err : writeError(`could not write ${final}: ${(err as Error).message}`, err);
  } finally {
    inFlight.delete(tmp);
  }
}

/** Temporary folders of this process's saves still under way, which clean-up must not touch. */
const inFlight = new Set<string>();

/**
 * A checkpoint's files in memory, the manifest among them, each with its size and sha256: what an agent uploads
 * to the coordinator's content-addressed store without touching its own disk (the store writes durably, and the
 * coordinator records the checkpoint only once every file is in). The tensors are copied once, into the files;
 * for large checkpoints use `encodeCheckpointChunks`, which copies nothing.
 */
export function encodeCheckpoint(step: number, contents: CheckpointContents): { files: Record<string, Uint8Array>; manifest: CheckpointManifest } {
  const { files, manifest } = encodeCheckpointChunks(step, contents);
  return { files: Object.fromEntries(Object.entries(files).map(([name, chunks]) => [name, Buffer.concat(chunks)])), manifest };
}

/**
 * The same files as `encodeCheckpoint`, each as the list of its byte chunks in order (a header, then views of the
 * tensors' own memory: nothing is copied), hashed chunk by chunk. The tensors must not change while the chunks
 * are in use (an upload streams them). Hashing is ~1–2 GB/s of CPU: an agent runs this in a worker thread.
 */
export function encodeCheckpointChunks(step: number, contents: CheckpointContents): { files: Record<string, Uint8Array[]>; manifest: CheckpointManifest } {
  const { model, optimizer, state } = prepareCheckpoint(step, contents);
  const files: Record<string, Uint8Array[]> = { [MODEL_FILE]: safetensorsChunks(model), [OPTIMIZER_FILE]: safetensorsChunks(optimizer), [STATE_FILE]: [state] };
  const entries: Record<string, ManifestEntry> = {};
  for (const [name, chunks] of Object.entries(files)) {
    const hash = createHash('sha256');
    let bytes = 0;
    for (const c of chunks) {
      hash.update(c);
      bytes += c.byteLength;
    }
    entries[name] = { bytes, sha256: hash.digest('hex') };
  }
  const manifest: CheckpointManifest = { format: CHECKPOINT_FORMAT, version: CHECKPOINT_VERSION, step, createdMs: Date.now(), files: entries };
  files[MANIFEST_FILE] = [manifestBytes(manifest)];
  return { files, manifest };
}

/** manifest.json's bytes. */
export function manifestBytes(manifest: CheckpointManifest): Buffer {
  return Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`);
}

const checkpointWriteError = (step: number) => (message: string, cause?: unknown) =>
  new ModelError('MDL_ERR_CHECKPOINT_WRITE', `checkpoint step ${step}: ${message}`, { cause });

/** Validates a checkpoint's contents and lays out its three files; everything that can fail on bad input fails here. */
function prepareCheckpoint(step: number, contents: CheckpointContents): { model: PreparedSafetensors; optimizer: PreparedSafetensors; state: Buffer } {
  const writeError = checkpointWriteError(step);
  if ('step' in contents.state && contents.state.step !== step) {
    throw writeError(`state.step is ${JSON.stringify(contents.state.step)}, not ${step}`);
  }
  checkMoments(contents.model, contents.optimizer.expAvg, contents.optimizer.expAvgSq, (m) => writeError(m));
  if (!Number.isSafeInteger(contents.optimizer.step) || contents.optimizer.step < 0) {
    throw writeError(`optimizer.step must be a non-negative integer, got ${contents.optimizer.step}`);
  }
  try {
    const model = prepareSafetensors(contents.model, { ...contents.modelMetadata, format: 'pt' });
    const moments: TensorMap = {};
    for (const [k, t] of Object.entries(contents.optimizer.expAvg)) moments[EXP_AVG + k] = t;
    for (const [k, t] of Object.entries(contents.optimizer.expAvgSq)) moments[EXP_AVG_SQ + k] = t;
    const optimizer = prepareSafetensors(moments, { format: OPTIMIZER_FORMAT, step: String(contents.optimizer.step) });
    const state = Buffer.from(`${JSON.stringify({ ...contents.state, step }, null, 2)}\n`);
    return { model, optimizer, state };
  } catch (err) {
    throw writeError((err as Error).message, err);
  }
}

/** Copies of `tensors` (same dtypes and shapes), so that a background save can go on while training changes the originals. */
export function snapshotTensors(tensors: TensorMap): TensorMap {
  const out: TensorMap = {};
  for (const [name, t] of Object.entries(tensors)) out[name] = { dtype: t.dtype, shape: [...t.shape], data: t.data.slice() } as Tensor;
  return out;
}

/**
 * The moments keyed `exp_avg.<name>` / `exp_avg_sq.<name>` in one map, as model/optim.ts's `AdamW.exportState()`
 * returns them, regrouped for `saveCheckpoint` (F32 tensors; the arrays are not copied).
 */
export function optimizerFromPrefixed(state: { step: number; tensors: ReadonlyMap<string, { shape: readonly number[]; data: Float32Array }> }): OptimizerState {
  const expAvg: TensorMap = {};
  const expAvgSq: TensorMap = {};
  for (const [key, { shape, data }] of state.tensors) {
    if (key.startsWith(EXP_AVG)) expAvg[key.slice(EXP_AVG.length)] = { dtype: 'F32', shape, data };
    else if (key.startsWith(EXP_AVG_SQ)) expAvgSq[key.slice(EXP_AVG_SQ.length)] = { dtype: 'F32', shape, data };
    else throw new ModelError('MDL_ERR_CHECKPOINT_WRITE', `optimizer tensor "${key}" is neither ${EXP_AVG}<name> nor ${EXP_AVG_SQ}<name>`);
  }
  return { step: state.step, expAvg, expAvgSq };
}

/** The inverse of `optimizerFromPrefixed`, for `AdamW.importState()` after a load; moments must be F32. */
export function optimizerToPrefixed(optimizer: OptimizerState): { step: number; tensors: Map<string, { shape: readonly number[]; data: Float32Array }> } {
  const tensors = new Map<string, { shape: readonly number[]; data: Float32Array }>();
  for (const [prefix, moments] of [[EXP_AVG, optimizer.expAvg], [EXP_AVG_SQ, optimizer.expAvgSq]] as const) {
    for (const [name, t] of Object.entries(moments)) {
      if (t.dtype !== 'F32') throw new ModelError('MDL_ERR_CHECKPOINT_CORRUPT', `${prefix}${name} is ${t.dtype}; AdamW keeps F32 moments`);
      tensors.set(prefix + name, { shape: t.shape, data: t.data });
    }
  }
  return { step: optimizer.step, tensors };
}

/** Writes `chunks` to a new file, fsyncs it, and returns its size and sha256. */
async function writeDurably(path: string, chunks: Uint8Array[]): Promise<ManifestEntry> {
  const hash = createHash('sha256');
  let bytes = 0;
  const fh = await open(path, 'wx');
  try {
    for (const chunk of chunks) {
      hash.update(chunk);
      // One write() may write less than asked (Linux caps a call near 2 GiB), so loop.
      for (let at = 0; at < chunk.byteLength; ) {
        const { bytesWritten } = await fh.write(chunk, at, Math.min(chunk.byteLength - at, 1 << 30));
        at += bytesWritten;
      }
      bytes += chunk.byteLength;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  return { bytes, sha256: hash.digest('hex') };
}

/** fsyncs a folder so that renames and new entries in it survive a power cut (a no-op where unsupported). */
async function syncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (process.platform !== 'win32' && code !== 'EINVAL' && code !== 'EISDIR' && code !== 'EPERM') throw err;
  } finally {
    await fh?.close();
  }
}

/**
 * Deletes what interrupted saves and prunes left in `rootDir` (`.tmp-*`, `.old-*`, `.del-*` folders) whose
 * process is gone. Returns the names deleted.
 */
export async function cleanLeftovers(rootDir: string): Promise<string[]> {
  const names = await readdirOrEmpty(rootDir);
  const removed: string[] = [];
  for (const name of names) {
    const m = LEFTOVER.exec(name);
    if (!m || inFlight.has(join(rootDir, name)) || processAlive(Number(m[2]))) continue;
    await rm(join(rootDir, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return false; // ours and not in flight: left by a save that failed to clean up
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // exists, but not ours to signal
  }
}

/**
 * Keeps the newest `keep` checkpoints under `rootDir` and deletes the rest (each is renamed aside first, so a crash
 * mid-delete never leaves a partial `step-*` folder), plus leftovers of interrupted saves. Returns the deleted ones.
 */
export async function pruneCheckpoints(rootDir: string, keep: number): Promise<CheckpointRef[]> {
  if (!Number.isSafeInteger(keep) || keep < 1) throw new ModelError('MDL_ERR_CHECKPOINT_WRITE', `keep must be an integer ≥ 1, got ${keep}`);
  await cleanLeftovers(rootDir);
  const all = await listCheckpoints(rootDir);
  const doomed = all.slice(0, Math.max(0, all.length - keep));
  for (const ref of doomed) {
    const aside = join(rootDir, `.del-${checkpointDirName(ref.step)}.${process.pid}.${randomBytes(4).toString('hex')}`);
    await rename(ref.dir, aside);
    await rm(aside, { recursive: true, force: true });
  }
  if (doomed.length > 0) await syncDir(rootDir);
  return doomed;
}

// ---------------------------------------------------------------------------------------------------- loading

/**
 * Reads and verifies the checkpoint in `dir`: every file the manifest lists must exist with its recorded size and
 * sha256, the three required files must be listed, and their contents must agree (step numbers, one moment pair
 * per weight with the weight's shape). Throws `MDL_ERR_CHECKPOINT_CORRUPT` naming the file and the mismatch.
 */
export async function loadCheckpoint(dir: string): Promise<LoadedCheckpoint> {
  const corrupt = (message: string, cause?: unknown) => new ModelError('MDL_ERR_CHECKPOINT_CORRUPT', `checkpoint ${dir}: ${message}`, { cause });
  const manifest = await readManifest(dir, corrupt);
  const bytes: Record<string, Buffer> = {};
  for (const [file, expected] of Object.entries(manifest.files)) {
    const { data, sha256 } = await readHashed(join(dir, file), expected.bytes, file, corrupt);
    if (sha256 !== expected.sha256) throw corrupt(`${file}: sha256 is ${sha256} but manifest.json says ${expected.sha256}`);
    bytes[file] = data;
  }
  const parse = <T>(file: string, fn: (b: Buffer) => T): T => {
    try {
      return fn(bytes[file]!);
    } catch (err) {
      throw corrupt(`${file}: ${(err as Error).message}`, err);
    }
  };
  const model = parse(MODEL_FILE, readSafetensors);
  const opt = parse(OPTIMIZER_FILE, readSafetensors);
  const state = parse(STATE_FILE, (b) => JSON.parse(b.toString('utf8')) as unknown);
  const checked = checkCheckpointContents(manifest.step, state, model.tensors, opt, corrupt);
  return {
    step: manifest.step,
    dir,
    model: model.tensors,
    modelMetadata: model.metadata,
    optimizer: { step: checked.optimizerStep, expAvg: checked.expAvg, expAvgSq: checked.expAvgSq },
    state: checked.state,
    manifest,
  };
}

/** What `checkMoments` and `checkCheckpointContents` look at: a tensor's kind, with or without its data. */
type TensorKindLike = { readonly dtype: string; readonly shape: readonly number[] };

/**
 * The checks that tie a checkpoint's verified files together, on their parsed contents (tensors or just their
 * header entries): state.json is an object with the manifest's step, optimizer.safetensors is AdamW's with a step
 * count, its tensors are `exp_avg.<name>` / `exp_avg_sq.<name>` pairs matching the weights. Returns the state, the
 * moments by weight name and AdamW's step; throws `corrupt(…)` naming the file and the problem.
 */
export function checkCheckpointContents<T extends TensorKindLike>(
  manifestStep: number,
  state: unknown,
  model: Readonly<Record<string, T>>,
  opt: { tensors: Readonly<Record<string, T>>; metadata: Record<string, string> },
  corrupt: (message: string) => ModelError,
): { state: CheckpointState; optimizerStep: number; expAvg: Record<string, T>; expAvgSq: Record<string, T> } {
  if (typeof state !== 'object' || state === null || Array.isArray(state)) throw corrupt(`${STATE_FILE}: not a JSON object`);
  const stateStep = (state as Record<string, unknown>).step;
  if (stateStep !== manifestStep) throw corrupt(`${STATE_FILE}: step is ${JSON.stringify(stateStep)} but manifest.json says ${manifestStep}`);
  if (opt.metadata.format !== OPTIMIZER_FORMAT) throw corrupt(`${OPTIMIZER_FILE}: __metadata__.format is ${JSON.stringify(opt.metadata.format)}, not "${OPTIMIZER_FORMAT}"`);
  const optStep = Number(opt.metadata.step);
  if (!/^\d+$/.test(opt.metadata.step ?? '') || !Number.isSafeInteger(optStep)) {
    throw corrupt(`${OPTIMIZER_FILE}: __metadata__.step is ${JSON.stringify(opt.metadata.step)}, not a step count`);
  }
  const expAvg: Record<string, T> = {};
  const expAvgSq: Record<string, T> = {};
  for (const [name, t] of Object.entries(opt.tensors)) {
    if (name.startsWith(EXP_AVG)) expAvg[name.slice(EXP_AVG.length)] = t;
    else if (name.startsWith(EXP_AVG_SQ)) expAvgSq[name.slice(EXP_AVG_SQ.length)] = t;
    else throw corrupt(`${OPTIMIZER_FILE}: tensor "${name}" is neither ${EXP_AVG}<name> nor ${EXP_AVG_SQ}<name>`);
  }
  checkMoments(model, expAvg, expAvgSq, (m) => corrupt(`${OPTIMIZER_FILE}: ${m}`));
  return { state: state as CheckpointState, optimizerStep: optStep, expAvg, expAvgSq };
}

/** The names optimizer.safetensors gives a weight's moments. */
export const momentNames = (name: string): { expAvg: string; expAvgSq: string } => ({ expAvg: EXP_AVG + name, expAvgSq: EXP_AVG_SQ + name });

/** optimizer.safetensors's `__metadata__` for AdamW's step count. */
export const optimizerMetadata = (step: number): Record<string, string> => ({ format: OPTIMIZER_FORMAT, step: String(step) });

/**
 * The newest checkpoint under `rootDir` that verifies, trying older ones in turn; each one refused is reported to
 * `onSkip` with its error. Undefined when there are no checkpoints at all; throws `MDL_ERR_NO_GOOD_CHECKPOINT`
 * when there are some but none verifies (starting over silently would throw away the run).
 */
export async function loadLatestGoodCheckpoint(
  rootDir: string,
  options: { onSkip?: (skipped: CheckpointRef & { error: ModelError }) => void } = {},
): Promise<LoadedCheckpoint | undefined> {
  const all = await listCheckpoints(rootDir);
  const reasons: string[] = [];
  for (const ref of all.reverse()) {
    try {
      return await loadCheckpoint(ref.dir);
    } catch (err) {
      if (!(err instanceof ModelError) || err.code !== 'MDL_ERR_CHECKPOINT_CORRUPT') throw err;
      reasons.push(err.message);
      options.onSkip?.({ ...ref, error: err });
    }
  }
  if (reasons.length === 0) return undefined;
  throw new ModelError('MDL_ERR_NO_GOOD_CHECKPOINT', `none of the ${reasons.length} checkpoints under ${rootDir} verifies:\n${reasons.join('\n')}`);
}

async function readManifest(dir: string, corrupt: (m: string, cause?: unknown) => ModelError): Promise<CheckpointManifest> {
  const m = parseManifest(await readManifestText(join(dir, MANIFEST_FILE), corrupt), corrupt);
  const dirStep = STEP_DIR.exec(dir.split(/[\\/]/).filter(Boolean).pop() ?? '');
  if (dirStep && Number(dirStep[1]) !== m.step) throw corrupt(`${MANIFEST_FILE}: step is ${m.step} but the folder is named for step ${Number(dirStep[1])}`);
  return m;
}

/** manifest.json's text, or an error saying the checkpoint is incomplete. */
export async function readManifestText(path: string, corrupt: (m: string, cause?: unknown) => ModelError): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw corrupt(`${MANIFEST_FILE} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): the checkpoint is incomplete`, err);
  }
}

/** Parses and checks manifest.json: format, version, step, each file's entry, the required files listed. */
export function parseManifest(text: string, corrupt: (m: string, cause?: unknown) => ModelError): CheckpointManifest {
  let m: Partial<CheckpointManifest>;
  try {
    m = JSON.parse(text) as Partial<CheckpointManifest>;
  } catch (err) {
    throw corrupt(`${MANIFEST_FILE} is not valid JSON: ${(err as Error).message}`, err);
  }
  if (typeof m !== 'object' || m === null || m.format !== CHECKPOINT_FORMAT) throw corrupt(`${MANIFEST_FILE}: format is not "${CHECKPOINT_FORMAT}"`);
  if (m.version !== CHECKPOINT_VERSION) throw corrupt(`${MANIFEST_FILE}: format version ${JSON.stringify(m.version)} is not supported (this build reads ${CHECKPOINT_VERSION})`);
  if (!Number.isSafeInteger(m.step) || m.step! < 0) throw corrupt(`${MANIFEST_FILE}: step ${JSON.stringify(m.step)} is not a non-negative integer`);
  const files = m.files;
  if (typeof files !== 'object' || files === null) throw corrupt(`${MANIFEST_FILE}: files is missing`);
  for (const [file, e] of Object.entries(files)) {
    if (file.includes('/') || file.includes('\\') || file === '..' || file === '.' || file === MANIFEST_FILE) throw corrupt(`${MANIFEST_FILE}: file name ${JSON.stringify(file)} is not allowed`);
    if (typeof e !== 'object' || e === null || !Number.isSafeInteger(e.bytes) || e.bytes < 0 || typeof e.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(e.sha256)) {
      throw corrupt(`${MANIFEST_FILE}: the entry of ${file} needs bytes (an integer) and sha256 (64 hex digits)`);
    }
  }
  for (const file of REQUIRED_FILES) if (!Object.hasOwn(files, file)) throw corrupt(`${MANIFEST_FILE} does not list ${file}`);
  return m as CheckpointManifest;
}

/**
 * Opens a file a manifest lists and checks its size against the manifest's: a file that cannot be opened, or is
 * truncated or longer, is `corrupt`. The caller reads and closes it.
 */
export async function openListed(path: string, expectedBytes: number, file: string, corrupt: (m: string, cause?: unknown) => ModelError): Promise<{ fh: FileHandle; size: number }> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw corrupt(`${file} is listed in manifest.json but cannot be opened (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, err);
  }
  try {
    const { size } = await fh.stat();
    if (size !== expectedBytes) throw corrupt(`${file} is ${size} bytes but manifest.json says ${expectedBytes}${size < expectedBytes ? ' (truncated)' : ''}`);
    return { fh, size };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/** Reads a whole file, refusing one whose size is not `expectedBytes`, and hashes it as it reads. */
async function readHashed(path: string, expectedBytes: number, file: string, corrupt: (m: string, cause?: unknown) => ModelError): Promise<{ data: Buffer; sha256: string }> {
  const { fh, size } = await openListed(path, expectedBytes, file, corrupt);
  try {
    if (size > bufferConstants.MAX_LENGTH) throw corrupt(`${file} is ${size} bytes, more than one Buffer can hold here (${bufferConstants.MAX_LENGTH})`);
    const data = Buffer.allocUnsafeSlow(size); // its own ArrayBuffer, so tensor views are aligned
    const hash = createHash('sha256');
    for (let at = 0; at < size; ) {
      const { bytesRead } = await fh.read(data, at, Math.min(size - at, 1 << 30), at);
      if (bytesRead === 0) throw corrupt(`${file} ended after ${at} of ${size} bytes while being read`);
      hash.update(data.subarray(at, at + bytesRead));
      at += bytesRead;
    }
    return { data, sha256: hash.digest('hex') };
  } finally {
    await fh.close();
  }
}

/** Each weight with moments has both, and both have its dtype and shape; every moment belongs to a weight. */
function checkMoments(
  model: Readonly<Record<string, TensorKindLike>>,
  expAvg: Readonly<Record<string, TensorKindLike>>,
  expAvgSq: Readonly<Record<string, TensorKindLike>>,
  error: (message: string) => ModelError,
): void {
  const sameKind = (a: TensorKindLike, b: TensorKindLike) => a.dtype === b.dtype && a.shape.length === b.shape.length && a.shape.every((d, i) => d === b.shape[i]);
  for (const [label, moments, other] of [['exp_avg', expAvg, expAvgSq], ['exp_avg_sq', expAvgSq, expAvg]] as const) {
    for (const [name, t] of Object.entries(moments)) {
      const weight = Object.hasOwn(model, name) ? model[name] : undefined;
      if (!weight) throw error(`${label} has "${name}", which is not a weight of the model`);
      if (!Object.hasOwn(other, name)) throw error(`"${name}" has ${label} but not ${label === 'exp_avg' ? 'exp_avg_sq' : 'exp_avg'}`);
      if (!sameKind(t, weight)) throw error(`${label} of "${name}" is ${t.dtype} [${t.shape.join(', ')}] but the weight is ${weight.dtype} [${weight.shape.join(', ')}]`);
    }
  }
}
