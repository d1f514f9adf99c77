/**
 * One rank of a data-parallel training job, on the agent's main thread: `runJob(start, ctx)` fetches the data
 * (and the checkpoint to resume from), starts the compute worker (trainer-worker.ts), and drives the steps:
 *
 *   for step = start + 1 … steps:
 *     worker: forward/backward of this rank's micro-batches into the shared gradient buffer → 'reduce'
 *     main:   ring.allReduce(shared gradient) in place (the SUM over ranks) → 'reduced'
 *     worker: average, clip, AdamW → 'stepped' {local mean loss, tokens, timings}
 *     [every evalEvery steps and at the end: every rank evaluates its share of the held-out batches]
 *     main:   all-reduce [loss, tokens, evalLoss] (every rank's batch has the same shape, so the mean of the
 *             rank means is the global mean) → rank 0 sends job.progress
 *     [every checkpointEvery steps and at the end: rank 0 snapshots the state and, in the background while
 *      training goes on, saves a checkpoint folder, uploads its files and sends job.checkpoint]
 *   rank 0 uploads the Hugging Face files (config.json, model.safetensors, tokenizer.json) → job.finished ok
 *
 * Every rank runs the same collectives in the same order (the schedule depends only on the step and the spec),
 * which the ring requires. Any failure ends in job.finished {ok: false, error} and never hangs: a peer that dies
 * makes our next collective time out (the ring's idle timeout), and `ctx.signal` (job.stop, lost control
 * connection, released group) terminates the worker at once and fails a collective in flight by aborting the ring.
 * A ring aborted that way stays broken; it would be out of step with its peers anyway, so a new attempt needs a
 * new group. `runJob` itself never throws: it resolves with the job.finished message it sent.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Logger } from '../../common/log.ts';
import type { AgentMessage, JobStart } from '../../protocol/control.ts';
import { validateJobSpec, type ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { checkpointDirName, loadCheckpoint, MANIFEST_FILE, saveCheckpoint } from '../../model/checkpoint.ts';
import type { ShardCursor } from '../../model/token-shard-reader.ts';
import type { Ring } from '../collectives/ring.ts';
import type { BackendChoice } from '../compute/backend.ts';
import type { FromWorker, ResumeState, ToWorker } from './messages.ts';

/** The part of ArtifactClient a job uses (tests pass an in-memory one). */
export interface ArtifactStore {
  get(digest: string): Promise<Uint8Array>;
  put(bytes: Uint8Array): Promise<string>;
  putAll(files: Record<string, Uint8Array>): Promise<Record<string, string>>;
}

export interface JobContext {
  /** The linked ring of the job's group (size = world, our rank = start.rank). */
  ring: Ring;
  artifacts: ArtifactStore;
  /** To the coordinator; dropped by the caller when the control connection is down. */
  send(msg: AgentMessage): void;
  log: Logger;
  backend: BackendChoice;
  /** job.stop, control connection lost, group released: stop now. Its reason goes into job.finished's error. */
  signal: AbortSignal;
  /** Parent of `<jobId>/data`, `<jobId>/resume`, `<jobId>/checkpoints`. */
  workDir: string;
  /** Keep `<workDir>/<jobId>` after the job (default: deleted; everything that matters is uploaded). */
  keepWorkDir?: boolean;
}

export type JobFinished = Extract<AgentMessage, { type: 'job.finished' }>;


const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$/;
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err)).slice(0, 2048);

