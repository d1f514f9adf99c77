/**
 * The evaluation suites a stage is judged by at its end (and every `eval.every` steps), beyond the held-out loss
 * every job reports:
 *   - SFT: exact-match accuracy of greedy answers to held-out instructions;
 *   - DPO: how often the policy prefers the chosen reply (win rate), the implicit reward's accuracy and margin
 *     against the frozen reference, and how much the chosen replies' perplexity grew (the "did DPO break the
 *     model" check);
 *   - distillation: the student's score as a share of the teacher's (`scoreRatio`).
 * Pure model code on whichever tf backend is set: the coordinator runs it in a worker thread (coordinator/jobs/eval-worker.ts).
 */
import * as tf from '@tensorflow/tfjs';
import { endOfText, renderPair, renderPrompt, type RenderedSequence } from './chat-template.ts';
import type { HeldOutRecord } from './examples.ts';
import { disposeCache, type GPT } from './gpt.ts';
import { rowLogprobs } from './objectives.ts';
import { readChecked } from './tensor-values.ts';
import type { Tokenizer } from './tokenizer.ts';

export type ChatRecord = Extract<HeldOutRecord, { kind: 'chat' }>;
export type PreferenceRecord = Extract<HeldOutRecord, { kind: 'preference' }>;

export interface ExactMatchOptions {
  maxNewTokens: number;
  maxExamples: number;
  /** How many {prompt, expected, got} to return for a look (default 3). */
  samples?: number;
}

export interface ExactMatchResult {
  exactMatch: number; // share of examples answered exactly (0 with no examples)
  examples: number;
  samples: Array<{ prompt: string; expected: string; got: string }>;
}

/** Sequences scored in one forward pass: small models, small batches, bounded memory. */
const SCORE_ROWS = 16;

/**
 * Greedy answers (KV-cached decoding) to each record's prompt, compared after `.trim()` with its response. An
 * answer ends at <|endoftext|>, after maxNewTokens tokens, or when the context is full; a prompt that leaves no
 * room for an answer counts as a miss.
 */
export async function exactMatch(model: GPT, tokenizer: Tokenizer, records: readonly ChatRecord[], o: ExactMatchOptions): Promise<ExactMatchResult> {
  const used = records.slice(0, o.maxExamples);
  const out: ExactMatchResult = { exactMatch: 0, examples: used.length, samples: [] };
  let hits = 0;
  for (const r of used) {
    const got = tokenizer.decode(await greedy(model, renderPrompt(r.prompt, tokenizer), endOfText(tokenizer), o.maxNewTokens)).trim();
    const expected = r.response.trim();
    if (got === expected) hits++;
    if (out.samples.length < (o.samples ?? 3)) out.samples.push({ prompt: r.prompt.at(-1)?.content ?? '', expected, got });
  }
  out.exactMatch = used.length ? hits / used.length : 0;
  return out;
}

/** The ids greedily generated after `prompt` (without the closing <|endoftext|>). */
export async function greedy(model: GPT, prompt: readonly number[], eot: number, maxNewTokens: number): Promise<number[]> {
  const nCtx = model.config.nCtx;
  if (prompt.length === 0 || prompt.length >= nCtx) return [];
  const generated: number[] = [];
  const first = tf.tensor2d([prompt as number[]], [1, prompt.length], 'int32');
  let { logits, cache } = model.forwardCached(first);
  first.dispose();
  try {
    for (;;) {
      const best = tf.tidy(() => logits.slice([0, logits.shape[1] - 1, 0], [1, 1, logits.shape[2]]).argMax(-1));
      logits.dispose();
      const next = (await readChecked(best))[0]!; // read asynchronously: a GPU backend has no synchronous read
      best.dispose();
      if (next === eot) break;
      generated.push(next);
      if (generated.length >= maxNewTokens || cache.length >= nCtx) break;
      const ids = tf.tensor2d([[next]], [1, 1], 'int32');
      const step = model.forwardCached(ids, cache);
      ids.dispose();
      disposeCache(cache);
      ({ logits, cache } = step);
    }
  } finally {
    logits.dispose(); // disposing twice is a no-op
    disposeCache(cache);
  }
  return generated;
}

/** Per sequence: the summed log-probability of its trained tokens (the reply and its <|endoftext|>) and how many there are. */
export async function replyLogprobs(model: GPT, seqs: readonly RenderedSequence[]): Promise<{ logp: number[]; tokens: number[] }> {
  const logp: number[] = [], tokens: number[] = [];
  const limit = model.config.nCtx + 1; // ids beyond the context are cut (their tokens are not scored)
  for (let i = 0; i < seqs.length; i += SCORE_ROWS) {
    const chunk = seqs.slice(i, i + SCORE_ROWS).map((s) => ({ ids: s.ids.slice(0, limit), trained: s.trained.slice(0, limit) }));
    const B = chunk.length, T = Math.max(1, ...chunk.map((s) => s.ids.length - 1));
    const inputs = new Int32Array(B * T), targets = new Int32Array(B * T), weights = new Float32Array(B * T);
    chunk.forEach((s, row) => {
      for (let t = 0; t + 1 < s.ids.length; t++) {
        inputs[row * T + t] = s.ids[t]!;
        targets[row * T + t] = s.ids[t + 1]!;
        weights[row * T + t] = s.trained[t + 1]!;
      }
      tokens.push(s.trained.slice(1).reduce((a, b) => a + b, 0));
    });
    const ids = tf.tensor2d(inputs, [B, T], 'int32');
    const logits = tf.tidy(() => model.forward(ids).reshape([B * T, model.config.vocabSize]) as tf.Tensor2D);
    const rows = rowLogprobs(logits, targets, weights, B, T);
    tf.dispose([ids, logits]);
    logp.push(...Array.from(await readChecked(rows)));
    rows.dispose();
  }
  return { logp, tokens };
}

