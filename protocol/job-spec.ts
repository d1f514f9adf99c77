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

/**
 * A registry version as a job spec names it: "name@3", or "name" for its newest version (resolved once, when the job is
 * accepted, into a protocol/model-version.ts VersionRef).
 */
const VersionName = (description: string) => Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[1-9][0-9]{0,8})?$', description });

export const DataSpec = Type.Object(
  {
    corpus: Type.String({ minLength: 1, maxLength: 4096, description: "'demo' (the bundled English corpus) or a path to .txt/.jsonl on the coordinator" }),
    heldOutFraction: Type.Optional(Type.Number({ minimum: 0.001, maximum: 0.5, description: 'share of documents kept for held-out loss' })),
    tokenizer: Type.Optional(VersionName("take this registered version's tokenizer instead of training one (e.g. an imported GPT-2's); its vocabulary must fit model.vocabSize; not with init.from or distill, which bring their own")),
  },
  { additionalProperties: false },
);

/** Formats data-parallel all-reduce traffic may travel in (node-agent/collectives/wire.ts). */
export const GRADIENT_WIRES = ['f32', 'bf16', 'f16'] as const;
export type GradientWire = (typeof GRADIENT_WIRES)[number];

/**
 * DiLoCo (Douillard et al. 2023; OpenDiLoCo): each data-parallel replica runs `innerSteps` AdamW steps alone, then the
 * replicas average their pseudo-gradients (outer weights − own weights) and take one outer SGD step with (Nesterov)
 * momentum. Defaults are the paper's.
 */
export const DilocoSpec = Type.Object(
  {
    innerSteps: Type.Optional(PositiveInt(1_000_000, 'steps each replica trains alone between synchronisations (H); default 500')),
    outerLr: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 10, description: 'outer learning rate; default 0.7' })),
    outerMomentum: Type.Optional(Type.Number({ minimum: 0, exclusiveMaximum: 1, description: 'outer momentum; default 0.9' })),
    nesterov: Type.Optional(Type.Boolean({ description: 'Nesterov momentum for the outer step; default true' })),
  },
  { additionalProperties: false },
);
export const DILOCO_DEFAULTS = Object.freeze({ innerSteps: 500, outerLr: 0.7, outerMomentum: 0.9, nesterov: true });
export type ResolvedDiloco = Required<Static<typeof DilocoSpec>>;

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
    weightDecay: Type.Optional(Type.Number({ minimum: 0, maximum: 10, description: 'AdamW decoupled weight decay (2-D weights only; LoRA adapter factors are never decayed)' })),
    beta1: Type.Optional(Fraction('AdamW β1')),
    beta2: Type.Optional(Fraction('AdamW β2')),
    gradClip: Type.Optional(Type.Number({ minimum: 0, maximum: 1e6, description: 'clip the global gradient norm at this value; 0 disables' })),
    evalEvery: Type.Optional(Type.Integer({ minimum: 0, maximum: 10_000_000, description: 'held-out evaluation interval in steps; 0 disables' })),
    evalBatches: Type.Optional(PositiveInt(10_000, 'held-out batches per evaluation')),
    checkpointEvery: Type.Optional(Type.Integer({ minimum: 0, maximum: 10_000_000, description: 'checkpoint interval in steps; 0: only at the end' })),
    zero: Type.Optional(Type.Union([Type.Literal(0), Type.Literal(1)], { description: 'ZeRO stage: 1 shards the optimizer state over the data-parallel replicas' })),
    keepCheckpoints: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000, description: 'newest checkpoints kept; older ones are pruned (0: keep all)' })),
    maxRestarts: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000, description: 'attempts that may fail in a row without a new checkpoint before the job fails' })),
    gradientWire: Type.Optional(Type.Union(GRADIENT_WIRES.map((w) => Type.Literal(w)), {
      description: "number format of data-parallel all-reduce traffic (gradients, or DiLoCo's pseudo-gradients): f32 (default), or bf16 / f16, which halve the bytes; sums are always accumulated in float32",
    })),
    diloco: Type.Optional(DilocoSpec),
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

export const JOB_KINDS = ['pretrain', 'sft', 'dpo', 'distill'] as const;
export type JobKind = (typeof JOB_KINDS)[number];


export const InitSpec = Type.Object(
  { from: VersionName('start from this model version\'s weights (its config must equal model, its tokenizer is reused)') },
  { additionalProperties: false },
);

