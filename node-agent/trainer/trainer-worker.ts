/**
 * The compute side of one rank of a training job, in a worker thread (wasm compute blocks its thread, and the main
 * thread must keep heartbeats and peer traffic flowing). Started through common/worker-boot.mjs with workerData
 * `{ entry, backend }` by worker-client.ts; the message protocol and the shared-memory hand-offs are in messages.ts.
 *
 * It holds this rank's StageModel (model/stage-model.ts: its pipeline stage's blocks, cut to its tensor-parallel
 * shard), AdamW over the shard (or, with ZeRO-1, over this data-parallel rank's range of it), the shard's
 * parameters and gradient on SharedArrayBuffers, and two readers of the prepared data folder: the training split
 * (this data-parallel replica's rows of each global batch, from a resumable cursor) and the held-out split.
 *
 * Every rank of a stage shard builds the same parameters (from the seed through initShardParams, or from the same
 * checkpoint) and applies the same reduced gradient, so the data-parallel replicas stay identical. With DiLoCo
 * (training.diloco) each replica applies its own gradient for a round, and all become identical again at its end:
 * the same outer step from the same averaged pseudo-gradient (worker-compute.ts outerStep, model/diloco.ts).
 *
 * This file is the thread's entry: it loads the backend, answers the requests one at a time, and writes
 * checkpoints (`spill`, `export`). Building the job is worker-job.ts; the step's handlers are worker-compute.ts.
 */
import { parentPort, workerData, type TransferListItem } from 'node:worker_threads';
import { loadBackend, type BackendChoice } from '../../model/compute/backend.ts';
import type { JsonValue } from '../../model/checkpoint.ts';
import { AgentError } from '../errors.ts';
import { failureOf, type FromWorker, type Ready, type ToWorker } from './messages.ts';
import { loadResume, shardOf } from './resume-checkpoint.ts';
import type { Job } from './worker-job.ts';

const port = parentPort!;
const { backend } = workerData as { backend: BackendChoice };

// Imported after the backend is chosen (loadBackend may pick tfjs-node), so every module sees the same tf.
const loaded = await loadBackend(backend);
const { initJob } = await import('./worker-job.ts');
const { begin, forward, backward, norm, update, pseudoGrad, outerStep, evalBegin, evalForward } = await import('./worker-compute.ts');
const { writeCheckpointFiles } = await import('../../model/checkpoint-files.ts');

let job: Job | null = null;

const post = (msg: FromWorker, transfer: TransferListItem[] = []) => port.postMessage(msg, transfer);

// Messages are handled one at a time, in order: a handler may await (reading a checkpoint, a GPU backend's
// tensors), and the next message waits for it. A failure is answered with its message and code (messages.ts).
let queue: Promise<void> = Promise.resolve();
port.on('message', (msg: ToWorker) => {
  queue = queue.then(async () => {
    try {
      const [reply, transfer] = await handle(msg);
      post(reply, transfer);
    } catch (err) {
      post({ type: 'failed', ...failureOf(err) });
    }
  });
});

async function handle(msg: ToWorker): Promise<[FromWorker, TransferListItem[]]> {
  switch (msg.type) {
    case 'init':
      return [await init(msg), []];
    case 'spill':
      return [await spill(need(), msg.dir, msg.state), []];
    case 'begin':
      return [begin(need(), msg.step), []];
    case 'fwd':
      return forward(need(), msg.mb, msg.acts);
    case 'bwd':
      return backward(need(), msg.mb, msg.gradOut);
    case 'norm':
      return [norm(need()), []];
    case 'update':
      return [update(need(), msg.gradNorm), []];
    case 'upload':
      need().model.writeParams(need().params);
      return [{ type: 'uploaded' }, []];
    case 'pseudoGrad':
      return [pseudoGrad(need()), []];
    case 'outerStep':
      return [outerStep(need(), msg.replicas), []];
    case 'evalBegin':
      return [evalBegin(need()), []];
    case 'evalFwd':
      return evalForward(need(), msg.mb, msg.acts);
    case 'export':
      return exportSnapshot(need());
  }
}

