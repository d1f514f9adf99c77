/**
 * The compute side of one rank of a training job, in a worker thread (wasm compute blocks its thread, and the main
 * thread must keep heartbeats and peer traffic flowing). Started through compute/worker-boot.mjs with workerData
 * `{ entry, backend }`; the message protocol and the shared-memory hand-offs are in messages.ts.
 *
 * It holds this rank's StageModel (model/stage-model.ts: its pipeline stage's blocks, cut to its tensor-parallel
 * shard), AdamW over the shard (or, with ZeRO-1, over this data-parallel rank's range of it), the shard's
 * parameters and gradient on SharedArrayBuffers, and two readers of the prepared data folder: the training split
 * (this data-parallel replica's rows of each global batch, from a resumable cursor) and the held-out split.
 *
 * Every rank of a stage shard builds the same parameters (from the seed through initShardParams, or from the same
 * checkpoint) and applies the same reduced gradient, so the data-parallel replicas stay identical.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { parentPort, workerData, type TransferListItem } from 'node:worker_threads';
import { loadBackend, type BackendChoice } from '../../model/compute/backend.ts';
import { dataFormatOf, rowsPerExample, type ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { coordsOf, type Coords } from '../../protocol/layout.ts';
import type { FromWorker, Placement, ResumeState, ToWorker } from './messages.ts';
import type { JsonValue } from '../../model/checkpoint.ts';
import { fillFromResume, loadResume, shardOf } from './resume-checkpoint.ts';

const port = parentPort!;
const { backend } = workerData as { backend: BackendChoice };

// Imported after the backend is chosen (loadBackend may pick tfjs-node), so every module sees the same tf.
const loaded = await loadBackend(backend);
const tf = loaded.tf;
const { StageModel } = await import('../../model/stage-model.ts');
const { extractShard, initShardParams, shardLayout } = await import('../../model/shard-layout.ts');
const { AdamW, lrAt } = await import('../../model/optim.ts');
const { tokenBatch } = await import('../../model/train-step.ts');
const { TokenShardReader } = await import('../../model/token-shard-reader.ts');
const { ExampleReader } = await import('../../model/examples.ts');
const { GPT } = await import('../../model/gpt.ts');
const { initParams, paramLayout, unflatten } = await import('../../model/params.ts');
const { loraLayout, loraScale, loraShardLayout, loraSpec, partialSumGrads } = await import('../../model/lora.ts');
const { importHf } = await import('../../model/hf-format.ts');
const { writeCheckpointFiles } = await import('../../model/checkpoint-files.ts');
const { rowLogprobs } = await import('../../model/objectives.ts');
const { chunkRange } = await import('../../protocol/partition.ts');
const { copyOf, takeValues } = await import('../../model/tensor-values.ts');

type Reader = InstanceType<typeof TokenShardReader> | InstanceType<typeof ExampleReader>;
/** One micro-batch: ids and targets [rows, seq]; with examples, which targets are learned ([rows, seq]). */
type TokenBatch = import('../../model/train-step.ts').TokenBatch & { weights?: Float32Array };
type Objective = import('../../model/objectives.ts').Objective;
type ShardLayout = import('../../model/shard-layout.ts').ShardLayout;

/** How long a tensor-parallel all-reduce may take before the worker gives up (main's ring has its own timeout). */
const TP_WAIT_MS = 10 * 60_000;

interface Job {
  spec: ResolvedJobSpec;
  placement: Placement;
  coords: Coords;
  dataDir: string;
  tokenizerSha256: string;
  model: InstanceType<typeof StageModel>;
  optimizer: InstanceType<typeof AdamW>;
  range: [number, number]; // what AdamW updates here
  params: Float32Array; // shared with main
  grads: Float32Array; // shared with main
  rows: number; // rows per micro-batch (examples × rowsPerExample)
  examples: boolean; // the data are examples (model/examples.ts), not token shards
  frozen: InstanceType<typeof GPT> | null; // dpo's reference or distill's teacher, on the last stage only
  tp: { allReduce(x: Float32Array): void; chunk: number }; // the tensor-parallel group (size 1: no-op)
  partialSums: Array<[number, number]>; // LoRA factors whose gradient is a partial sum over the TP group: [offset, size]
  train: Reader;
  heldOut: Reader | null;
  micro: TokenBatch[]; // this step's micro-batches
  backwards: number; // of them back-propagated so far (a GPU backend's gradients are read once, after the last)
  inputs: Map<number, Float32Array>; // activations received for micro-batches whose backward is still to come
  evalMicro: TokenBatch[];
  step: number;
}