export async function runJob(start: JobStart, ctx: JobContext): Promise<JobFinished> {
  const { jobId, attempt, rank, world } = start;
  const log = ctx.log;
  const jobDir = join(ctx.workDir, jobId);
  let step = start.resume?.step ?? 0;
  let worker: TrainerWorker | null = null;
  let checkpointing: Promise<void> = Promise.resolve();
  let inCollective = false;

  // Everything awaited below races this, so a stop is acted on at once, whatever we are waiting for.
  let onAbort!: (err: Error) => void;
  const aborted = new Promise<never>((_, reject) => (onAbort = reject));
  aborted.catch(() => {});
  const abortError = () => new Error(`stopped: ${reasonOf(ctx.signal.reason)}`);
  const abortListener = () => {
    const err = abortError();
    worker?.terminate();
    if (inCollective) ctx.ring.abort(err); // a collective in flight would otherwise wait for its idle timeout
    onAbort(err);
  };
  const race = <T>(p: Promise<T>): Promise<T> => Promise.race([p, aborted]);

  let finished: JobFinished;
  try {
    if (ctx.signal.aborted) throw abortError();
    ctx.signal.addEventListener('abort', abortListener, { once: true });

    const checked = validateJobSpec(start.spec);
    if (!checked.ok) throw new Error(`invalid job spec: ${checked.errors.join('; ')}`);
    const spec = checked.spec;
    const t = spec.training;
    if (ctx.ring.size !== world || ctx.ring.rank !== rank) {
      throw new Error(`the group's ring is rank ${ctx.ring.rank} of ${ctx.ring.size}, but the job says rank ${rank} of ${world}`);
    }
    if (t.batchSize % world !== 0 || (t.batchSize / world) % t.microBatches !== 0) {
      throw new Error(`training.batchSize ${t.batchSize} does not split into ${world} ranks × ${t.microBatches} micro-batches`);
    }

    // 1. data and checkpoint
    const dataDir = join(jobDir, 'data');
    await race(download(ctx.artifacts, start.data, dataDir, 'data file'));
    let resume: ResumeState | undefined;
    if (start.resume) resume = await race(fetchResume(ctx.artifacts, start.resume, join(jobDir, 'resume'), spec));
    log.info(`job ${jobId} attempt ${attempt}: rank ${rank}/${world}, ${Object.keys(start.data).length} data files${resume ? `, resuming after step ${resume.step}` : ''}`);

    // 2. the worker
    worker = new TrainerWorker(ctx.backend);
    if (ctx.signal.aborted) worker.terminate();
    const ready = await race(worker.request({ type: 'init', spec, rank, world, dataDir, seed: t.seed, ...(resume ? { resume } : {}) }, 'ready'));
    const grads = new Float32Array(ready.grads);
    log.info(`job ${jobId}: worker ready on ${ready.backend}, ${ready.params} parameters, starting at step ${ready.step + 1} of ${t.steps}`);

    const collective = async (buf: Float32Array) => {
      inCollective = true;
      try {
        await race(ctx.ring.allReduce(buf));
      } finally {
        inCollective = false;
      }
    };

    // 3. the steps
    const metrics = new Float32Array(3);
    let evalSkipped = '';
    for (let s = step + 1; s <= t.steps; s++) {
      const t0 = performance.now();
      let allreduceMs = 0;
      const stepped = await race(
        worker.request({ type: 'step', step: s }, 'stepped', async () => {
          const r0 = performance.now();
          await collective(grads);
          allreduceMs += performance.now() - r0;
        }),
      );
      step = s;
      const trainMs = performance.now() - t0;
      const evalNow = s === t.steps || (t.evalEvery > 0 && s % t.evalEvery === 0);
      const evaluated = evalNow ? await race(worker.request({ type: 'eval' }, 'evaluated')) : null;
      if (evaluated?.skipped && !evalSkipped) log.warn(`job ${jobId}: no held-out evaluation: ${(evalSkipped = evaluated.skipped)}`);
      metrics[0] = stepped.loss;
      metrics[1] = stepped.tokens;
      metrics[2] = evaluated?.loss ?? 0;
      const m0 = performance.now();
      await collective(metrics);
      const loss = metrics[0]! / world, tokens = metrics[1]!;
      const evalLoss = evaluated && Number.isFinite(metrics[2]) ? metrics[2]! / world : undefined;
      const stepMs = trainMs + (performance.now() - m0); // the evaluation is not part of the step's time
      const tokensPerS = tokens / Math.max(stepMs / 1000, 1e-9);
      if (!Number.isFinite(loss)) throw new Error(`step ${s}: the loss is ${loss}`);
      log.info(`job ${jobId} step ${s}/${t.steps} loss ${loss.toFixed(4)}${evalLoss !== undefined ? ` eval ${evalLoss.toFixed(4)}` : ''} ` +
        `${Math.round(tokensPerS)} tok/s (${stepMs.toFixed(0)} ms, all-reduce ${allreduceMs.toFixed(0)} ms)`);
      if (rank === 0) {
        ctx.send({
          type: 'job.progress', jobId, attempt, rank, step: s, loss, ...(evalLoss !== undefined ? { evalLoss } : {}), lr: stepped.lr,
          tokensPerS, stepMs, computeMs: stepped.computeMs + stepped.updateMs, allreduceMs,
        });
        const checkpointNow = s === t.steps || (t.checkpointEvery > 0 && s % t.checkpointEvery === 0);
        if (checkpointNow) {
          await race(checkpointing); // one upload at a time; its failure fails the job here
          const snap = await race(worker.request({ type: 'export' }, 'exported'));
          checkpointing = saveAndUpload(ctx, start, spec, snap, join(jobDir, 'checkpoints'));
          checkpointing.catch(() => {}); // awaited (and its error raised) before the next one and at the end
        }
      }
    }

    // 4. the end
    await race(checkpointing);
    let files: Record<string, string> | undefined;
    if (rank === 0) {
      const hf = await race(worker.request({ type: 'exportHf' }, 'hf'));
      files = await race(ctx.artifacts.putAll(hf.files));
    }
    finished = { type: 'job.finished', jobId, attempt, rank, ok: true, step, ...(files ? { files } : {}) };
    log.info(`job ${jobId}: finished ${step} steps`);
  } catch (err) {
    const error = ctx.signal.aborted ? abortError().message : errorText(err);
    log.warn(`job ${jobId}: failed at step ${step}: ${error}`);
    finished = { type: 'job.finished', jobId, attempt, rank, ok: false, step, error };
  } finally {
    ctx.signal.removeEventListener('abort', abortListener);
    await worker?.terminate();
    await checkpointing.catch(() => {});
    if (!ctx.keepWorkDir) await rm(jobDir, { recursive: true, force: true }).catch(() => {});
  }
  ctx.send(finished);
  return finished;
}