/** Opens the checkpoint to resume from (verified here, off main), then builds the job (worker-job.ts). */
async function init(msg: Extract<ToWorker, { type: 'init' }>): Promise<Ready> {
  const { spec, placement, dataDir, resume, frozenDir, baseDir } = msg;
  const state = resume ? await loadResume(resume.dir, resume.step, spec, shardOf(spec, placement)) : undefined;
  try {
    if (job) throw new AgentError('AGT_ERR_TRAINER', 'the trainer worker is already initialised');
    const files = { dataDir, ...(state ? { resume: state } : {}), ...(frozenDir ? { frozenDir } : {}), ...(baseDir ? { baseDir } : {}) };
    const built = await initJob(spec, placement, files, { backendName: loaded.name, post: (m) => post(m) });
    job = built.job;
    return built.ready;
  } catch (err) {
    await state?.files.close(); // initJob closes the files once it has read them; if it fails first, here
    throw err;
  }
}

/**
 * Writes the shard's checkpoint into `dir` straight from the live parameters and AdamW moments, tensor by tensor
 * (model/checkpoint-files.ts), hashing as it goes: no snapshot copy. Main waits for the answer before the next
 * step (nothing changes meanwhile) and then uploads the files while training goes on.
 */
async function spill(j: Job, dir: string, state: Record<string, JsonValue>): Promise<FromWorker> {
  if (j.placement.zero && j.placement.layout.data > 1) throw new AgentError('AGT_ERR_TRAINER', 'a ZeRO-1 rank holds part of the moments: its checkpoint goes through export');
  const layout = j.model.trainable;
  const { step: optimizerStep, expAvg, expAvgSq } = j.optimizer.viewFlat();
  const outer = j.outer; // DiLoCo: a checkpoint falls on a synchronisation step, so params are the outer weights
  const slice = (flat: Float32Array, name: string) => ((s) => flat.subarray(s.offset, s.offset + s.size))(layout.byName.get(name)!);
  const files = await writeCheckpointFiles(dir, {
    step: j.step,
    weights: layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape }] as const),
    moments: layout.specs.map((s) => s.name),
    optimizerStep,
    state: { ...state, cursor: { shard: j.train.cursor.shard, offset: j.train.cursor.offset }, ...(outer ? { outerSteps: outer.steps } : {}) },
    ...(outer ? { outerMomentum: { names: layout.specs.map((s) => s.name), tensor: (name: string) => Promise.resolve(slice(outer.momentum, name)) } } : {}),
    tensor: (group, name) => {
      const s = layout.byName.get(name)!;
      const from = group === 'model' ? j.params : group === 'expAvg' ? expAvg : expAvgSq;
      return Promise.resolve(from.subarray(s.offset, s.offset + s.size));
    },
  });
  return { type: 'spilled', step: j.step, files };
}

/**
 * A ZeRO-1 rank's checkpoint: copies of the parameters and of full-length moments with this rank's range filled,
 * transferred to main, which gathers the other ranges over the replicas and encodes the snapshot (artifacts.ts).
 */
function exportSnapshot(j: Job): [FromWorker, TransferListItem[]] {
  const { step: optimizerStep, expAvg: m, expAvgSq: v } = j.optimizer.exportFlat();
  const expAvg = new Float32Array(j.params.length), expAvgSq = new Float32Array(j.params.length);
  expAvg.set(m, j.range[0]);
  expAvgSq.set(v, j.range[0]);
  const params = j.params.slice();
  return [
    { type: 'exported', step: j.step, cursor: j.train.cursor, params, expAvg, expAvgSq, optimizerStep },
    [params.buffer as ArrayBuffer, expAvg.buffer as ArrayBuffer, expAvgSq.buffer as ArrayBuffer],
  ];
}

function need(): Job {
  if (!job) throw new AgentError('AGT_ERR_TRAINER', 'the trainer worker has not been initialised');
  return job;
}