export const DpoSpec = Type.Object(
  {
    beta: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 100, description: 'DPO β: how far the policy may move from the frozen reference (the init version); default 0.1' })),
    rpoAlpha: Type.Optional(Type.Number({ minimum: 0, maximum: 100, description: "weight of the chosen reply's NLL added to the DPO loss (RPO; TRL's rpo_alpha); default 0" })),
  },
  { additionalProperties: false },
);

export const DistillSpec = Type.Object(
  {
    teacher: VersionName('the teacher version (same tokenizer; any size)'),
    temperature: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 100, description: 'softens both distributions before the KL; default 2' })),
    alpha: Type.Optional(Fraction('weight of the KL term; 1 − alpha weighs the hard-label loss; default 0.5')),
    initFromTeacher: Type.Optional(Type.Boolean({ description: "start the student from the teacher's weights: embeddings, final LayerNorm and every (L_t/L_s)-th block (DistilBERT); needs the teacher's width and heads; default false" })),
  },
  { additionalProperties: false },
);

/** The linear layers of each block an adapter may target (GPT-2 names); model/lora.ts owns what they mean. */
export const LORA_TARGETS = ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'] as const;

export const LoraSpecSchema = Type.Object(
  {
    rank: Type.Optional(PositiveInt(1024, 'r: the inner dimension of each adapter A·B (≤ model.nEmbd); default 8')),
    alpha: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1e4, description: 'the update is scaled by alpha / rank; default 2 × rank' })),
    dropout: Type.Optional(Type.Number({ minimum: 0, maximum: 0.9, description: "dropout on each adapter's input while training (at most 0.9); default 0" })),
    targets: Type.Optional(Type.Array(Type.Union(LORA_TARGETS.map((t) => Type.Literal(t))), { minItems: 1, maxItems: LORA_TARGETS.length, uniqueItems: true, description: 'which linear layers of every block get an adapter; default all four' })),
  },
  { additionalProperties: false, description: 'train low-rank adapters on the frozen init.from version instead of all weights' },
);

export const EvalSpec = Type.Object(
  {
    tasks: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: 'held-out instruction tasks (.jsonl of {prompt, response}) for exact-match; default: the data\'s held-out split' })),
    maxExamples: Type.Optional(PositiveInt(100_000, 'examples per suite run; default 200')),
    maxNewTokens: Type.Optional(PositiveInt(4096, 'longest generated answer in exact-match; default 32')),
    every: Type.Optional(Type.Integer({ minimum: 0, maximum: 10_000_000, description: 'run the suite at checkpoints every this many steps too (0: only at the end)' })),
    earlyStopping: Type.Optional(Type.Object(
      {
        patience: PositiveInt(1_000_000, 'held-out evaluations without an improvement of at least minDelta before the job stops'),
        minDelta: Type.Optional(Type.Number({ minimum: 0, maximum: 1e6, description: 'smallest held-out loss decrease that counts; default 0' })),
      },
      { additionalProperties: false },
    )),
    pass: Type.Optional(Type.Object(
      {
        maxEvalLoss: Type.Optional(Type.Number({ minimum: 0, description: 'held-out loss must be at most this' })),
        maxPerplexity: Type.Optional(Type.Number({ minimum: 1, description: 'held-out perplexity must be at most this' })),
        minExactMatch: Type.Optional(Fraction('sft: exact-match accuracy must reach this')),
        minWinRate: Type.Optional(Fraction('dpo: share of held-out pairs where the model prefers chosen')),
        maxPerplexityIncrease: Type.Optional(Type.Number({ minimum: 0, description: 'dpo: relative increase of the chosen replies\' perplexity over the reference' })),
        minScoreRatio: Type.Optional(Type.Number({ minimum: 0, description: 'distill: student score / teacher score must reach this' })),
      },
      { additionalProperties: false, description: 'criteria that must all hold at the end, or the model is not registered and the job fails' },
    )),
  },
  { additionalProperties: false },
);

