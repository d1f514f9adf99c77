/**
 * The training job spec: what `POST /api/jobs` and `coordinator submit job.json` accept, and what the coordinator
 * hands each agent in `job.start` (so it lives with the wire, in protocol/). One TypeBox schema gives
 * the TypeScript type and the JSON Schema; `validateJobSpec` adds the rules a schema cannot say (heads divide the
 * width, the global batch divides over the data-parallel ranks and micro-batches, …) and returns every problem
 * at once, each naming its field, so a 400 tells the user everything to fix in one go.
 */
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';

const PositiveInt = (max: number, description: string) => Type.Integer({ minimum: 1, maximum: max, description });
const Fraction = (description: string) => Type.Number({ minimum: 0, maximum: 1, description });

export const ModelSpec = Type.Object(
  {
    vocabSize: Type.Integer({ minimum: 258, maximum: 65_536, description: 'BPE vocabulary size, including 256 byte tokens and <|endoftext|>' }),
    nCtx: PositiveInt(4096, 'context length (positions)'),
    nLayer: PositiveInt(96, 'transformer blocks'),
    nHead: PositiveInt(128, 'attention heads per block'),
    nEmbd: PositiveInt(16_384, 'model width d_model'),
  },
  { additionalProperties: false },
);

export const DataSpec = Type.Object(
  {
    corpus: Type.String({ minLength: 1, maxLength: 4096, description: "'demo' (the bundled English corpus) or a path to .txt/.jsonl on the coordinator" }),
    heldOutFraction: Type.Optional(Type.Number({ minimum: 0.001, maximum: 0.5, description: 'share of documents kept for held-out loss' })),
  },
  { additionalProperties: false },
);

export const TrainingSpec = Type.Object(
  {
    steps: PositiveInt(10_000_000, 'optimizer steps'),
    batchSize: PositiveInt(1_000_000, 'global batch in sequences per step, summed over data-parallel ranks'),
    microBatches: Type.Optional(PositiveInt(4096, 'gradient-accumulation micro-batches per rank per step')),
    seqLen: PositiveInt(4096, 'tokens per sequence (≤ model.nCtx)'),
    seed: Type.Optional(Type.Integer({ minimum: 0, maximum: 2 ** 31 - 1, description: 'initialisation and data-order seed' })),
    lr: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 10, description: 'peak learning rate' })),
    minLr: Type.Optional(Type.Number({ minimum: 0, maximum: 10, description: 'learning rate at the end of the cosine decay' })),
    warmupSteps: Type.Optional(Type.Integer({ minimum: 0, maximum: 10_000_000, description: 'linear warm-up steps' })),
    weightDecay: Type.Optional(Type.Number({ minimum: 0, maximum: 10, description: 'AdamW decoupled weight decay (2-D weights only)' })),
    beta1: Type.Optional(Fraction('AdamW β1')),
    beta2: Type.Optional(Fraction('AdamW β2')),
    gradClip: Type.Optional(Type.Number({ minimum: 0, maximum: 1e6, description: 'clip the global gradient norm at this value; 0 disables' })),
    evalEvery: Type.Optional(Type.Integer({ minimum: 0, maximum: 10_000_000, description: 'held-out evaluation interval in steps; 0 disables' })),
    evalBatches: Type.Optional(PositiveInt(10_000, 'held-out batches per evaluation')),
    checkpointEvery: Type.Optional(Type.Integer({ minimum: 0, maximum: 10_000_000, description: 'checkpoint interval in steps; 0: only at the end' })),
    zero: Type.Optional(Type.Union([Type.Literal(0), Type.Literal(1)], { description: 'ZeRO stage: 1 shards the optimizer state over the data-parallel replicas' })),
    keepCheckpoints: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000, description: 'newest checkpoints kept; older ones are pruned (0: keep all)' })),
    maxRestarts: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000, description: 'attempts that may fail in a row without a new checkpoint before the job fails' })),
  },
  { additionalProperties: false },
);

export const ParallelSpec = Type.Union([
  Type.Literal('auto'),
  Type.Object(
    {
      data: PositiveInt(4096, 'data-parallel replicas'),
      pipeline: Type.Optional(PositiveInt(256, 'pipeline stages (blocks split over this many agents); default 1')),
      tensor: Type.Optional(PositiveInt(256, 'tensor-parallel shards per stage (must divide model.nHead); default 1')),
      minData: Type.Optional(PositiveInt(4096, 'fewest data-parallel replicas the job runs with while agents are missing; default: data (not elastic)')),
    },
    { additionalProperties: false },
  ),
]);