function reasonOf(reason: unknown): string {
  if (reason instanceof Error) return reason.message;
  return typeof reason === 'string' ? reason : 'aborted';
}

/** Fetches each file by sha256 into `dir` under its name, checking the bytes against the name's address. */
async function download(store: ArtifactStore, files: Record<string, string>, dir: string, what: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [name, digest] of Object.entries(files)) {
    if (!SAFE_NAME.test(name)) throw new Error(`${what} name ${JSON.stringify(name)} is not a plain file name`);
    let bytes: Uint8Array;
    try {
      bytes = await store.get(digest);
    } catch (err) {
      throw new Error(`${what} ${name}: ${errorText(err)}`, { cause: err });
    }
    const actual = sha256(bytes);
    if (actual !== digest) throw new Error(`${what} ${name}: its bytes hash to ${actual}, not ${digest} (corrupted in the store or in transit)`);
    await writeFile(join(dir, name), bytes);
  }
}

/** Downloads a checkpoint's files into `<root>/step-NNNNNN`, verifies it (loadCheckpoint) and checks it fits the job. */
async function fetchResume(store: ArtifactStore, resume: NonNullable<JobStart['resume']>, root: string, spec: ResolvedJobSpec): Promise<ResumeState> {
  const dir = join(root, checkpointDirName(resume.step));
  await rm(dir, { recursive: true, force: true });
  if (!Object.hasOwn(resume.files, MANIFEST_FILE)) throw new Error(`resume checkpoint of step ${resume.step}: its files lack ${MANIFEST_FILE}`);
  await download(store, resume.files, dir, `resume checkpoint file`);
  const ckpt = await loadCheckpoint(dir); // sizes, sha256 against the manifest, consistency
  const bad = (why: string) => new Error(`resume checkpoint of step ${resume.step}: ${why}`);
  if (ckpt.step !== resume.step) throw bad(`${MANIFEST_FILE} says step ${ckpt.step}`);
  const saved = ckpt.state.spec as unknown as ResolvedJobSpec | undefined;
  if (!saved || typeof saved !== 'object' || JSON.stringify(saved.model) !== JSON.stringify(spec.model)) {
    throw bad(`state.json's model ${JSON.stringify(saved?.model)} is not this job's ${JSON.stringify(spec.model)}`);
  }
  const cursor = ckpt.state.cursor as unknown as ShardCursor | undefined;
  if (!cursor || !Number.isInteger(cursor.shard) || !Number.isInteger(cursor.offset)) throw bad(`state.json has no data cursor`);
  if (ckpt.optimizer.step !== resume.step) throw bad(`optimizer.safetensors has ${ckpt.optimizer.step} updates, not ${resume.step}`);
  return { model: ckpt.model, optimizer: ckpt.optimizer, step: resume.step, cursor: { shard: cursor.shard, offset: cursor.offset } };
}