let job: Job | null = null;

const post = (msg: FromWorker, transfer: TransferListItem[] = []) => port.postMessage(msg, transfer);

// Messages are handled one at a time, in order: a handler may await (reading a checkpoint, a GPU backend's
// tensors), and the next message waits for it.
let queue: Promise<void> = Promise.resolve();
port.on('message', (msg: ToWorker) => {
  queue = queue.then(async () => {
    try {
      const [reply, transfer] = await handle(msg);
      post(reply, transfer);
    } catch (err) {
      post({ type: 'failed', error: err instanceof Error ? err.message : String(err) });
    }
  });
});

async function handle(msg: ToWorker): Promise<[FromWorker, TransferListItem[]]> {
  switch (msg.type) {
    case 'init': {
      const { spec, placement, dataDir, resume, frozenDir, baseDir } = msg;
      if (!resume) return [await init(spec, placement, dataDir, undefined, frozenDir, baseDir), []];
      const state = await loadResume(resume.dir, resume.step, spec, shardOf(spec, placement));
      try {
        return [await init(spec, placement, dataDir, state, frozenDir, baseDir), []];
      } catch (err) {
        await state.files.close(); // init closes the files once it has read them; if it fails first, here
        throw err;
      }
    }
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
    case 'evalBegin':
      return [evalBegin(need()), []];
    case 'evalFwd':
      return evalForward(need(), msg.mb, msg.acts);
    case 'export': {
      const j = need();
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
  }
}

/**
 * Writes the shard's checkpoint into `dir` straight from the live parameters and AdamW moments, tensor by tensor
 * (model/checkpoint-files.ts), hashing as it goes: no snapshot copy. Main waits for the answer before the next
 * step (nothing changes meanwhile) and then uploads the files while training goes on.
 */
async function spill(j: Job, dir: string, state: Record<string, JsonValue>): Promise<FromWorker> {
  if (j.placement.zero && j.placement.layout.data > 1) throw new Error('a ZeRO-1 rank holds part of the moments: its checkpoint goes through export');
  const layout = j.model.trainable;
  const { step: optimizerStep, expAvg, expAvgSq } = j.optimizer.viewFlat();
  const files = await writeCheckpointFiles(dir, {
    step: j.step,
    weights: layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape }] as const),
    moments: layout.specs.map((s) => s.name),
    optimizerStep,
    state: { ...state, cursor: { shard: j.train.cursor.shard, offset: j.train.cursor.offset } },
    tensor: (group, name) => {
      const s = layout.byName.get(name)!;
      const from = group === 'model' ? j.params : group === 'expAvg' ? expAvg : expAvgSq;
      return Promise.resolve(from.subarray(s.offset, s.offset + s.size));
    },
  });
  return { type: 'spilled', step: j.step, files };
}

function need(): Job {
  if (!job) throw new Error('the trainer worker has not been initialised');
  return job;
}

