/**
 * Byte-level BPE training: learns the merges of a GPT-2-style tokenizer from a corpus.
 *
 * The corpus is read once, into a table of distinct pre-tokenized words and their counts (a few MB of English has
 * tens of thousands of distinct words, so every later step works on that table, never on the text). Merging then
 * keeps, for every adjacent pair, its count and the words that contain it: a merge rewrites only those words and
 * adjusts the counts of the pairs around each occurrence, and a max-heap with lazy re-checks finds the next most
 * frequent pair. Ties go to the smaller (left id, right id), so the same corpus always gives the same merges.
 */
import { BYTE_TO_CHAR, preTokenize } from './byte-level.ts';
import { ModelError } from './errors.ts';

export interface TrainProgress {
  /** 'count': reading the corpus; 'merge': learning merges. */
  phase: 'count' | 'merge';
  /** Texts read so far. */
  texts: number;
  /** Distinct words found so far. */
  words: number;
  /** Tokens in the vocabulary so far (256 bytes + merges), without special tokens. */
  vocab: number;
  /** The vocabulary size asked for, special tokens included. */
  vocabSize: number;
}

export interface TrainBpeOptions {
  /** Final vocabulary: 256 byte tokens + learned tokens + special tokens, exactly. */
  vocabSize: number;
  /** A pair seen fewer times than this is never merged; training fails if that leaves the vocabulary short. */
  minFrequency?: number;
  /** Tokens that are never split or merged into, given the last ids. Default ['<|endoftext|>']. */
  specialTokens?: readonly string[];
  /** Called now and then while counting and merging (callers print a live line). */
  onProgress?: (progress: TrainProgress) => void;
}

/** What training learns, in the shape the Tokenizer is built from. */
export interface TrainedBpe {
  /** id → byte-level token string, for ids below the special tokens. */
  tokens: string[];
  /** Merges in rank order, as pairs of byte-level token strings. */
  merges: Array<[string, string]>;
  /** Special token contents, ids tokens.length onwards. */
  specialTokens: string[];
}

/** Pair keys pack two ids below 2^20 into one number (exact in a float64), so maps are keyed by number not string. */
const SHIFT = 2 ** 20;
const pairKey = (a: number, b: number) => a * SHIFT + b;

export async function trainBpeModel(
  texts: Iterable<string> | AsyncIterable<string>,
  options: TrainBpeOptions,
): Promise<TrainedBpe> {
  const { vocabSize, minFrequency = 2, specialTokens = ['<|endoftext|>'], onProgress } = options;
  const specials = [...specialTokens];
  const target = vocabSize - specials.length; // tokens to reach before the specials are appended
  if (!Number.isInteger(vocabSize) || target < 256 || vocabSize > SHIFT) {
    throw new ModelError(
      'MDL_ERR_TOKENIZER_TRAINING',
      `vocabSize must be an integer from ${256 + specials.length} (256 bytes + ${specials.length} special tokens) to ${SHIFT}, got ${vocabSize}`,
    );
  }
  if (!Number.isInteger(minFrequency) || minFrequency < 1) {
    throw new ModelError('MDL_ERR_TOKENIZER_TRAINING', `minFrequency must be a positive integer, got ${minFrequency}`);
  }
  if (new Set(specials).size !== specials.length || specials.some((s) => s.length === 0)) {
    throw new ModelError('MDL_ERR_TOKENIZER_TRAINING', `specialTokens must be distinct non-empty strings: ${JSON.stringify(specials)}`);
  }
  const progress = (phase: TrainProgress['phase'], textCount: number, words: number, vocab: number) =>
    onProgress?.({ phase, texts: textCount, words, vocab, vocabSize });

  // 1. Count distinct words once. Special tokens are cut out first so no merge ever spans one.
  const wordCounts = new Map<string, number>();
  const specialSplit = specials.length > 0 ? new RegExp(specials.map(escapeRegExp).join('|'), 'g') : null;
  let textCount = 0;
  for await (const text of texts) {
    for (const part of specialSplit ? text.split(specialSplit) : [text]) {
      for (const word of preTokenize(part)) wordCounts.set(word, (wordCounts.get(word) ?? 0) + 1);
    }
    if (++textCount % 256 === 0) progress('count', textCount, wordCounts.size, 256);
  }
  progress('count', textCount, wordCounts.size, 256);

  // 2. Words as arrays of token ids (initially their UTF-8 bytes), with counts and the pair index.
  const utf8 = new TextEncoder();
  const words: number[][] = [];
  const freq: number[] = [];
  for (const [word, count] of wordCounts) {
    words.push(Array.from(utf8.encode(word)));
    freq.push(count);
  }
  wordCounts.clear();
  const pairCounts = new Map<number, number>();
  const where = new Map<number, number[]>(); // pair → words that contain (or once contained) it
  const note = (key: number, wi: number) => {
    const list = where.get(key);
    if (!list) where.set(key, [wi]);
    else if (list[list.length - 1] !== wi) list.push(wi);
  };
  for (let wi = 0; wi < words.length; wi++) {
    const w = words[wi]!;
    for (let i = 0; i + 1 < w.length; i++) {
      const key = pairKey(w[i]!, w[i + 1]!);
      pairCounts.set(key, (pairCounts.get(key) ?? 0) + freq[wi]!);
      note(key, wi);
    }
  }
  const heap = new PairHeap();
  for (const [key, count] of pairCounts) heap.push(count, key);

  // 3. Merge the most frequent pair until the vocabulary is full.
  const tokens = BYTE_TO_CHAR.slice();
  const tokenIds = new Map(tokens.map((t, id) => [t, id]));
  const merges: Array<[string, string]> = [];
  const seen = new Int32Array(words.length).fill(-1); // stamp: word already rewritten for this merge
  while (tokens.length < target) {
    const top = heap.pop();
    if (top === undefined) throw tooSmall(tokens.length, target, vocabSize, 'no pairs are left to merge');
    const current = pairCounts.get(top.key) ?? 0;
    if (current !== top.count) {
      if (current > 0) heap.push(current, top.key); // stale entry: re-file under its current count
      continue;
    }
    if (current < minFrequency) {
      throw tooSmall(tokens.length, target, vocabSize, `the most frequent remaining pair occurs ${current} times, under minFrequency ${minFrequency}`);
    }
    const a = Math.floor(top.key / SHIFT);
    const b = top.key % SHIFT;
    const merged = tokens[a]! + tokens[b]!;
    // Two different merges can spell the same string ("a"+"bc", "ab"+"c"): they share one id, as in `tokenizers`.
    let id = tokenIds.get(merged);
    if (id === undefined) {
      id = tokens.length;
      tokens.push(merged);
      tokenIds.set(merged, id);
    }
    merges.push([tokens[a]!, tokens[b]!]);

    const delta = new Map<number, number>();
    const stamp = merges.length;
    for (const wi of where.get(top.key) ?? []) {
      if (seen[wi] === stamp) continue;
      seen[wi] = stamp;
      const w = words[wi]!;
      const next = mergeWord(w, a, b, id);
      if (next.length === w.length) continue; // the pair left this word in an earlier merge
      const f = freq[wi]!;
      for (let i = 0; i + 1 < w.length; i++) addTo(delta, pairKey(w[i]!, w[i + 1]!), -f);
      for (let i = 0; i + 1 < next.length; i++) {
        const key = pairKey(next[i]!, next[i + 1]!);
        addTo(delta, key, f);
        if (next[i] === id || next[i + 1] === id) note(key, wi);
      }
      words[wi] = next;
    }
    where.delete(top.key);
    for (const [key, d] of delta) {
      if (d === 0) continue;
      const count = (pairCounts.get(key) ?? 0) + d;
      if (count > 0) pairCounts.set(key, count);
      else pairCounts.delete(key);
      if (d > 0) heap.push(count, key); // counts only rise for pairs next to the new token
    }
    if (merges.length % 64 === 0) progress('merge', textCount, words.length, tokens.length);
  }
  progress('merge', textCount, words.length, tokens.length);
  for (const s of specials) {
    if (tokenIds.has(s)) throw new ModelError('MDL_ERR_TOKENIZER_TRAINING', `special token ${JSON.stringify(s)} is also a learned token`);
  }
  return { tokens, merges, specialTokens: specials };
}

