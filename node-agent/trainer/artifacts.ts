/**
 * A rank's files: what it fetches from the coordinator's artifact store before training (the prepared data, the
 * checkpoint to resume from, a LoRA base, dpo's reference or distill's teacher) and the checkpoints it saves and
 * uploads while training goes on. Everything here is file and network I/O on the main thread; the bytes of a
 * checkpoint are written or encoded off it (the trainer worker's `spill`, checkpoint-upload.ts's encoder).
 *
 * Every download is checked against its sha256 address; a checkpoint counts only once the coordinator has recorded
 * its job.checkpoint, so an upload that fails or is stopped halfway leaves nothing behind that claims to be one.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../common/log.ts';
import type { AgentMessage, JobStart } from '../../protocol/control.ts';
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';
import type { Coords } from '../../protocol/layout.ts';
import { checkpointDirName, MANIFEST_FILE, type JsonValue } from '../../model/checkpoint.ts';
import type { ShardLayout, ShardSpec } from '../../model/shard-layout.ts';
import type { TensorMap } from '../../model/safetensors.ts';
import type { Ring } from '../collectives/ring.ts';
import { epochMs, type Phase, type StepObserver, type TraceParent } from '../../common/step-report.ts';
import { AgentError } from '../errors.ts';
import type { Placement, ResumeFiles } from './messages.ts';
import type { Race } from './step.ts';
import type { Reply, TrainerWorker } from './worker-client.ts';
import { encodeCheckpointFiles, uploadCheckpoint } from './checkpoint-upload.ts';

/** The part of ArtifactClient a job uses (tests pass one over a folder). Files stream: none is held in one buffer. */
export interface ArtifactStore {
  /** Writes the artifact `digest` to the new file `path`; resolves with the sha256 of what it wrote (compared here too). */
  download(digest: string, path: string): Promise<string>;
  /** Uploads one file given as its chunks in order (never joined), whose sha256 the caller computed. */
  upload(chunks: readonly Uint8Array[], sha256: string): Promise<void>;
  /** Uploads the file at `path`, streamed from disk, whose sha256 the caller computed (it must not change meanwhile). */
  uploadFile(path: string, sha256: string): Promise<void>;
}

/** What the files of a job need of its context (job-runner.ts's JobContext extends it). */
export interface ArtifactContext {
  artifacts: ArtifactStore;
  /** To the coordinator; dropped by the caller when the control connection is down. */
  send(msg: AgentMessage): void;
  log: Logger;
  /** job.stop, control connection lost, group released: stop now. Its reason goes into job.finished's error. */
  signal: AbortSignal;
  /** Told about every finished step and uploaded checkpoint (metrics, traces). */
  observers?: readonly StepObserver[];
}

const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$/;

/** An error's message for a log line or a job.finished, at most 2 KiB. */
export const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err)).slice(0, 2048);

/** The folders of what a rank fetched before training, under `<workDir>/<jobId>`. */
export interface JobInputs {
  dataDir: string;
  resume?: ResumeFiles;
  /** dpo's reference or distill's teacher, on the last stage only. */
  frozenDir?: string;
  /** A LoRA job's frozen base. */
  baseDir?: string;
}

/** Fetches what this rank needs before its first step, each download racing a stop. */
export async function fetchJobInputs(store: ArtifactStore, start: JobStart, jobDir: string, lastStage: boolean, race: Race): Promise<JobInputs> {
  const dataDir = join(jobDir, 'data');
  await race(download(store, start.data, dataDir, 'data file'));
  let resume: ResumeFiles | undefined;
  if (start.resume) resume = await race(fetchResume(store, start.resume, join(jobDir, 'resume')));
  // dpo's reference / distill's teacher runs on the last stage only: only it fetches the version's files.
  const frozenDir = start.frozen && lastStage ? join(jobDir, 'frozen') : undefined;
  if (frozenDir) await race(download(store, start.frozen!.files, frozenDir, `${start.frozen!.role} model file`));
  // A LoRA job's frozen base: every rank cuts its shard of it.
  const baseDir = start.base ? join(jobDir, 'base') : undefined;
  if (baseDir) await race(download(store, start.base!.files, baseDir, 'LoRA base model file'));
  return { dataDir, ...(resume ? { resume } : {}), ...(frozenDir ? { frozenDir } : {}), ...(baseDir ? { baseDir } : {}) };
}