/** Rank 0: writes the snapshot as a checkpoint folder, uploads its files and tells the coordinator. */
async function saveAndUpload(
  ctx: JobContext,
  start: JobStart,
  spec: ResolvedJobSpec,
  snap: Extract<FromWorker, { type: 'exported' }>,
  root: string,
): Promise<void> {
  const t0 = performance.now();
  const saved = await saveCheckpoint(root, snap.step, {
    model: snap.model,
    optimizer: snap.optimizer,
    state: { step: snap.step, cursor: { shard: snap.cursor.shard, offset: snap.cursor.offset }, spec: spec as never, world: start.world, jobId: start.jobId, attempt: start.attempt },
  });
  const bytes: Record<string, Uint8Array> = {};
  for (const name of [...Object.keys(saved.manifest.files), MANIFEST_FILE]) bytes[name] = await readFile(join(saved.dir, name));
  const files = await ctx.artifacts.putAll(bytes);
  if (ctx.signal.aborted) return;
  ctx.send({ type: 'job.checkpoint', jobId: start.jobId, attempt: start.attempt, step: snap.step, files });
  ctx.log.info(`job ${start.jobId}: checkpoint of step ${snap.step} uploaded (${(performance.now() - t0).toFixed(0)} ms)`);
}

type Reply<K extends FromWorker['type']> = Extract<FromWorker, { type: K }>;

/** The compute worker, one request at a time. */
class TrainerWorker {
  readonly #worker: Worker;
  #pending: { expect: string; resolve(m: FromWorker): void; reject(e: Error): void; onReduce?: () => Promise<void> } | null = null;
  #dead: Error | null = null;
  #exited: Promise<void>;

  constructor(backend: BackendChoice) {
    this.#worker = new Worker(new URL('../compute/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./trainer-worker.ts', import.meta.url).href, backend },
    });
    this.#exited = new Promise((resolve) => this.#worker.once('exit', () => resolve()));
    this.#worker.on('message', (m: FromWorker) => this.#onMessage(m));
    this.#worker.on('error', (err) => this.#fail(new Error(`trainer worker crashed: ${err.message}`)));
    this.#worker.on('exit', (code) => this.#fail(new Error(`trainer worker exited (code ${code})`)));
  }

  request<K extends FromWorker['type']>(msg: ToWorker, expect: K, onReduce?: () => Promise<void>): Promise<Reply<K>> {
    if (this.#dead) return Promise.reject(this.#dead);
    if (this.#pending) return Promise.reject(new Error(`trainer worker is busy with a ${this.#pending.expect} request`));
    return new Promise<Reply<K>>((resolve, reject) => {
      this.#pending = { expect, resolve: resolve as (m: FromWorker) => void, reject, ...(onReduce ? { onReduce } : {}) };
      this.#worker.postMessage(msg);
    });
  }

  terminate(): Promise<void> {
    this.#fail(new Error('trainer worker stopped'));
    void this.#worker.terminate();
    return this.#exited;
  }

  #onMessage(m: FromWorker): void {
    const p = this.#pending;
    if (!p) return;
    if (m.type === 'reduce') {
      if (!p.onReduce) return this.#settle(new Error('the worker asked for an all-reduce outside a step'));
      p.onReduce().then(
        () => this.#worker.postMessage({ type: 'reduced' } satisfies ToWorker),
        (err: Error) => this.#settle(err),
      );
      return;
    }
    if (m.type === 'failed') return this.#settle(new Error(m.error));
    if (m.type !== p.expect) return this.#settle(new Error(`the worker answered ${m.type} to a request for ${p.expect}`));
    this.#pending = null;
    p.resolve(m);
  }

  #settle(err: Error): void {
    const p = this.#pending;
    this.#pending = null;
    p?.reject(err);
  }

  #fail(err: Error): void {
    this.#dead ??= err;
    this.#settle(this.#dead);
  }
}