async function init(spec: ResolvedJobSpec, placement: Placement, dataDir: string, resume?: ResumeState, frozenDir?: string, baseDir?: string): Promise<FromWorker> {
  if (job) throw new Error('the trainer worker is already initialised');
  const t = spec.training;
  const { layout, stages, microBatches, zero, rank } = placement;
  const coords = coordsOf(rank, layout);
  const perReplica = t.batchSize / layout.data;
  if (!Number.isInteger(perReplica) || !Number.isInteger(perReplica / microBatches)) {
    throw new Error(`batchSize ${t.batchSize} does not split into ${layout.data} replicas × ${microBatches} micro-batches`);
  }
  const [firstLayer, endLayer] = stages[coords.pp]!;
  const shard = shardLayout(spec.model, { stage: coords.pp, stages: layout.pipeline, firstLayer, endLayer, tpRank: coords.tp, tpSize: layout.tensor });
  // With LoRA the base is frozen and read from the init version; what trains (and is checkpointed) is the adapter.
  const lora = spec.lora ? loraSpec(spec.lora, spec.model) : null;
  const trainable = lora ? loraShardLayout(spec.model, lora, shard.shard) : shard;
  const base = lora ? loadBase(spec, baseDir, shard) : null;

  const tokenizerBytes = readFileSync(join(dataDir, 'tokenizer.json'));
  const tokenizerSha256 = createHash('sha256').update(tokenizerBytes).digest('hex');
  const examples = dataFormatOf(spec) !== 'text';
  const readerOptions = { split: 'train', batchSize: perReplica, seqLen: t.seqLen, rank: coords.dp, worldSize: layout.data, tokenizerSha256, ...(resume ? { cursor: resume.cursor } : {}) } as const;
  const train = examples ? new ExampleReader(dataDir, readerOptions) : new TokenShardReader(dataDir, readerOptions);
  if (train.index.vocabSize > spec.model.vocabSize) {
    throw new Error(`the data's vocabulary has ${train.index.vocabSize} ids but model.vocabSize is ${spec.model.vocabSize}`);
  }

  const params = new Float32Array(new SharedArrayBuffer(trainable.totalSize * 4));
  const range: [number, number] = zero ? (({ start, end }) => [start, end] as [number, number])(chunkRange(trainable.totalSize, layout.data, coords.dp)) : [0, trainable.totalSize];
  // AdamW's moments exist for what trains only: with LoRA, the adapter's factors.
  const optimizer = new AdamW(trainable.specs, { beta1: t.beta1, beta2: t.beta2, weightDecay: t.weightDecay }, { range: { start: range[0], end: range[1] } });
  if (resume) {
    // Tensor by tensor into our own buffers; the moments' arrays become the optimizer's (GPT-2-small's are 1 GB).
    const m = new Float32Array(range[1] - range[0]), v = new Float32Array(range[1] - range[0]);
    await fillFromResume(resume, trainable.specs, params, range, m, v);
    optimizer.importFlat({ step: resume.files.optimizerStep, expAvg: m, expAvgSq: v }, { adopt: true });
  } else if (lora) {
    const views = unflatten(initParams(loraLayout(spec.model, lora), t.seed), loraLayout(spec.model, lora));
    params.set(extractShard((name) => views.get(name)!, trainable));
  } else params.set(initShardParams(spec.model, shard, t.seed));
  const grads = new Float32Array(new SharedArrayBuffer(trainable.totalSize * 4));

  // Tensor-parallel scratch: one micro-batch of activations, [rows·seqLen, d].
  const rows = (perReplica / microBatches) * rowsPerExample(spec);
  const tpData = new SharedArrayBuffer(Math.max(1, rows * t.seqLen * spec.model.nEmbd) * 4);
  const tpFlag = new SharedArrayBuffer(4);
  const tpView = new Float32Array(tpData), flag = new Int32Array(tpFlag);
  const tp = {
    size: layout.tensor,
    allReduce(x: Float32Array): void {
      if (x.length > tpView.length) throw new Error(`tensor-parallel all-reduce of ${x.length} floats exceeds the ${tpView.length}-float buffer`);
      tpView.set(x);
      Atomics.store(flag, 0, 0);
      post({ type: 'tp', elems: x.length });
      // Wait until main stores 1 or 2; re-check after every wake-up rather than trusting one (the usual loop).
      const deadline = performance.now() + TP_WAIT_MS;
      while (Atomics.load(flag, 0) === 0) {
        const left = deadline - performance.now();
        if (left <= 0) throw new Error(`tensor-parallel all-reduce did not finish within ${TP_WAIT_MS} ms`);
        Atomics.wait(flag, 0, 0, left);
      }
      if (Atomics.load(flag, 0) !== 1) throw new Error('tensor-parallel all-reduce failed (see the agent log)');
      x.set(tpView.subarray(0, x.length));
    },
  };
  const model = lora
    ? new StageModel(spec.model, shard, base!, tp, { layout: trainable, flat: params, scale: loraScale(lora), dropout: lora.dropout })
    : new StageModel(spec.model, shard, params, tp);
  const frozen = model.hasHead && frozenDir ? loadFrozen(spec, frozenDir) : null;
  if (model.hasHead && (spec.kind === 'dpo' || spec.kind === 'distill') && !frozen) throw new Error(`a ${spec.kind} job needs its ${spec.kind === 'dpo' ? 'reference' : 'teacher'} model on the last stage`);
  const tied = layout.pipeline > 1 ? trainable.byName.get('wte.weight') : undefined; // frozen under LoRA: nothing to tie
  const partialSums = (lora ? partialSumGrads(trainable) : []).map((name) => [trainable.byName.get(name)!.offset, trainable.byName.get(name)!.size] as [number, number]);
  job = {
    spec, placement, coords, dataDir, tokenizerSha256, model, optimizer, range, params, grads, rows, examples, frozen, train,
    tp: { allReduce: (x) => tp.allReduce(x), chunk: tpView.length }, partialSums,
    heldOut: null, micro: [], backwards: 0, inputs: new Map(), evalMicro: [], step: resume?.step ?? 0,
  };
  return {
    type: 'ready', params: params.buffer as SharedArrayBuffer, grads: grads.buffer as SharedArrayBuffer, tpData, tpFlag,
    paramCount: trainable.totalSize, optimizerRange: range, tiedRange: tied ? [tied.offset, tied.offset + tied.size] : null,
    backend: loaded.name, step: job.step, cursor: train.cursor,
  };
}