export const JobSpec = Type.Object(
  {
    name: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$', description: 'job and model name' }),
    kind: Type.Optional(Type.Union(JOB_KINDS.map((k) => Type.Literal(k)), { description: 'what the job trains; default pretrain' })),
    model: ModelSpec,
    data: DataSpec,
    training: TrainingSpec,
    parallel: Type.Optional(ParallelSpec),
    init: Type.Optional(InitSpec),
    dpo: Type.Optional(DpoSpec),
    distill: Type.Optional(DistillSpec),
    lora: Type.Optional(LoraSpecSchema),
    eval: Type.Optional(EvalSpec),
  },
  { additionalProperties: false },
);

export type JobSpec = Static<typeof JobSpec>;

/** A spec with every default filled in: what is stored with the job and saved in each checkpoint. */
export interface ResolvedJobSpec extends JobSpec {
  kind: JobKind;
  data: Required<Omit<Static<typeof DataSpec>, 'tokenizer'>> & Pick<Static<typeof DataSpec>, 'tokenizer'>; // tokenizer stays optional: absent = train one
  training: Required<Omit<Static<typeof TrainingSpec>, 'diloco'>> & { diloco?: ResolvedDiloco }; // diloco absent: plain data parallelism
  parallel: ResolvedParallel | 'auto';
  dpo?: Required<Static<typeof DpoSpec>>;
  distill?: Required<Static<typeof DistillSpec>>;
  lora?: Required<Static<typeof LoraSpecSchema>>;
}

/** How a kind's data are laid out: token shards of text, or examples (one sequence, or a chosen/rejected pair). */
export function dataFormatOf(spec: Pick<ResolvedJobSpec, 'kind' | 'data'>): 'text' | 'chat' | 'preference' {
  if (spec.kind === 'sft') return 'chat';
  if (spec.kind === 'dpo') return 'preference';
  if (spec.kind === 'distill' && /\.jsonl$/i.test(spec.data.corpus) && spec.data.corpus !== 'demo') return 'chat'; // distil on conversations
  return 'text';
}

/** Sequences per example: a preference pair is two rows that must share a micro-batch. */
export const rowsPerExample = (spec: Pick<ResolvedJobSpec, 'kind'>): 1 | 2 => (spec.kind === 'dpo' ? 2 : 1);

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
  gradientWire: 'f32' as GradientWire,
});

const check = TypeCompiler.Compile(JobSpec);

export type SpecResult = { ok: true; spec: ResolvedJobSpec } | { ok: false; errors: string[] };