export const JobSpec = Type.Object(
  {
    name: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$', description: 'job and model name' }),
    model: ModelSpec,
    data: DataSpec,
    training: TrainingSpec,
    parallel: Type.Optional(ParallelSpec),
  },
  { additionalProperties: false },
);

export type JobSpec = Static<typeof JobSpec>;

/** A spec with every default filled in: what is stored with the job and saved in each checkpoint. */
export interface ResolvedJobSpec extends JobSpec {
  data: Required<Static<typeof DataSpec>>;
  training: Required<Static<typeof TrainingSpec>>;
  parallel: ResolvedParallel | 'auto';
}

/**
 * A pinned layout. `data` is the most data-parallel replicas and `minData` the fewest: between them the job is
 * elastic (it shrinks when agents are lost and grows back at a checkpoint boundary). Pipeline and tensor degrees
 * are the model's split and never change. The global batch stays `training.batchSize` whatever the replica count,
 * so every degree trains the same model.
 */
export interface ResolvedParallel {
  data: number;
  pipeline: number;
  tensor: number;
  minData: number;
}

export const TRAINING_DEFAULTS = Object.freeze({
  microBatches: 1, // no accumulation
  seed: 1337,
  lr: 3e-3, // small models tolerate a high peak rate
  minLr: 3e-4, // a tenth of the peak, as in nanoGPT
  warmupSteps: 0,
  weightDecay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  gradClip: 1.0,
  evalEvery: 0,
  evalBatches: 4,
  checkpointEvery: 0,
  zero: 0 as 0 | 1,
  keepCheckpoints: 3, // the newest three: a corrupt newest one still leaves two to fall back on
  maxRestarts: 10,
});

const check = TypeCompiler.Compile(JobSpec);

export type SpecResult = { ok: true; spec: ResolvedJobSpec } | { ok: false; errors: string[] };

export function validateJobSpec(raw: unknown): SpecResult {
  if (!check.Check(raw)) {
    const errors = [...check.Errors(raw)].map((e) => `${e.path || '/'} ${e.message}`);
    return { ok: false, errors: [...new Set(errors)] };
  }
  const spec = raw as JobSpec;
  const training = { ...TRAINING_DEFAULTS, ...spec.training };
  const resolved: ResolvedJobSpec = {
    ...spec,
    data: { heldOutFraction: 0.05, ...spec.data },
    training,
    parallel: spec.parallel === undefined || spec.parallel === 'auto' ? 'auto' : { pipeline: 1, tensor: 1, minData: spec.parallel.data, ...spec.parallel },
  };
  const errors: string[] = [];
  const m = resolved.model;
  if (m.nEmbd % m.nHead !== 0) errors.push(`/model/nEmbd ${m.nEmbd} must be divisible by /model/nHead ${m.nHead}`);
  if (training.seqLen > m.nCtx) errors.push(`/training/seqLen ${training.seqLen} exceeds /model/nCtx ${m.nCtx}`);
  if (training.minLr > training.lr) errors.push(`/training/minLr ${training.minLr} exceeds /training/lr ${training.lr}`);
  if (training.warmupSteps > training.steps) errors.push(`/training/warmupSteps ${training.warmupSteps} exceeds /training/steps ${training.steps}`);
  if (training.beta1 >= 1 || training.beta2 >= 1) errors.push('/training/beta1 and /training/beta2 must be below 1');
  const ranks = resolved.parallel === 'auto' ? 1 : resolved.parallel.data;
  const perRank = training.batchSize / ranks;
  if (!Number.isInteger(perRank)) {
    errors.push(`/training/batchSize ${training.batchSize} must divide evenly over /parallel/data ${ranks} ranks`);
  } else if (!Number.isInteger(perRank / training.microBatches)) {
    errors.push(`/training/batchSize per rank (${perRank}) must divide evenly into /training/microBatches ${training.microBatches}`);
  }
  if (resolved.parallel !== 'auto') {
    const { pipeline, tensor } = resolved.parallel;
    if (pipeline > m.nLayer) errors.push(`/parallel/pipeline ${pipeline} exceeds /model/nLayer ${m.nLayer}: every stage needs at least one block`);
    if (m.nHead % tensor !== 0) errors.push(`/parallel/tensor ${tensor} must divide /model/nHead ${m.nHead}: attention is split by heads`);
    const { data, minData } = resolved.parallel;
    if (minData > data) errors.push(`/parallel/minData ${minData} exceeds /parallel/data ${data}`);
    else if (training.batchSize % (minData * training.microBatches) !== 0) {
      errors.push(`/training/batchSize ${training.batchSize} must divide evenly over /parallel/minData ${minData} ranks × ${training.microBatches} micro-batches`);
    }
  }
  return errors.length ? { ok: false, errors } : { ok: true, spec: resolved };
}