/** A registry version's model as the agent downloaded it into `dir` (weights in float32 or INT8). */
function loadModelDir(dir: string) {
  const read = (name: string) => (existsSync(join(dir, name)) ? readFileSync(join(dir, name)) : undefined);
  return importHf(Object.fromEntries(['config.json', 'model.safetensors', 'model.int8.safetensors', 'tokenizer.json'].map((n) => [n, read(n)])));
}

/**
 * A LoRA job's frozen base, cut to this shard: the init version's weights (the agent downloaded its files). It
 * must be the job's model: the adapter's shapes and the shard bounds are the job's.
 */
function loadBase(spec: ResolvedJobSpec, dir: string | undefined, shard: ShardLayout): Float32Array {
  if (!dir) throw new Error('a LoRA job needs its base model (job.start names no base files)');
  const loaded = loadModelDir(dir);
  const c = loaded.config, m = spec.model;
  if (c.vocabSize !== m.vocabSize || c.nLayer !== m.nLayer || c.nEmbd !== m.nEmbd || c.nHead !== m.nHead || c.nCtx !== m.nCtx) {
    throw new Error(`the LoRA base's config ${JSON.stringify(c)} is not the job's model ${JSON.stringify(m)}`);
  }
  const views = unflatten(loaded.params, paramLayout(c));
  return extractShard((name) => views.get(name)!, shard);
}

/**
 * The frozen model of a dpo (reference) or distill (teacher) job, from a registry version's files. It must read
 * the same token ids (the same vocabulary) and, for a reference, be the very model the job starts from.
 */
function loadFrozen(spec: ResolvedJobSpec, dir: string): InstanceType<typeof GPT> {
  const loaded = loadModelDir(dir);
  const c = loaded.config, m = spec.model;
  if (c.vocabSize !== m.vocabSize) throw new Error(`the ${spec.kind === 'dpo' ? 'reference' : 'teacher'} has vocabulary ${c.vocabSize}, the job's model ${m.vocabSize}: they must read the same ids`);
  if (c.nCtx < spec.training.seqLen) throw new Error(`the frozen model's context (${c.nCtx}) is shorter than training.seqLen ${spec.training.seqLen}`);
  if (spec.kind === 'dpo' && (c.nLayer !== m.nLayer || c.nEmbd !== m.nEmbd || c.nHead !== m.nHead || c.nCtx !== m.nCtx)) {
    throw new Error('the dpo reference must have the job\'s model config (it is the version the job starts from)');
  }
  return new GPT(c, { flat: loaded.params });
}

/** Splits this replica's rows of a global batch (and their target weights, with examples) into micro-batches of `rows` rows. */
function microBatchesOf(tokens: Int32Array, count: number, rows: number, seqLen: number, weights?: Float32Array): TokenBatch[] {
  const row = seqLen + 1;
  return Array.from({ length: count }, (_, i) => ({
    ...tokenBatch(tokens.subarray(i * rows * row, (i + 1) * rows * row), rows, seqLen),
    ...(weights ? { weights: weights.subarray(i * rows * seqLen, (i + 1) * rows * seqLen) } : {}),
  }));
}

/**
 * What the last stage optimises for micro-batch `mb` (model/objectives.ts). The frozen model's forward runs here,
 * without a tape: dpo needs the reference's log-probability of each row, distill the teacher's logits.
 */