export interface PreferenceResult {
  winRate: number; // share of pairs with log π(chosen) > log π(rejected)
  rewardAccuracy: number; // share with β·((π_c − ρ_c) − (π_r − ρ_r)) > 0
  rewardMargin: number; // mean of that implicit reward margin
  chosenPerplexity: number; // the policy's, over the chosen replies' tokens
  referenceChosenPerplexity: number;
  perplexityIncrease: number; // chosenPerplexity / referenceChosenPerplexity − 1
  examples: number;
}

/** DPO's suite on held-out pairs (log-probabilities summed over each reply's tokens). */
export async function preferenceEval(policy: GPT, reference: GPT, tokenizer: Tokenizer, records: readonly PreferenceRecord[], beta: number, maxExamples = Infinity): Promise<PreferenceResult> {
  const used = records.slice(0, maxExamples);
  const seqs = used.flatMap((r) => renderPair(r.prompt, r.chosen, r.rejected, tokenizer)); // chosen, rejected, chosen, …
  const pi = await replyLogprobs(policy, seqs), rho = await replyLogprobs(reference, seqs);
  let wins = 0, accurate = 0, margin = 0, piChosen = 0, rhoChosen = 0, chosenTokens = 0;
  for (let p = 0; p < used.length; p++) {
    const c = 2 * p, r = c + 1;
    if (pi.logp[c]! > pi.logp[r]!) wins++;
    const z = beta * ((pi.logp[c]! - rho.logp[c]!) - (pi.logp[r]! - rho.logp[r]!));
    if (z > 0) accurate++;
    margin += z;
    piChosen += pi.logp[c]!;
    rhoChosen += rho.logp[c]!;
    chosenTokens += pi.tokens[c]!;
  }
  const n = Math.max(1, used.length), tok = Math.max(1, chosenTokens);
  const chosenPerplexity = Math.exp(-piChosen / tok), referenceChosenPerplexity = Math.exp(-rhoChosen / tok);
  return {
    winRate: wins / n, rewardAccuracy: accurate / n, rewardMargin: margin / n,
    chosenPerplexity, referenceChosenPerplexity, perplexityIncrease: chosenPerplexity / referenceChosenPerplexity - 1,
    examples: used.length,
  };
}

/** Perplexity of token windows (each `seqLen + 1` ids: every next token scored). */
export async function windowPerplexity(model: GPT, windows: readonly Int32Array[]): Promise<number> {
  const seqs = windows.map((w) => ({ ids: [...w], trained: Array.from(w, () => 1) }));
  const { logp, tokens } = await replyLogprobs(model, seqs);
  return Math.exp(-logp.reduce((a, b) => a + b, 0) / Math.max(1, tokens.reduce((a, b) => a + b, 0)));
}

export interface ScoreRatioResult {
  scoreRatio: number;
  studentScore: number;
  teacherScore: number;
  examples: number;
}

/**
 * Distillation's quality ratio, higher is better for the student, 1 when it matches its teacher:
 *   - chat examples: student exact-match / teacher exact-match on the same records (the scores are exact-match
 *     accuracies; a teacher that scores 0 gives a ratio of 1: the student cannot do worse than nothing);
 *   - text windows: teacher held-out perplexity / student held-out perplexity (the scores are the perplexities).
 */
export async function scoreRatio(
  student: GPT,
  teacher: GPT,
  tokenizer: Tokenizer,
  data: { records: readonly ChatRecord[] } | { windows: readonly Int32Array[] },
  o: ExactMatchOptions,
): Promise<ScoreRatioResult> {
  if ('windows' in data) {
    const windows = data.windows.slice(0, o.maxExamples);
    const studentScore = await windowPerplexity(student, windows), teacherScore = await windowPerplexity(teacher, windows);
    return { scoreRatio: teacherScore / studentScore, studentScore, teacherScore, examples: windows.length };
  }
  const s = await exactMatch(student, tokenizer, data.records, o), t = await exactMatch(teacher, tokenizer, data.records, o);
  return { scoreRatio: t.exactMatch === 0 ? 1 : s.exactMatch / t.exactMatch, studentScore: s.exactMatch, teacherScore: t.exactMatch, examples: s.examples };
}