/** Fetches each file by sha256 into `dir` under its name (streamed to disk), checking the bytes against the name's address. */
async function download(store: ArtifactStore, files: Record<string, string>, dir: string, what: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [name, digest] of Object.entries(files)) {
    if (!SAFE_NAME.test(name)) throw new AgentError('AGT_ERR_ARTIFACT', `${what} name ${JSON.stringify(name)} is not a plain file name`);
    let actual: string;
    try {
      actual = await store.download(digest, join(dir, name));
    } catch (err) {
      throw new AgentError('AGT_ERR_ARTIFACT', `${what} ${name}: ${errorText(err)}`, { cause: err });
    }
    if (actual !== digest) throw new AgentError('AGT_ERR_ARTIFACT', `${what} ${name}: its bytes hash to ${actual}, not ${digest} (corrupted in the store or in transit)`);
  }
}

/**
 * Downloads a checkpoint's files into `<root>/step-NNNNNN`. The trainer worker reads and verifies them at init
 * (resume-checkpoint.ts: sha256 against the manifest, the step, the model, our shard), off the main thread.
 */
async function fetchResume(store: ArtifactStore, resume: NonNullable<JobStart['resume']>, root: string): Promise<ResumeFiles> {
  const dir = join(root, checkpointDirName(resume.step));
  await rm(dir, { recursive: true, force: true });
  if (!Object.hasOwn(resume.files, MANIFEST_FILE)) throw new AgentError('AGT_ERR_RESUME', `resume checkpoint of step ${resume.step}: its files lack ${MANIFEST_FILE}`);
  await download(store, resume.files, dir, `resume checkpoint file`);
  return { dir, step: resume.step };
}

/** Where this rank's checkpoints come from: its stage shard, the layout of what it saves, its place in the job. */
export interface CheckpointSource {
  shard: ShardSpec;
  layout: ShardLayout;
  coords: Coords;
  placement: Placement;
}

/** The job's folder, its worker, the data-parallel ring (ZeRO-1 gathers the moments over it), the stop race. */
export interface SaverTools {
  dir: string;
  worker: TrainerWorker;
  data: Ring;
  race: Race;
}

/**
 * Saves this rank's shard checkpoints, one upload in flight at a time: the next save (and the end of the job)
 * first waits for the previous upload, whose failure fails the job there.
 */
export class CheckpointSaver {
  readonly #ctx: ArtifactContext;
  readonly #start: JobStart;
  readonly #spec: ResolvedJobSpec;
  readonly #where: CheckpointSource;
  readonly #job: SaverTools;
  #uploading: Promise<void> = Promise.resolve();

  constructor(ctx: ArtifactContext, start: JobStart, spec: ResolvedJobSpec, where: CheckpointSource, job: SaverTools) {
    this.#ctx = ctx;
    this.#start = start;
    this.#spec = spec;
    this.#where = where;
    this.#job = job;
  }

  /** Saves step `s`'s checkpoint and starts its upload; the phase it took on this rank, if it took part. */
  async save(s: number, trace: TraceParent | undefined): Promise<Phase | null> {
    const ctx = this.#ctx, start = this.#start, spec = this.#spec, where = this.#where;
    const { worker, data, race } = this.#job;
    const { coords, placement } = where;
    const c0 = epochMs();
    if (placement.zero && placement.layout.data > 1) {
      // ZeRO-1: each replica holds a range of the moments. Every replica exports a snapshot (params + whole-length
      // moments), the ranges are gathered, and rank 0 encodes and uploads its snapshot from memory.
      const snap = await race(worker.request({ type: 'export' }, 'exported'));
      await race(data.allGather(snap.expAvg)); // each rank's range → the whole shard's moments
      await race(data.allGather(snap.expAvgSq));
      if (coords.dp === 0) {
        await race(this.#uploading); // one upload at a time; its failure fails the job here
        this.#uploading = saveAndUpload(ctx, start, spec, where, snap, trace);
        this.#uploading.catch(() => {}); // awaited (and its error raised) before the next one and at the end
      }
    } else if (coords.dp === 0) {
      // Only data-parallel rank 0 saves. The worker writes the checkpoint to this job's folder straight from the
      // live buffers (no snapshot in memory: GPT-2-small's is 1.5 GB), then it uploads while training goes on.
      const dir = join(this.#job.dir, 'checkpoints', checkpointDirName(s));
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });
      const spilled = await race(worker.request({ type: 'spill', dir, state: checkpointState(start, spec, where) }, 'spilled'));
      await race(this.#uploading); // one upload at a time; its failure fails the job here
      this.#uploading = uploadSpilled(ctx, start, where, spilled, dir, trace);
      this.#uploading.catch(() => {});
    } else return null;
    return { name: 'checkpoint', startMs: c0, endMs: epochMs(), attrs: { step: s } };
  }

  /** Waits for the upload in flight, unless the job is stopped first; its failure fails the job. */
  finished(): Promise<void> {
    return this.#job.race(this.#uploading);
  }

  /** Waits for the upload in flight, whatever becomes of it (the job is ending anyway). */
  settled(): Promise<void> {
    return this.#uploading.catch(() => {});
  }
}

/** Named tensors (local shapes) of a flat shard buffer. */
function tensorsOf(flat: Float32Array, layout: ShardLayout): TensorMap {
  return Object.fromEntries(layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape, data: flat.subarray(s.offset, s.offset + s.size) }]));
}