async function objectiveFor(j: Job, mb: TokenBatch): Promise<Objective> {
  const weights = mb.weights;
  const { kind } = j.spec;
  if (kind !== 'dpo' && kind !== 'distill') return { kind: 'lm', ...(weights ? { weights } : {}) };
  const frozen = j.frozen!;
  const B = mb.batch, T = mb.seq, V = frozen.config.vocabSize;
  const logits = tf.tidy(() => frozen.forward(tf.tensor2d(mb.ids, [B, T], 'int32')).reshape([B * T, V]) as ReturnType<typeof tf.tensor2d>);
  try {
    if (kind === 'dpo') {
      if (!weights) throw new Error('dpo needs example data (chosen/rejected pairs)');
      return { kind: 'dpo', weights, refLogp: await takeValues(rowLogprobs(logits, mb.targets, weights, B, T)), beta: j.spec.dpo!.beta, rpoAlpha: j.spec.dpo!.rpoAlpha ?? 0 };
    }
    const { temperature, alpha } = j.spec.distill!;
    return { kind: 'distill', teacherLogits: await copyOf(logits), temperature, alpha, ...(weights ? { weights } : {}) };
  } finally {
    logits.dispose();
  }
}

function begin(j: Job, n: number): FromWorker {
  if (n !== j.step + 1) throw new Error(`asked for step ${n} after step ${j.step}`);
  const t = j.spec.training;
  const batch = j.train.next(); // every stage reads it, so every stage's cursor moves alike
  j.micro = microBatchesOf(batch.tokens, j.placement.microBatches, j.rows, t.seqLen, 'weights' in batch ? batch.weights : undefined);
  for (const mb of j.micro) checkIds(mb, j.spec.model.vocabSize);
  j.inputs.clear();
  j.backwards = 0;
  j.model.discardGrads();
  j.grads.fill(0); // j.step becomes n when the update is applied
  return { type: 'begun', lr: lrAt(n - 1, { maxLr: t.lr, minLr: t.minLr, warmupSteps: t.warmupSteps, decaySteps: t.steps }) };
}

function checkIds(mb: TokenBatch, vocabSize: number): void {
  // an id outside the vocabulary would one-hot to a zero row and silently train on nothing
  for (const arr of [mb.ids, mb.targets]) {
    for (let i = 0; i < arr.length; i++) if (!(arr[i]! >= 0 && arr[i]! < vocabSize)) throw new Error(`token ${arr[i]} is outside the vocabulary [0, ${vocabSize})`);
  }
}

function stageInput(j: Job, mb: TokenBatch, acts: Float32Array | undefined) {
  if (j.model.hasEmbed) return { ids: mb.ids };
  if (!acts) throw new Error(`stage ${j.coords.pp} needs the previous stage's activations`);
  return { acts };
}

async function forward(j: Job, i: number, acts?: Float32Array): Promise<[FromWorker, TransferListItem[]]> {
  const mb = j.micro[i];
  if (!mb) throw new Error(`no micro-batch ${i} in this step`);
  const t0 = performance.now();
  const input = stageInput(j, mb, acts);
  if (acts) j.inputs.set(i, acts);
  if (j.model.hasHead) return [{ type: 'fwdDone', busyMs: performance.now() - t0 }, []]; // the backward does it all
  const out = await j.model.forward(input, mb.batch, mb.seq, dropoutSeed(j, i));
  return [{ type: 'fwdDone', out, busyMs: performance.now() - t0 }, [out.buffer as ArrayBuffer]];
}

async function backward(j: Job, i: number, gradOut?: Float32Array): Promise<[FromWorker, TransferListItem[]]> {
  const mb = j.micro[i];
  if (!mb) throw new Error(`no micro-batch ${i} in this step`);
  const t0 = performance.now();
  const input = stageInput(j, mb, j.inputs.get(i));
  j.inputs.delete(i);
  if (!j.model.hasHead && !gradOut) throw new Error(`stage ${j.coords.pp} needs the next stage's gradient`);
  const upstream = j.model.hasHead ? { targets: mb.targets, scale: 1 / j.placement.microBatches, objective: await objectiveFor(j, mb) } : { gradOut: gradOut! };
  // The gradients go into j.grads by the end of the step's last micro-batch: main all-reduces them next.
  const last = ++j.backwards === j.micro.length;
  const r = await j.model.backward(input, mb.batch, mb.seq, upstream, j.grads, dropoutSeed(j, i), { flush: last });
  const reply: FromWorker = { type: 'bwdDone', tokens: mb.batch * mb.seq, busyMs: performance.now() - t0, ...r };
  return [reply, r.gradIn ? [r.gradIn.buffer as ArrayBuffer] : []];
}

/** Adapter dropout's seed for micro-batch `i` of this step: one per replica, equal across a stage's TP ranks and its two passes. */
function dropoutSeed(j: Job, i: number): number {
  return ((j.step + 1) * 4099 + i * 31 + j.coords.dp) % 2 ** 31;
}

