/**
 * The compute worker's job (worker thread; trainer-worker.ts imports this once the compute backend is loaded, so
 * the model modules here see the same TensorFlow.js): what `init` builds and every later request works on.
 *
 * `initJob` allocates the shard's parameters and gradient on SharedArrayBuffers, fills the parameters (from the
 * seed, a LoRA base, or the checkpoint to resume from), opens the data readers, and sets up the tensor-parallel
 * channel: a scratch buffer and a flag word through which the worker asks main for an all-reduce and blocks until
 * it is done (messages.ts). A LoRA job's frozen base and a dpo reference or distill teacher are read and checked
 * against the job's model here.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { dataFormatOf, rowsPerExample, type ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { coordsOf, type Coords } from '../../protocol/layout.ts';
import { chunkRange } from '../../protocol/partition.ts';
import { StageModel } from '../../model/stage-model.ts';
import { extractShard, initShardParams, shardLayout, type ShardLayout } from '../../model/shard-layout.ts';
import { AdamW } from '../../model/optim.ts';
import type { OuterSettings } from '../../model/diloco.ts';
import type { TokenBatch as ModelTokenBatch } from '../../model/train-step.ts';
import { TokenShardReader } from '../../model/token-shard-reader.ts';
import { ExampleReader } from '../../model/examples.ts';
import { GPT } from '../../model/gpt.ts';
import { initParams, paramLayout, unflatten } from '../../model/params.ts';
import { loraLayout, loraScale, loraShardLayout, loraSpec, partialSumGrads } from '../../model/lora.ts';
import { importHf } from '../../model/hf-format.ts';
import { AgentError } from '../errors.ts';
import type { FromWorker, Placement, Ready, ResumeState } from './messages.ts';
import { fillFromResume } from './resume-checkpoint.ts';

type Reader = TokenShardReader | ExampleReader;
/** One micro-batch: ids and targets [rows, seq]; with examples, which targets are learned ([rows, seq]). */
export type TokenBatch = ModelTokenBatch & { weights?: Float32Array };

/** How long a tensor-parallel all-reduce may take before the worker gives up (main's ring has its own timeout). */
const TP_WAIT_MS = 10 * 60_000;

/** A job as the worker holds it, from `init` on. */
export interface Job {
  spec: ResolvedJobSpec;
  placement: Placement;
  coords: Coords;
  dataDir: string;
  tokenizerSha256: string;
  model: StageModel;
  optimizer: AdamW;
  range: [number, number]; // what AdamW updates here
  params: Float32Array; // shared with main
  grads: Float32Array; // shared with main
  rows: number; // rows per micro-batch (examples × rowsPerExample)
  examples: boolean; // the data are examples (model/examples.ts), not token shards
  frozen: GPT | null; // dpo's reference or distill's teacher, on the last stage only
  tp: { allReduce(x: Float32Array): void; chunk: number }; // the tensor-parallel group (size 1: no-op)
  partialSums: Array<[number, number]>; // LoRA factors whose gradient is a partial sum over the TP group: [offset, size]
  train: Reader;
  heldOut: Reader | null;
  micro: TokenBatch[]; // this step's micro-batches
  backwards: number; // of them back-propagated so far (a GPU backend's gradients are read once, after the last)
  inputs: Map<number, Float32Array>; // activations received for micro-batches whose backward is still to come
  evalMicro: TokenBatch[];
  step: number;
  outer: OuterState | null; // DiLoCo (training.diloco); null: plain data parallelism
}

/**
 * DiLoCo's outer optimizer on this replica (model/diloco.ts): the outer weights the round started from and the outer
 * momentum, both flat like `params` and the same on every replica, since each applies the same averaged
 * pseudo-gradient. Two more copies of the trainable parameters (GPT-2-small: 2 × 0.5 GB).
 */
export interface OuterState {
  weights: Float32Array;
  momentum: Float32Array;
  settings: OuterSettings;
  steps: number; // outer steps taken in the job so far
}

/** Where `init`'s files are: the prepared data, the opened resume checkpoint, the frozen and base models' folders. */
export interface JobFiles {
  dataDir: string;
  resume?: ResumeState;
  frozenDir?: string;
  baseDir?: string;
}

/** The worker's side of the thread: its backend's name (for `ready`) and how it posts to main (the `tp` requests). */
export interface WorkerSide {
  backendName: string;
  post(msg: FromWorker): void;
}

