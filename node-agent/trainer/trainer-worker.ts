/**
 * The compute side of one data-parallel rank, in a worker thread (wasm compute blocks its thread, and the main
 * thread must keep heartbeats and peer traffic flowing). Started through compute/worker-boot.mjs with workerData
 * `{ entry, backend }`; the message protocol is in messages.ts.
 *
 * It holds the GPT, AdamW and the TrainState, whose gradient buffer lives on a SharedArrayBuffer that main
 * all-reduces in place, and two readers of the prepared data folder: the training split (this rank's rows of
 * each global batch, from a resumable cursor) and the held-out split (always read from its start, so every
 * evaluation sees the same data).
 *
 * Every rank builds the model from the same seed (or the same checkpoint), reads the same shards with its own
 * row stripe and applies the same reduced gradient, so the replicas stay identical.
 */
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { parentPort, workerData, type TransferListItem } from 'node:worker_threads';
import { loadBackend, type BackendChoice } from '../compute/backend.ts';
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';
import type { FromWorker, ToWorker, ResumeState } from './messages.ts';

const port = parentPort!;
const { backend } = workerData as { backend: BackendChoice };

// Imported after the backend is chosen (loadBackend may pick tfjs-node), so every module sees the same tf.
const loaded = await loadBackend(backend);
const tf = loaded.tf;
const { GPT, flatFromStateDict, paramLayout, stateDict } = await import('../../model/gpt.ts');
const { AdamW, lrAt } = await import('../../model/optim.ts');
const { createTrainState, tokenBatch, trainStep } = await import('../../model/train-step.ts');
const { TokenShardReader } = await import('../../model/token-shard-reader.ts');
const { Tokenizer } = await import('../../model/tokenizer.ts');
const { exportHf } = await import('../../model/hf-format.ts');

type TrainState = import('../../model/train-step.ts').TrainState;
type Reader = InstanceType<typeof TokenShardReader>;

interface Job {
  spec: ResolvedJobSpec;
  rank: number;
  world: number;
  dataDir: string;
  state: TrainState;
  train: Reader;
  heldOut: Reader | null; // made on the first evaluation (a tiny held-out split only fails if evaluated)
  tokenizer: InstanceType<typeof Tokenizer>;
  tokenizerSha256: string;
  step: number;
}

let job: Job | null = null;
let awaitingReduce: (() => void) | null = null;

const post = (msg: FromWorker, transfer: TransferListItem[] = []) => port.postMessage(msg, transfer);

port.on('message', (msg: ToWorker) => {
  if (msg.type === 'reduced') {
    const done = awaitingReduce;
    awaitingReduce = null;
    if (done) done();
    else post({ type: 'failed', error: 'reduced arrived with no all-reduce pending' });
    return;
  }
  handle(msg).then(
    ([reply, transfer]) => post(reply, transfer),
    (err: unknown) => post({ type: 'failed', error: err instanceof Error ? err.message : String(err) }),
  );
});

async function handle(msg: Exclude<ToWorker, { type: 'reduced' }>): Promise<[FromWorker, TransferListItem[]]> {
  switch (msg.type) {
    case 'init':
      return init(msg.spec, msg.rank, msg.world, msg.dataDir, msg.seed, msg.resume);
    case 'step':
      return [await step(need(), msg.step), []];
    case 'eval':
      return [evaluate(need()), []];
    case 'export': {
      const j = need();
      const model = stateDict(j.state.params, j.state.model.layout); // copies
      const opt = j.state.optimizer.exportState(); // copies
      const transfer = [...Object.values(model), ...Object.values(opt.expAvg), ...Object.values(opt.expAvgSq)].map((t) => t.data.buffer as ArrayBuffer);
      return [{ type: 'exported', step: j.step, cursor: j.train.cursor, model, optimizer: { step: opt.step, expAvg: opt.expAvg, expAvgSq: opt.expAvgSq } }, transfer];
    }
    case 'exportHf': {
      const j = need();
      const files = exportHf(j.state.model, j.tokenizer, j.state.params);
      // Buffers may be views of a shared pool: copy each into its own ArrayBuffer and transfer that.
      const own: Record<string, Uint8Array> = {};
      for (const [name, bytes] of Object.entries(files)) own[name] = new Uint8Array(bytes);
      return [{ type: 'hf', files: own }, Object.values(own).map((b) => b.buffer as ArrayBuffer)];
    }
  }
}

function need(): Job {
  if (!job) throw new Error('the trainer worker has not been initialised');
  return job;
}