/**
 * After main summed the gradient over the data-parallel ranks (all of it, or with ZeRO-1 only our range): divide
 * by their number, then sum the squares this rank is responsible for in the global norm — each parameter element
 * exactly once over the whole job: tensor-parallel replicas and the tied head copy are not counted
 * (countsForNorm), and of the data-parallel replicas only rank 0 counts, or with ZeRO-1 each rank its range.
 */
function norm(j: Job): FromWorker {
  const d = j.placement.layout.data;
  const [lo, hi] = j.range;
  const g = j.grads;
  if (d > 1) for (let i = lo; i < hi; i++) g[i] = g[i]! / d;
  // A replicated LoRA factor's local gradient is one rank's term of a sum over the TP group (lora.ts
  // LORA_TP_RULES): sum it, in the same order on every rank of the group (their ranges are equal).
  for (const [offset, size] of j.partialSums) {
    const a = Math.max(lo, offset), b = Math.min(hi, offset + size);
    for (let x = a; x < b; x += j.tp.chunk) j.tp.allReduce(g.subarray(x, Math.min(b, x + j.tp.chunk)));
  }
  let sumsq = 0;
  if (j.placement.zero || j.coords.dp === 0) {
    for (const s of j.model.layout.specs) {
      if (!s.countsForNorm) continue;
      const a = Math.max(lo, s.offset), b = Math.min(hi, s.offset + s.size);
      for (let i = a; i < b; i++) sumsq += g[i]! * g[i]!;
    }
  }
  return { type: 'normed', sumsq };
}

function update(j: Job, gradNorm: number): FromWorker {
  const t0 = performance.now();
  const t = j.spec.training;
  const [lo, hi] = j.range;
  if (t.gradClip > 0) {
    const coeff = t.gradClip / (gradNorm + 1e-6); // torch.nn.utils.clip_grad_norm_, as optim.ts clipGradNorm
    if (coeff < 1) for (let i = lo; i < hi; i++) j.grads[i] = j.grads[i]! * coeff;
  }
  const lr = lrAt(j.step, { maxLr: t.lr, minLr: t.minLr, warmupSteps: t.warmupSteps, decaySteps: t.steps });
  j.optimizer.update(j.params, j.grads, lr);
  j.step++;
  if (!j.placement.zero || j.placement.layout.data === 1) j.model.writeParams(j.params);
  return { type: 'updated', updateMs: performance.now() - t0 };
}

function evalBegin(j: Job): FromWorker {
  const t = j.spec.training;
  if (j.heldOut === null) {
    try {
      const options = {
        split: 'heldOut', batchSize: t.batchSize / j.placement.layout.data, seqLen: t.seqLen, rank: j.coords.dp, worldSize: j.placement.layout.data,
        tokenizerSha256: j.tokenizerSha256,
      } as const;
      j.heldOut = j.examples ? new ExampleReader(j.dataDir, options) : new TokenShardReader(j.dataDir, options);
    } catch (err) {
      // Too small a held-out split for one global batch: the same on every rank, so every rank skips alike
      // instead of failing a finished training.
      if ((err as { code?: string }).code === 'MDL_ERR_BATCH') return { type: 'evalBegun', microBatches: 0, skipped: (err as Error).message };
      throw err;
    }
  }
  let cursor = { shard: 0, offset: 0 }; // every evaluation sees the same held-out data
  j.evalMicro = [];
  for (let b = 0; b < t.evalBatches; b++) {
    const batch = j.heldOut.batchAt(cursor);
    cursor = batch.next;
    j.evalMicro.push(...microBatchesOf(batch.tokens, j.placement.microBatches, j.rows, t.seqLen, 'weights' in batch ? batch.weights : undefined));
  }
  return { type: 'evalBegun', microBatches: j.evalMicro.length };
}

async function evalForward(j: Job, i: number, acts?: Float32Array): Promise<[FromWorker, TransferListItem[]]> {
  const mb = j.evalMicro[i];
  if (!mb) throw new Error(`no held-out micro-batch ${i}`);
  const input = stageInput(j, mb, acts);
  if (j.model.hasHead) return [{ type: 'evalDone', loss: await j.model.loss(input, mb.batch, mb.seq, mb.targets, await objectiveFor(j, mb)) }, []];
  const out = await j.model.forward(input, mb.batch, mb.seq);
  return [{ type: 'evalDone', out }, [out.buffer as ArrayBuffer]];
}