/** Builds the job of `init` and the `ready` answer that hands main the shared buffers. */
export async function initJob(spec: ResolvedJobSpec, placement: Placement, files: JobFiles, side: WorkerSide): Promise<{ job: Job; ready: Ready }> {
  const { dataDir, resume, frozenDir, baseDir } = files;
  const post = side.post;
  const t = spec.training;
  const { layout, stages, microBatches, zero, rank } = placement;
  const coords = coordsOf(rank, layout);
  const perReplica = t.batchSize / layout.data; // whole, in whole micro-batches: job-runner.ts checkPlan checked
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
    throw new AgentError('AGT_ERR_JOB_INPUT', `the data's vocabulary has ${train.index.vocabSize} ids but model.vocabSize is ${spec.model.vocabSize}`);
  }

  const params = new Float32Array(new SharedArrayBuffer(trainable.totalSize * 4));
  const range: [number, number] = zero ? (({ start, end }) => [start, end] as [number, number])(chunkRange(trainable.totalSize, layout.data, coords.dp)) : [0, trainable.totalSize];
  // AdamW's moments exist for what trains only: with LoRA, the adapter's factors.
  const optimizer = new AdamW(trainable.specs, { beta1: t.beta1, beta2: t.beta2, weightDecay: t.weightDecay }, { range: { start: range[0], end: range[1] } });
  // DiLoCo's outer momentum: from the checkpoint when it has one, else zero (model/diloco.ts).
  const outerMomentum = t.diloco ? new Float32Array(trainable.totalSize) : undefined;
  if (resume) {
    // Tensor by tensor into our own buffers; the moments' arrays become the optimizer's (GPT-2-small's are 1 GB).
    const m = new Float32Array(range[1] - range[0]), v = new Float32Array(range[1] - range[0]);
    await fillFromResume(resume, trainable.specs, params, range, m, v, outerMomentum);
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
      if (x.length > tpView.length) throw new AgentError('AGT_ERR_TRAINER', `tensor-parallel all-reduce of ${x.length} floats exceeds the ${tpView.length}-float buffer`);
      tpView.set(x);
      Atomics.store(flag, 0, 0);
      post({ type: 'tp', elems: x.length });
      // Wait until main stores 1 or 2; re-check after every wake-up rather than trusting one (the usual loop).
      const deadline = performance.now() + TP_WAIT_MS;
      while (Atomics.load(flag, 0) === 0) {
        const left = deadline - performance.now();
        if (left <= 0) throw new AgentError('AGT_ERR_COLLECTIVE_TIMEOUT', `tensor-parallel all-reduce did not finish within ${TP_WAIT_MS} ms`);
        Atomics.wait(flag, 0, 0, left);
      }
      if (Atomics.load(flag, 0) !== 1) throw new AgentError('AGT_ERR_TRAINER', 'tensor-parallel all-reduce failed (see the agent log)');
      x.set(tpView.subarray(0, x.length));
    },
  };
  const model = lora
    ? new StageModel(spec.model, shard, base!, tp, { layout: trainable, flat: params, scale: loraScale(lora), dropout: lora.dropout })
    : new StageModel(spec.model, shard, params, tp);
  const frozen = model.hasHead && frozenDir ? loadFrozen(spec, frozenDir) : null;
  if (model.hasHead && (spec.kind === 'dpo' || spec.kind === 'distill') && !frozen) throw new AgentError('AGT_ERR_JOB_INPUT', `a ${spec.kind} job needs its ${spec.kind === 'dpo' ? 'reference' : 'teacher'} model on the last stage`);
  const tied = layout.pipeline > 1 ? trainable.byName.get('wte.weight') : undefined; // frozen under LoRA: nothing to tie
  const partialSums = (lora ? partialSumGrads(trainable) : []).map((name) => [trainable.byName.get(name)!.offset, trainable.byName.get(name)!.size] as [number, number]);
  const job: Job = {
    spec, placement, coords, dataDir, tokenizerSha256, model, optimizer, range, params, grads, rows, examples, frozen, train,
    tp: { allReduce: (x) => tp.allReduce(x), chunk: tpView.length }, partialSums,
    heldOut: null, micro: [], backwards: 0, inputs: new Map(), evalMicro: [], step: resume?.step ?? 0,
    // A DiLoCo job resumes only from a synchronisation step (checkpoints fall on them): its weights are the outer ones.
    outer: t.diloco && outerMomentum ? {
      weights: params.slice(), momentum: outerMomentum,
      settings: { lr: t.diloco.outerLr, momentum: t.diloco.outerMomentum, nesterov: t.diloco.nesterov },
      steps: Math.floor((resume?.step ?? 0) / t.diloco.innerSteps),
    } : null,
  };
  const ready: Ready = {
    type: 'ready', params: params.buffer as SharedArrayBuffer, grads: grads.buffer as SharedArrayBuffer, tpData, tpFlag,
    paramCount: trainable.totalSize, optimizerRange: range, tiedRange: tied ? [tied.offset, tied.offset + tied.size] : null,
    backend: side.backendName, step: job.step, cursor: train.cursor,
  };
  return { job, ready };
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
  if (!dir) throw new AgentError('AGT_ERR_JOB_INPUT', 'a LoRA job needs its base model (job.start names no base files)');
  const loaded = loadModelDir(dir);
  const c = loaded.config, m = spec.model;
  if (c.vocabSize !== m.vocabSize || c.nLayer !== m.nLayer || c.nEmbd !== m.nEmbd || c.nHead !== m.nHead || c.nCtx !== m.nCtx) {
    throw new AgentError('AGT_ERR_JOB_INPUT', `the LoRA base's config ${JSON.stringify(c)} is not the job's model ${JSON.stringify(m)}`);
  }
  const views = unflatten(loaded.params, paramLayout(c));
  return extractShard((name) => views.get(name)!, shard);
}

/**
 * The frozen model of a dpo (reference) or distill (teacher) job, from a registry version's files. It must read
 * the same token ids (the same vocabulary) and, for a reference, be the very model the job starts from.
 */
function loadFrozen(spec: ResolvedJobSpec, dir: string): GPT {
  const loaded = loadModelDir(dir);
  const c = loaded.config, m = spec.model;
  if (c.vocabSize !== m.vocabSize) throw new AgentError('AGT_ERR_JOB_INPUT', `the ${spec.kind === 'dpo' ? 'reference' : 'teacher'} has vocabulary ${c.vocabSize}, the job's model ${m.vocabSize}: they must read the same ids`);
  if (c.nCtx < spec.training.seqLen) throw new AgentError('AGT_ERR_JOB_INPUT', `the frozen model's context (${c.nCtx}) is shorter than training.seqLen ${spec.training.seqLen}`);
  if (spec.kind === 'dpo' && (c.nLayer !== m.nLayer || c.nEmbd !== m.nEmbd || c.nHead !== m.nHead || c.nCtx !== m.nCtx)) {
    throw new AgentError('AGT_ERR_JOB_INPUT', 'the dpo reference must have the job\'s model config (it is the version the job starts from)');
  }
  return new GPT(c, { flat: loaded.params });
}
