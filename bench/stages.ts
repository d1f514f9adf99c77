/**
 * npm run bench -- stages [--seed 1]
 *
 * The model's whole life on a real local cluster (a coordinator and 2 agents on loopback), each stage a job of its
 * kind starting from the version before it, each judged on held-out data it never trained on:
 *   data prep   `measureDataPrep` (bench/support/dataprep-demo.ts): a corpus with planted exact and near
 *               duplicates and personal data goes through model/dataprep; `dedup_recall` is the share of planted
 *               near-duplicates removed, `pii_recall` the share of planted e-mail addresses, phone numbers, IP
 *               addresses and card numbers masked
 *   pretrain    a small GPT on demo-corpus text plus documents of repeated lines of the task words (the base)
 *   sft         instruction tuning from the base on word-reversal tasks ("Reverse: red cat sky" → "sky cat red")
 *               and greetings ("Greet: anna" → "hello anna" or "hi anna", 50/50); `sft_exact_match` is greedy
 *               exact-match on reversal tasks whose word combinations no training example has, `base_exact_match`
 *               the base's on the same tasks (it has never seen the format)
 *   lora        the same SFT with rank-r adapters on the frozen base instead of all weights, concurrently with the
 *               full one on the other agent; `lora_gain_ratio` = (lora − base) / (full − base) exact-match,
 *               `lora_param_fraction` = adapter parameters / model parameters
 *   dpo         from the SFT version, preference pairs "hello NAME" over "hi NAME", the SFT version frozen as the
 *               reference, with RPO's NLL of the chosen reply (dpo.rpoAlpha); the held-out pairs are names no
 *               training pair has. `dpo_win_rate` is the share of them
 *               whose implicit reward prefers the chosen reply; `dpo_ppl_change` the relative change, DPO version
 *               against the SFT version, of the perplexity of the held-out reversal tasks' replies (data DPO never
 *               saw: what SFT taught must survive); `dpo_chosen_ppl_change` the suite's change of the held-out chosen
 *               replies' perplexity against the reference
 *   distill     the SFT version teaches a student with half its layers (KL on τ-softened distributions + hard
 *               labels; the student starts from the teacher's blocks, distill.initFromTeacher), concurrently with DPO; `distill_score_ratio` = student exact-match / teacher exact-match
 *   int8        weights quantized for serving (model/quantize.ts, the registry path): `int8_ppl_change` =
 *               |ppl_int8 − ppl_f32| / ppl_f32 of the base (the language model) on held-out demo-corpus text it never
 *               trained on, `int8_size_ratio` = weight bytes int8 / float32; for the SFT version,
 *               `int8_sft_exact_match` is the quantized weights' exact-match on the held-out tasks and
 *               `int8_sft_text_ppl_change` the change on the same held-out text, which that version no longer models
 * Targets (issue 8): sft_exact_match ≥ 0.9 (from near 0), dpo_win_rate ≥ 0.8 with |dpo_ppl_change| ≤ 0.1,
 * lora_gain_ratio ≥ 0.9 with lora_param_fraction < 0.05, distill_score_ratio ≥ 0.9, int8_ppl_change < 0.02 with
 * int8_size_ratio ≈ 0.25, dedup_recall and pii_recall 1. `met` lists each target's verdict.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { intOption, parseCli } from '../common/cli.ts';
import { loadDemoCorpus } from '../model/corpus.ts';
import { renderChat } from '../model/chat-template.ts';
import { exactMatch, replyLogprobs, type ChatRecord } from '../model/eval-suites.ts';
import { readExampleFile } from '../model/examples.ts';
import { GPT } from '../model/gpt.ts';
import { importHf } from '../model/hf-format.ts';
import { loraSpec, trainableFraction } from '../model/lora.ts';
import { tokenBatch, type TokenBatch } from '../model/train-step.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { loadBackend } from '../model/compute/backend.ts';
import { startCluster, type LocalCluster } from '../scripts/local-cluster.ts';
import { type JobView } from '../test/support/jobs.ts';
import { GREET_NAMES, greetRecords, reversalRecords, reversalTasks, TASK_WORDS, writeJsonl } from '../test/support/synthetic-tasks.ts';
import { measureDataPrep } from './support/dataprep-demo.ts';
import { measureInt8 } from './support/int8-demo.ts';

/** The recipe: sizes and steps that a 2-core CPU runs in minutes (found by in-process studies of each stage; README's Measured table has the runs). */
const R = {
  model: { vocabSize: 512, nCtx: 32, nLayer: 2, nHead: 4, nEmbd: 64 },
  seqLen: 32,
  tasks: { train: 2000, heldOut: 200, words: 3 },
  // 1500 steps: on the 600-step base of this corpus the same adapters stayed at exact-match 0 (loss 2.54 after 600
  // LoRA steps); on this one they reach 0.97 by step 1400 (both measured in-process on the job's registered base).
  pretrain: { steps: 1500, batchSize: 16, lr: 3e-3 },
  pretrainCopyDocs: 4000,
  sft: { steps: 2000, batchSize: 16, lr: 3e-3 },
  // Rank 5 on the query/key/value and MLP-up projections (4.3 % of the parameters): measured in-process on one base,
  // rank 3 on all four projections (4.6 %) reached exact-match 0.36 in 2000 steps and rank 8 on attention alone 0.04.
  lora: { steps: 2000, batchSize: 16, lr: 1e-2, spec: { rank: 5, alpha: 10, dropout: 0, targets: ['attn.c_attn', 'mlp.c_fc'] } },
  dpo: { steps: 80, batchSize: 8, lr: 1e-4, beta: 0.1, rpoAlpha: 1, names: 240 },
  distill: { steps: 1000, batchSize: 16, lr: 3e-3, temperature: 2, alpha: 0.5 },
  evalExamples: 200,
};