export function validateJobSpec(raw: unknown): SpecResult {
  if (!check.Check(raw)) {
    const errors = [...check.Errors(raw)].map((e) => `${e.path || '/'} ${e.message}`);
    return { ok: false, errors: [...new Set(errors)] };
  }
  const spec = raw as JobSpec;
  const { diloco: dilocoGiven, ...givenTraining } = spec.training;
  const training: ResolvedJobSpec['training'] = { ...TRAINING_DEFAULTS, ...givenTraining, ...(dilocoGiven ? { diloco: { ...DILOCO_DEFAULTS, ...dilocoGiven } } : {}) };
  const resolved: ResolvedJobSpec = {
    ...spec,
    kind: spec.kind ?? 'pretrain',
    dpo: spec.dpo || spec.kind === 'dpo' ? { beta: 0.1, rpoAlpha: 0, ...spec.dpo } : undefined,
    distill: spec.distill ? { temperature: 2, alpha: 0.5, initFromTeacher: false, ...spec.distill } : undefined,
    lora: spec.lora ? resolveLora(spec.lora) : undefined,
    data: { heldOutFraction: 0.05, ...spec.data },
    training,
    parallel: spec.parallel === undefined || spec.parallel === 'auto' ? 'auto' : { pipeline: 1, tensor: 1, minData: spec.parallel.data, ...spec.parallel },
  };
  if (!resolved.dpo) delete resolved.dpo; // absent, not undefined: the stored spec stays the submitted shape
  if (!resolved.distill) delete resolved.distill;
  if (!resolved.lora) delete resolved.lora;
  const errors: string[] = [];
  const m = resolved.model;
  if (m.nEmbd % m.nHead !== 0) errors.push(`/model/nEmbd ${m.nEmbd} must be divisible by /model/nHead ${m.nHead}`);
  if (training.seqLen > m.nCtx) errors.push(`/training/seqLen ${training.seqLen} exceeds /model/nCtx ${m.nCtx}`);
  if (training.minLr > training.lr) errors.push(`/training/minLr ${training.minLr} exceeds /training/lr ${training.lr}`);
  if (training.warmupSteps > training.steps) errors.push(`/training/warmupSteps ${training.warmupSteps} exceeds /training/steps ${training.steps}`);
  if (training.beta1 >= 1 || training.beta2 >= 1) errors.push('/training/beta1 and /training/beta2 must be below 1');
  const kind = resolved.kind;
  if (kind === 'dpo' && !spec.init) errors.push('/init a dpo job needs init.from: the version it starts from is also its frozen reference');
  if (kind === 'sft' && spec.data.corpus === 'demo') errors.push('/data/corpus an sft job needs a .jsonl of instruction examples, not the demo text corpus');
  if (kind === 'dpo' && spec.data.corpus === 'demo') errors.push('/data/corpus a dpo job needs a .jsonl of preference pairs, not the demo text corpus');
  if ((kind === 'sft' || kind === 'dpo') && !/\.jsonl$/i.test(spec.data.corpus)) errors.push(`/data/corpus a ${kind} job reads a .jsonl file`);
  if (kind === 'distill' && !spec.distill) errors.push('/distill a distill job needs distill.teacher');
  if (kind !== 'distill' && spec.distill) errors.push(`/distill only a distill job has a teacher (kind is ${kind})`);
  if (kind !== 'dpo' && spec.dpo) errors.push(`/dpo only a dpo job has DPO settings (kind is ${kind})`);
  if (resolved.lora && !spec.init) errors.push('/init a LoRA job needs init.from: the frozen base version its adapters are trained on');
  if (resolved.lora && resolved.lora.rank > m.nEmbd) errors.push(`/lora/rank ${resolved.lora.rank} exceeds /model/nEmbd ${m.nEmbd}: an adapter's rank is at most its layer's smaller side`);
  if (spec.eval?.earlyStopping && training.evalEvery === 0) errors.push('/eval/earlyStopping needs /training/evalEvery > 0: it watches the held-out loss');
  // Early stopping registers the checkpoint of the step it stops at, so every evaluation step must be a checkpoint step.
  if (spec.eval?.earlyStopping && training.checkpointEvery === 0) errors.push('/eval/earlyStopping needs /training/checkpointEvery > 0: the model is taken from the checkpoint of the step it stops at');
  else if (spec.eval?.earlyStopping && training.evalEvery % training.checkpointEvery !== 0) {
    errors.push(`/training/evalEvery ${training.evalEvery} must be a multiple of /training/checkpointEvery ${training.checkpointEvery} with /eval/earlyStopping: the model is taken from the checkpoint of the step it stops at`);
  }
  const diloco = training.diloco;
  if (diloco) {
    // Replicas hold different weights between synchronisations: sharded optimizer state cannot be shared, and an
    // evaluation or checkpoint mid-round would see one replica's weights, so both fall on synchronisation steps.
    if (training.zero) errors.push('/training/zero 1 cannot be used with /training/diloco: each replica keeps its own optimizer state');
    if (training.checkpointEvery % diloco.innerSteps !== 0) {
      errors.push(`/training/checkpointEvery ${training.checkpointEvery} must be a multiple of /training/diloco/innerSteps ${diloco.innerSteps}: checkpoints hold the outer weights, which exist only after a synchronisation`);
    }
    if (training.evalEvery % diloco.innerSteps !== 0) {
      errors.push(`/training/evalEvery ${training.evalEvery} must be a multiple of /training/diloco/innerSteps ${diloco.innerSteps}: replicas agree on the weights only after a synchronisation`);
    }
    if (resolved.parallel !== 'auto' && (resolved.parallel.pipeline > 1 || resolved.parallel.tensor > 1)) {
      errors.push('/training/diloco needs /parallel/pipeline and /parallel/tensor of 1: DiLoCo replicates whole models across slow links, and a replica split over several agents would need fast links inside it');
    }
  }
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

/** Defaults of a LoRA block: rank 8, alpha 2 × rank, no dropout, every linear layer; targets in canonical order. */
function resolveLora(l: Static<typeof LoraSpecSchema>): Required<Static<typeof LoraSpecSchema>> {
  const rank = l.rank ?? 8;
  const targets = LORA_TARGETS.filter((t) => (l.targets ?? LORA_TARGETS).includes(t));
  return { rank, alpha: l.alpha ?? 2 * rank, dropout: l.dropout ?? 0, targets };
}