/** `w` with every non-overlapping occurrence of (a, b), left to right, replaced by `id` (a new array). */
export function mergeWord(w: readonly number[], a: number, b: number, id: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < w.length; i++) {
    if (w[i] === a && i + 1 < w.length && w[i + 1] === b) {
      out.push(id);
      i++;
    } else {
      out.push(w[i]!);
    }
  }
  return out;
}

function addTo(map: Map<number, number>, key: number, d: number): void {
  map.set(key, (map.get(key) ?? 0) + d);
}

function tooSmall(have: number, target: number, vocabSize: number, why: string): ModelError {
  return new ModelError(
    'MDL_ERR_TOKENIZER_TRAINING',
    `the corpus is too small for vocabSize ${vocabSize}: ${why} after ${have - 256} of ${target - 256} merges; use a smaller vocabSize or more text`,
  );
}

export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Max-heap of (count, pair key): highest count first, then the smaller key, so ties break deterministically. */
class PairHeap {
  #counts: number[] = [];
  #keys: number[] = [];

  push(count: number, key: number): void {
    this.#counts.push(count);
    this.#keys.push(key);
    let i = this.#counts.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#before(i, parent)) break;
      this.#swap(i, parent);
      i = parent;
    }
  }

  pop(): { count: number; key: number } | undefined {
    const n = this.#counts.length;
    if (n === 0) return undefined;
    const top = { count: this.#counts[0]!, key: this.#keys[0]! };
    this.#swap(0, n - 1);
    this.#counts.pop();
    this.#keys.pop();
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let best = i;
      if (l < n - 1 && this.#before(l, best)) best = l;
      if (r < n - 1 && this.#before(r, best)) best = r;
      if (best === i) break;
      this.#swap(i, best);
      i = best;
    }
    return top;
  }

  #before(i: number, j: number): boolean {
    const ci = this.#counts[i]!;
    const cj = this.#counts[j]!;
    return ci > cj || (ci === cj && this.#keys[i]! < this.#keys[j]!);
  }

  #swap(i: number, j: number): void {
    [this.#counts[i], this.#counts[j]] = [this.#counts[j]!, this.#counts[i]!];
    [this.#keys[i], this.#keys[j]] = [this.#keys[j]!, this.#keys[i]!];
  }
}