const TARGETS = {
  sft_exact_match: (x: number) => x >= 0.9,
  dpo_win_rate: (x: number) => x >= 0.8,
  dpo_ppl_change: (x: number) => Math.abs(x) <= 0.1,
  lora_gain_ratio: (x: number) => x >= 0.9,
  lora_param_fraction: (x: number) => x < 0.05,
  distill_score_ratio: (x: number) => x >= 0.9,
  int8_ppl_change: (x: number) => x < 0.02,
  int8_size_ratio: (x: number) => x <= 0.3,
  dedup_recall: (x: number) => x >= 0.95,
  pii_recall: (x: number) => x >= 0.95,
};

const round4 = (x: number) => Math.round(x * 1e4) / 1e4;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export default async function main(argv: string[]): Promise<object> {
  const { values } = parseCli(argv, { seed: { type: 'string' } });
  const seed = intOption(values.seed, 'seed', 1, 0);
  const t0 = performance.now();
  const elapsed = () => `${((performance.now() - t0) / 1000).toFixed(0)} s`;

  console.error('data prep: planted duplicates and personal data …');
  const prep = await measureDataPrep({ seed });
  console.error(`data prep: near-duplicate recall ${prep.dedup_recall}, personal data recall ${prep.pii_recall} (${elapsed()})`);

  const dir = mkdtempSync(join(tmpdir(), 'bench-stages-'));
  const cluster = await startCluster({ agents: 2, agentArgs: ['--backend', 'wasm'] });
  try {
    const files = writeData(dir, seed);
    const training = (s: { steps: number; batchSize: number; lr: number }) => ({ steps: s.steps, batchSize: s.batchSize, seqLen: R.seqLen, lr: s.lr, minLr: s.lr / 10, warmupSteps: Math.min(20, s.steps), seed, evalBatches: 2 });
    const evalTasks = { tasks: files.tasks, maxExamples: R.evalExamples, maxNewTokens: 12 };

    const base = await runStage(cluster, 'pretrain', {
      name: 'stages-base', kind: 'pretrain', model: R.model, data: { corpus: files.pretrain, heldOutFraction: 0.05 }, training: training(R.pretrain), parallel: { data: 1 },
    }, elapsed);
    const heldOutTasks = await readTasks(files.tasks);
    const baseEm = await versionExactMatch(cluster, 'stages-base', heldOutTasks);
    console.error(`base: exact-match ${baseEm} on ${R.evalExamples} held-out reversal tasks (${elapsed()})`);

    // Full SFT and LoRA SFT from the same base, one agent each.
    const sftSpec = { kind: 'sft', init: { from: 'stages-base' }, model: R.model, data: { corpus: files.sft, heldOutFraction: 0.05 }, parallel: { data: 1 }, eval: evalTasks };
    const [sft, lora] = await Promise.all([
      runStage(cluster, 'sft', { ...sftSpec, name: 'stages-sft', training: training(R.sft) }, elapsed),
      runStage(cluster, 'lora', { ...sftSpec, name: 'stages-lora', training: training(R.lora), lora: R.lora.spec }, elapsed),
    ]);
    const sftEm = finalEval(sft).exactMatch!, loraEm = finalEval(lora).exactMatch!;

    // DPO and distillation from the SFT version, one agent each.
    const [dpo, distill] = await Promise.all([
      runStage(cluster, 'dpo', {
        name: 'stages-dpo', kind: 'dpo', init: { from: 'stages-sft' }, dpo: { beta: R.dpo.beta, rpoAlpha: R.dpo.rpoAlpha }, model: R.model,
        data: { corpus: files.pref, heldOutFraction: 0.2 }, training: training(R.dpo), parallel: { data: 1 }, eval: { maxExamples: R.evalExamples },
      }, elapsed),
      runStage(cluster, 'distill', {
        name: 'stages-student', kind: 'distill', distill: { teacher: 'stages-sft', temperature: R.distill.temperature, alpha: R.distill.alpha, initFromTeacher: true },
        model: { ...R.model, nLayer: R.model.nLayer / 2 }, data: { corpus: files.sft, heldOutFraction: 0.05 }, training: training(R.distill), parallel: { data: 1 }, eval: evalTasks,
      }, elapsed),
    ]);
    const dpoEval = finalEval(dpo), distillEval = finalEval(distill);
    // DPO must not cost the model what SFT taught it: its held-out task replies' perplexity against the SFT version's.
    const [sftTaskPpl, dpoTaskPpl] = [await replyPerplexity(cluster, 'stages-sft', heldOutTasks), await replyPerplexity(cluster, 'stages-dpo', heldOutTasks)];

    console.error(`int8: quantizing the base and the SFT version … (${elapsed()})`);
    const int8Base = await int8Of(cluster, 'stages-base', files.heldOutText);
    const int8Sft = await int8Of(cluster, 'stages-sft', files.heldOutText, heldOutTasks);

    const result = {
      sft_exact_match: round4(sftEm),
      base_exact_match: round4(baseEm),
      dpo_win_rate: round4(dpoEval.winRate!),
      dpo_ppl_change: round4(dpoTaskPpl / sftTaskPpl - 1),
      dpo_task_ppl: round4(dpoTaskPpl),
      sft_task_ppl: round4(sftTaskPpl),
      dpo_chosen_ppl_change: round4(dpoEval.perplexityIncrease!),
      dpo_reward_margin: round4(dpoEval.rewardMargin!),
      lora_gain_ratio: round4(sftEm === baseEm ? 0 : (loraEm - baseEm) / (sftEm - baseEm)),
      lora_exact_match: round4(loraEm),
      lora_param_fraction: round4(trainableFraction(R.model, loraSpec(R.lora.spec, R.model))),
      distill_score_ratio: round4(distillEval.scoreRatio!),
      distill_student_exact_match: round4(distillEval.studentScore!),
      int8_ppl_change: round4(int8Base.int8_ppl_change),
      int8_size_ratio: round4(int8Base.int8_size_ratio),
      int8_base_ppl: round4(int8Base.ppl_f32),
      int8_sft_text_ppl_change: round4(int8Sft.int8_ppl_change),
      int8_sft_exact_match: round4(int8Sft.exactMatch),
      dedup_recall: prep.dedup_recall,
      pii_recall: prep.pii_recall,
      stage_s: Object.fromEntries([base, sft, lora, dpo, distill].map((v) => [v.job.name, round4(stageSeconds(v))])),
      recipe: R,
      total_s: Math.round((performance.now() - t0) / 1000),
    };
    const met = Object.fromEntries(Object.entries(TARGETS).map(([k, ok]) => [k, ok(result[k as keyof typeof TARGETS] as number)]));
    return { ...result, met };
  } finally {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

interface StageFiles {
  pretrain: string; // .txt: demo-corpus documents and documents of repeated task-word lines
  heldOutText: string[]; // text the base never trained on, for INT8's perplexity
  sft: string; // .jsonl {prompt, response}
  tasks: string; // .jsonl held-out reversal tasks
  pref: string; // .jsonl {prompt, chosen, rejected}
}

/**
 * The base is pre-trained on demo-corpus text and on documents of short lines of the task words and names, each line
 * followed by a copy of itself or of its tail (no reversal, no chat template). The repetition is the structure text
 * has that teaches a model to attend by position (an induction circuit); without it the base's position embeddings
 * stay near their random start, and a fine-tune that freezes them (LoRA) cannot learn a task that moves words by
 * position: full SFT with only wpe frozen reached exact-match 0.02 on such a base and 0.86 on one pre-trained with
 * repeated lines (measured in-process, 400 and 600 steps). Its tokenizer, trained on the same text, makes each task
 * word one token. Replies start with a space (" sky cat red"), so an answer's words are the very tokens of the prompt
 * (" sky", not the line-initial "sky"): the task is copying in reverse order, not also learning a second spelling of
 * every word (exact-match compares trimmed text).
 */
function writeData(dir: string, seed: number): StageFiles {
  const docs = loadDemoCorpus().documents;
  const next = lcg(seed + 100);
  const vocab = [...TASK_WORDS, ...GREET_NAMES, 'hello', 'hi', 'the', 'a', 'and'];
  const line = () => Array.from({ length: 3 + Math.floor(next() * 3) }, () => vocab[Math.floor(next() * vocab.length)]!).join(' ');
  const copyDocs = Array.from({ length: R.pretrainCopyDocs }, (_, i) => Array.from({ length: 4 }, () => {
    const l = line();
    return `${l}\n${i % 3 === 0 ? l : l.slice(l.indexOf(' ') + 1)}`;
  }).join('\n'));
  const pretrain = join(dir, 'pretrain.txt');
  const textDocs = docs.slice(0, 20), heldOutText = docs.slice(-10);
  writeFileSync(pretrain, [...textDocs, ...copyDocs].join('\n\n'));
  const tasks = reversalTasks(R.tasks.train + R.tasks.heldOut, seed, R.tasks.words);
  const names = syntheticNames(R.dpo.names, seed);
  const reply = (r: { prompt: string; response: string }) => ({ prompt: r.prompt, response: ` ${r.response}` });
  const sft = join(dir, 'sft.jsonl'), tasksFile = join(dir, 'tasks.jsonl'), pref = join(dir, 'pref.jsonl');
  writeJsonl(sft, [...reversalRecords(tasks.slice(0, R.tasks.train)), ...greetRecords(seed, 8)].map(reply), seed);
  writeJsonl(tasksFile, reversalRecords(tasks.slice(R.tasks.train)).map(reply), seed);
  // One pair per name: the held-out split's names are names no training pair has.
  writeJsonl(pref, names.map((n) => ({ prompt: `Greet: ${n}`, chosen: ` hello ${n}`, rejected: ` hi ${n}` })), seed);
  return { pretrain, heldOutText, sft, tasks: tasksFile, pref };
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

/** Distinct two-syllable names ("bako", "mire", …), seeded order. */
function syntheticNames(count: number, seed: number): string[] {
  const c = 'bdfgklmnprstvz', v = 'aeiou';
  const all: string[] = [];
  for (const a of c) for (const b of v) for (const d of c) for (const e of v) all.push(a + b + d + e);
  let s = seed >>> 0;
  for (let i = all.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return all.slice(0, count).filter((n) => !(TASK_WORDS as readonly string[]).includes(n));
}

/** Submits a job and follows it with a live line on stderr until it ends; a failed stage stops the benchmark. */
async function runStage(cluster: LocalCluster, label: string, spec: object, elapsed: () => string): Promise<JobView> {
  const { id } = await cluster.api<{ id: string }>('POST', '/api/jobs', spec);
  let shownStep = -Infinity, shownState = '';
  for (;;) {
    await sleep(2000);
    const v = await cluster.api<JobView>('GET', `/api/jobs/${id}`);
    const train = v.metrics.filter((m) => m.kind === 'train').at(-1);
    const step = train?.step ?? 0;
    // A line every 50 steps or so (polls miss exact multiples when the machine is busy) and at each state change.
    if (step - shownStep >= 50 || v.job.state !== shownState) {
      console.error(`${label}: ${v.job.state} step ${step}/${v.job.spec.training.steps} loss ${train?.values.loss?.toFixed(4) ?? '-'} (${elapsed()})`);
      shownStep = step;
      shownState = v.job.state;
    }
    if (v.job.state === 'succeeded') {
      console.error(`${label}: ${v.job.stateReason}; ${JSON.stringify(finalEval(v))} (${elapsed()})`);
      return v;
    }
    if (v.job.state === 'failed' || v.job.state === 'cancelled') throw new Error(`stage ${label} ${v.job.state}: ${v.job.stateReason}`);
  }
}

function finalEval(v: JobView): Record<string, number> {
  const rows = v.metrics.filter((m) => m.kind === 'eval');
  return rows.find((m) => m.step === v.job.spec.training.steps)?.values ?? rows.at(-1)?.values ?? {};
}

function stageSeconds(v: JobView): number {
  const rows = v.metrics.filter((m) => m.kind === 'train');
  return rows.length ? (rows.at(-1)!.atMs - v.job.createdMs) / 1000 : 0;
}

async function versionFiles(cluster: LocalCluster, name: string): Promise<Record<string, Uint8Array>> {
  const v = await cluster.api<{ version: number; files: Record<string, unknown> }>('GET', `/api/models/${name}/versions/latest`);
  const out: Record<string, Uint8Array> = {};
  for (const file of Object.keys(v.files)) {
    if (file === 'lineage.json') continue;
    const res = await fetch(`${cluster.url}/api/models/${name}/versions/${v.version}/files/${file}`, { headers: { authorization: `Bearer ${cluster.token}` } });
    if (!res.ok) throw new Error(`GET ${name} v${v.version} ${file}: ${res.status}`);
    out[file] = new Uint8Array(await res.arrayBuffer());
  }
  return out;
}

/** A registry version's config, weights and tokenizer, as the registry serves them. */
async function loadVersion(cluster: LocalCluster, name: string) {
  const files = await versionFiles(cluster, name);
  const { config, params } = importHf(files);
  const tokenizer = Tokenizer.fromJSON(JSON.parse(Buffer.from(files['tokenizer.json']!).toString('utf8')));
  return { config, flat: params, tokenizer };
}

/** `f` on a version's weights as a GPT on the wasm backend, disposed after. */
async function withVersion<T>(cluster: LocalCluster, name: string, f: (model: GPT, tokenizer: Tokenizer) => T | Promise<T>): Promise<T> {
  await loadBackend('wasm');
  const { config, flat, tokenizer } = await loadVersion(cluster, name);
  const model = new GPT(config, { flat });
  try {
    return await f(model, tokenizer);
  } finally {
    model.dispose();
  }
}

async function readTasks(tasksFile: string): Promise<ChatRecord[]> {
  const records: ChatRecord[] = [];
  for await (const { example } of readExampleFile(tasksFile, 'chat')) records.push(example as ChatRecord);
  return records.slice(0, R.evalExamples);
}

/** A version's exact-match on the held-out tasks, computed as the SFT suite computes it (model/eval-suites.ts). */
function versionExactMatch(cluster: LocalCluster, name: string, records: readonly ChatRecord[]): Promise<number> {
  return withVersion(cluster, name, async (model, tokenizer) => (await exactMatch(model, tokenizer, records, { maxNewTokens: 12, maxExamples: R.evalExamples })).exactMatch);
}

/** Perplexity of the reply tokens of `records` (the tokens SFT trains on) under a version. */
function replyPerplexity(cluster: LocalCluster, name: string, records: readonly ChatRecord[]): Promise<number> {
  return withVersion(cluster, name, async (model, tokenizer) => {
    const seqs = records.map((r) => renderChat([...r.prompt, { role: 'assistant', content: r.response }], tokenizer));
    const { logp, tokens } = await replyLogprobs(model, seqs);
    return Math.exp(-logp.reduce((a, b) => a + b, 0) / tokens.reduce((a, b) => a + b, 0));
  });
}

/**
 * INT8 of a version's weights (the registry's quantize → bytes → dequantize path), judged as measureInt8 does on
 * held-out text, plus the greedy exact-match of the dequantized weights on `records` when given.
 */
async function int8Of(cluster: LocalCluster, name: string, texts: string[], records?: readonly ChatRecord[]) {
  await loadBackend('wasm');
  const { config, flat, tokenizer } = await loadVersion(cluster, name);
  const seq = R.seqLen, rows = 8, need = rows * (seq + 1);
  const ids = texts.flatMap((t) => tokenizer.encode(t));
  const heldOut: TokenBatch[] = [];
  for (let o = 0; o + need <= ids.length && heldOut.length < 8; o += need) heldOut.push(tokenBatch(Int32Array.from(ids.slice(o, o + need)), rows, seq));
  const m = await measureInt8({ config, flat, heldOut });
  if (!records) return { ...m, exactMatch: NaN };
  const int8 = new GPT(config, { flat: m.dequantized });
  try {
    return { ...m, exactMatch: (await exactMatch(int8, tokenizer, records, { maxNewTokens: 12, maxExamples: R.evalExamples })).exactMatch };
  } finally {
    int8.dispose();
  }
}