function init(spec: ResolvedJobSpec, rank: number, world: number, dataDir: string, seed: number, resume?: ResumeState): [FromWorker, TransferListItem[]] {
  if (job) throw new Error('the trainer worker is already initialised');
  const t = spec.training;
  const perRank = t.batchSize / world;
  if (!Number.isInteger(perRank) || !Number.isInteger(perRank / t.microBatches)) {
    throw new Error(`batchSize ${t.batchSize} does not split into ${world} ranks × ${t.microBatches} micro-batches`);
  }
  const tokenizerBytes = readFileSync(join(dataDir, 'tokenizer.json'));
  const tokenizerSha256 = createHash('sha256').update(tokenizerBytes).digest('hex');
  const tokenizer = Tokenizer.fromJSON(JSON.parse(tokenizerBytes.toString('utf8')));
  const train = new TokenShardReader(dataDir, {
    split: 'train', batchSize: perRank, seqLen: t.seqLen, rank, worldSize: world, tokenizerSha256, ...(resume ? { cursor: resume.cursor } : {}),
  });
  if (train.index.vocabSize > spec.model.vocabSize) {
    throw new Error(`the data's vocabulary has ${train.index.vocabSize} ids but model.vocabSize is ${spec.model.vocabSize}`);
  }
  const model = resume ? new GPT(spec.model, { flat: flatFromStateDict(resume.model, paramLayout(spec.model)) }) : new GPT(spec.model, { seed });
  const optimizer = new AdamW(model.layout.specs, { beta1: t.beta1, beta2: t.beta2, weightDecay: t.weightDecay });
  if (resume) optimizer.importState(resume.optimizer);
  const base = createTrainState(model, optimizer);
  const shared = new SharedArrayBuffer(base.grads.byteLength);
  const state: TrainState = { model: base.model, optimizer: base.optimizer, params: base.params, grads: new Float32Array(shared) };
  job = { spec, rank, world, dataDir, state, train, heldOut: null, tokenizer, tokenizerSha256, step: resume?.step ?? 0 };
  return [{ type: 'ready', grads: shared, params: model.layout.totalSize, backend: loaded.name, step: job.step, cursor: train.cursor }, []];
}

async function step(j: Job, n: number) {
  if (n !== j.step + 1) throw new Error(`asked for step ${n} after step ${j.step}`);
  const t = j.spec.training;
  const batch = j.train.next(); // this rank's rows of the global batch; the cursor moves on
  const rowsPer = batch.batch / t.microBatches;
  const row = t.seqLen + 1;
  const micro = Array.from({ length: t.microBatches }, (_, i) =>
    tokenBatch(batch.tokens.subarray(i * rowsPer * row, (i + 1) * rowsPer * row), rowsPer, t.seqLen));
  const lr = lrAt(n - 1, { maxLr: t.lr, minLr: t.minLr, warmupSteps: t.warmupSteps, decaySteps: t.steps });
  const r = await trainStep(j.state, micro, {
    lr,
    gradClip: t.gradClip,
    worldSize: j.world,
    ...(j.world > 1
      ? {
          reduceGrads: () =>
            new Promise<void>((resolve) => {
              awaitingReduce = resolve;
              post({ type: 'reduce' });
            }),
        }
      : {}),
  });
  j.step = n;
  return {
    type: 'stepped' as const,
    step: n,
    loss: r.loss,
    tokens: r.tokens,
    lr,
    gradNorm: r.gradNorm,
    computeMs: r.computeMs,
    reduceMs: r.reduceMs,
    updateMs: r.updateMs,
    cursor: j.train.cursor,
  };
}

/** Mean held-out loss over this rank's rows of the first evalBatches global batches of the held-out split. */
function evaluate(j: Job): FromWorker {
  const t = j.spec.training;
  if (j.heldOut === null) {
    try {
      j.heldOut = new TokenShardReader(j.dataDir, {
        split: 'heldOut', batchSize: t.batchSize / j.world, seqLen: t.seqLen, rank: j.rank, worldSize: j.world, tokenizerSha256: j.tokenizerSha256,
      });
    } catch (err) {
      // Too small a held-out split for one global batch: the same on every rank, so every rank skips alike
      // (NaN survives the all-reduce and main leaves evalLoss out) instead of failing a finished training.
      if ((err as { code?: string }).code === 'MDL_ERR_BATCH') return { type: 'evaluated', loss: Number.NaN, batches: 0, skipped: (err as Error).message };
      throw err;
    }
  }
  const rowsPer = t.batchSize / j.world / t.microBatches;
  const row = t.seqLen + 1;
  let cursor = { shard: 0, offset: 0 };
  let sum = 0, n = 0;
  for (let b = 0; b < t.evalBatches; b++) {
    const batch = j.heldOut.batchAt(cursor);
    cursor = batch.next;
    for (let i = 0; i < t.microBatches; i++) {
      const mb = tokenBatch(batch.tokens.subarray(i * rowsPer * row, (i + 1) * rowsPer * row), rowsPer, t.seqLen);
      const ids = tf.tensor2d(mb.ids, [mb.batch, mb.seq], 'int32');
      const targets = tf.tensor2d(mb.targets, [mb.batch, mb.seq], 'int32');
      const loss = j.state.model.loss(ids as never, targets as never);
      sum += loss.dataSync()[0]!;
      n++;
      tf.dispose([ids, targets, loss]);
    }
  }
  return { type: 'evaluated', loss: sum / n, batches: t.evalBatches };
}