/**
 * Data-parallel rank 0 of a ZeRO-1 stage shard: encodes the gathered snapshot as a shard checkpoint (files, manifest,
 * sha256 each) off the main thread, streams it straight to the coordinator's store and tells the coordinator
 * (checkpoint-upload.ts); a checkpoint counts only once the coordinator has recorded it. `snap`'s arrays are handed
 * over (detached here).
 */
async function saveAndUpload(
  ctx: ArtifactContext, start: JobStart, spec: ResolvedJobSpec, where: CheckpointSource, snap: Reply<'exported'>, trace: TraceParent | undefined,
): Promise<void> {
  const t0 = performance.now();
  const startMs = epochMs();
  const { shard, layout } = where;
  const buffers = [snap.params.buffer, snap.expAvg.buffer, snap.expAvgSq.buffer] as ArrayBuffer[];
  const encoded = await encodeCheckpointFiles(snap.step, {
    model: tensorsOf(snap.params, layout),
    optimizer: { step: snap.optimizerStep, expAvg: tensorsOf(snap.expAvg, layout), expAvgSq: tensorsOf(snap.expAvgSq, layout) },
    state: { step: snap.step, cursor: { shard: snap.cursor.shard, offset: snap.cursor.offset }, ...checkpointState(start, spec, where) },
  }, buffers);
  if (ctx.signal.aborted) return;
  const files = await uploadCheckpoint(ctx.artifacts, encoded);
  if (ctx.signal.aborted) return;
  checkpointUploaded(ctx, start, shard, snap.step, files, { startMs, ms: performance.now() - t0, bytes: encoded.bytes, trace });
}

/** state.json of a shard checkpoint, less the step and the data cursor (the trainer worker's). */
function checkpointState(start: JobStart, spec: ResolvedJobSpec, where: { shard: ShardSpec; placement: Placement }): Record<string, JsonValue> {
  return { spec: spec as never, shard: { ...where.shard }, layout: { ...where.placement.layout }, world: start.world, jobId: start.jobId, attempt: start.attempt };
}

/**
 * Uploads a checkpoint the trainer worker wrote to `dir` (a `spill`), streaming each file from disk, tells the
 * coordinator, and removes the folder whatever happens.
 */
async function uploadSpilled(
  ctx: ArtifactContext, start: JobStart, where: { shard: ShardSpec }, spilled: Reply<'spilled'>, dir: string, trace: TraceParent | undefined,
): Promise<void> {
  const t0 = performance.now();
  const startMs = epochMs();
  try {
    const entries = Object.entries(spilled.files);
    await Promise.all(entries.map(([, f]) => ctx.artifacts.uploadFile(f.path, f.sha256)));
    if (ctx.signal.aborted) return;
    const files = Object.fromEntries(entries.map(([name, f]) => [name, f.sha256]));
    const bytes = entries.reduce((n, [, f]) => n + f.bytes, 0);
    checkpointUploaded(ctx, start, where.shard, spilled.step, files, { startMs, ms: performance.now() - t0, bytes, trace });
  } finally {
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}

/** Observers, the coordinator (job.checkpoint) and the log hear of an uploaded checkpoint. */
function checkpointUploaded(
  ctx: ArtifactContext, start: JobStart, shard: ShardSpec, step: number, files: Record<string, string>,
  how: { startMs: number; ms: number; bytes: number; trace: TraceParent | undefined },
): void {
  for (const o of ctx.observers ?? []) {
    try {
      o.onCheckpoint?.({ jobId: start.jobId, attempt: start.attempt, rank: start.rank, step, startMs: how.startMs, endMs: epochMs(), bytes: how.bytes, ...(how.trace ? { trace: how.trace } : {}) });
    } catch (err) {
      ctx.log.warn(`job ${start.jobId}: a checkpoint observer failed: ${errorText(err)}`);
    }
  }
  ctx.send({ type: 'job.checkpoint', jobId: start.jobId, attempt: start.attempt, step, files, shard: { stage: shard.stage, tp: shard.tpRank } });
  ctx.log.info(`job ${start.jobId}: checkpoint of step ${step} (stage ${shard.stage}, shard ${shard.tpRank}) uploaded (${how.ms.toFixed(0)} ms, ${(how.bytes / 1e6).toFixed(1)} MB)`);
}
