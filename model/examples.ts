/**
 * Instruction and preference examples on disk, and the batches training reads from them: the data of `sft` and
 * `dpo` jobs (and of a `distill` job that distils on conversations). Pre-training data are token shards
 * (data.ts); examples differ in three ways: each example is whole (never cut across rows), each token carries
 * whether it is learned (the chat template's mask), and a preference example is two sequences that must stay
 * in one micro-batch.
 *
 * Input, one JSON object per line (.jsonl):
 *   chat:       {"prompt": "...", "response": "..."}  or  {"messages": [{"role": "user", "content": "..."}, …]}
 *   preference: {"prompt": "..." | [messages…], "chosen": "...", "rejected": "..."}
 *
 * On disk (`prepareExamples`), per split: `<split>.tokens` (little-endian ids, uint16 or uint32), `<split>.mask`
 * (one byte per token: 1 = learned), `<split>.offsets` (uint32 LE, sequences + 1 cumulative token offsets), the
 * held-out records as `heldout.jsonl` for the evaluation suites, and `examples.json` last. Examples longer than
 * `maxTokens` are dropped and counted, never silently cut: a cut would drop the very response being taught.
 *
 * Reading (`ExampleReader`): a global batch is G = batchSize × worldSize consecutive examples of a per-epoch
 * seeded permutation, starting at the cursor {shard: epoch, offset: position}; rank r takes examples
 * [r·b, (r+1)·b) of it, so, as with token shards, N ranks of b read exactly what one rank of N·b reads. A row is
 * a sequence padded with <|endoftext|> to seqLen + 1 tokens; weights[t] says whether target t (token t + 1) is
 * learned, so padding and prompts weigh 0.
 *
 * Long: the chat and preference example formats: one record shape parsed, prepared into splits and read back
 * in batches; the three halves agree because they sit together.
 */
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, mkdirSync, openSync, readFileSync, readSync, renameSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { checkMessages, endOfText, renderChat, renderPair, type ChatMessage, type RenderedSequence } from './chat-template.ts';
import { isHeldOut } from './data.ts';
import { ModelError } from './errors.ts';
import { bytesPerToken, dtypeFor, type SplitName, type TokenDtype } from './shard-index.ts';
import type { ShardCursor } from './token-shard-reader.ts';
import type { Tokenizer } from './tokenizer.ts';

export const EXAMPLES_FORMAT = 'meshtrain-examples/1';
export type ExampleFormat = 'chat' | 'preference';

export interface ExampleSplit {
  examples: number;
  sequences: number;
  tokens: number;
  learnedTokens: number;
}

export interface ExamplesIndex {
  format: typeof EXAMPLES_FORMAT;
  kind: ExampleFormat;
  rowsPerExample: 1 | 2;
  dtype: TokenDtype;
  vocabSize: number;
  endOfText: number;
  tokenizerSha256: string;
  maxTokens: number;
  heldOutFraction: number;
  seed: number;
  splits: Record<SplitName, ExampleSplit>;
  /** Examples left out, by reason. */
  dropped: { tooLong: number };
}

/** A held-out example as the evaluation suites read it back (heldout.jsonl). */
export type HeldOutRecord =
  | { kind: 'chat'; prompt: ChatMessage[]; response: string }
  | { kind: 'preference'; prompt: ChatMessage[]; chosen: string; rejected: string };

// ---------------------------------------------------------------------------------------------------- parsing

/** One JSONL record as a held-out record (the last assistant turn of a chat is its response). */
export function parseExample(raw: unknown, format: ExampleFormat, where: string): HeldOutRecord {
  const fail = (msg: string): never => {
    throw new ModelError('MDL_ERR_DATA_INPUT', `${where}: ${msg}`);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('each line must be a JSON object');
  const r = raw as Record<string, unknown>;
  const prompt = (p: unknown): ChatMessage[] =>
    typeof p === 'string' ? [{ role: 'user', content: p }] : checkMessages(p, where, false);
  if (format === 'preference') {
    if (typeof r.chosen !== 'string' || typeof r.rejected !== 'string') fail('a preference example needs string "chosen" and "rejected"');
    if (r.prompt === undefined) fail('a preference example needs a "prompt" (a string or messages)');
    return { kind: 'preference', prompt: prompt(r.prompt), chosen: r.chosen as string, rejected: r.rejected as string };
  }
  if (r.messages !== undefined) {
    const messages = checkMessages(r.messages, where, true);
    const last = messages.at(-1)!;
    if (last.role !== 'assistant') fail('a conversation must end with the assistant turn it teaches');
    return { kind: 'chat', prompt: messages.slice(0, -1), response: last.content };
  }
  if (typeof r.prompt !== 'string' || typeof r.response !== 'string') fail('a chat example needs string "prompt" and "response", or "messages"');
  return { kind: 'chat', prompt: prompt(r.prompt), response: r.response as string };
}

/** The sequences an example trains on: one for chat, chosen then rejected for a preference pair. */
export function renderExample(example: HeldOutRecord, tokenizer: Tokenizer): RenderedSequence[] {
  if (example.kind === 'preference') return renderPair(example.prompt, example.chosen, example.rejected, tokenizer);
  return [renderChat([...example.prompt, { role: 'assistant', content: example.response }], tokenizer)];
}

// ---------------------------------------------------------------------------------------------------- writing

export interface PrepareExamplesOptions {
  corpus: string; // a .jsonl path
  outDir: string;
  format: ExampleFormat;
  tokenizer: Tokenizer;
  tokenizerSha256: string;
  /** Longest sequence kept, in tokens (a job's seqLen + 1). */
  maxTokens: number;
  heldOutFraction: number;
  seed: number;
  onProgress?: (p: { bytesDone: number; bytesTotal: number | null; examples: number }) => void;
}

/** Streams `corpus` into `outDir` (see the top of the file); returns the index it wrote last. */
export async function prepareExamples(o: PrepareExamplesOptions): Promise<ExamplesIndex> {
  if (!/\.jsonl$/i.test(o.corpus)) throw new ModelError('MDL_ERR_DATA_INPUT', `${o.corpus}: instruction and preference data must be a .jsonl file`);
  mkdirSync(o.outDir, { recursive: true });
  const dtype = dtypeFor(o.tokenizer.vocabSize);
  const writers = { train: new SplitFiles(o.outDir, 'train', dtype), heldOut: new SplitFiles(o.outDir, 'heldOut', dtype) };
  const heldOutRecords: string[] = [];
  const dropped = { tooLong: 0 };
  let bytesTotal: number | null = null;
  try {
    bytesTotal = statSync(o.corpus).size;
  } catch (err) {
    throw new ModelError('MDL_ERR_DATA_INPUT', `${o.corpus}: cannot read the examples file (${(err as Error).message})`, { cause: err });
  }
  let index = 0, lastReport = 0;
  for await (const { example, bytesDone } of readExampleFile(o.corpus, o.format)) {
    // Numbered before the length check, so the split of an example never depends on which others were dropped
    // (and the tokenizer trained on the training split, coordinator/jobs/dataset-worker.ts, sees the same split).
    const split: SplitName = isHeldOut(o.seed, index++, o.heldOutFraction) ? 'heldOut' : 'train';
    const sequences = renderExample(example, o.tokenizer);
    if (sequences.some((s) => s.ids.length > o.maxTokens)) {
      dropped.tooLong++;
      continue;
    }
    writers[split].add(sequences);
    if (split === 'heldOut') heldOutRecords.push(JSON.stringify(example));
    if (o.onProgress && performance.now() - lastReport > 200) {
      lastReport = performance.now();
      o.onProgress({ bytesDone, bytesTotal, examples: index });
    }
  }
  const splits = { train: writers.train.finish(), heldOut: writers.heldOut.finish() };
  if (splits.train.examples === 0) {
    throw new ModelError('MDL_ERR_DATA_INPUT', `${o.corpus}: no usable ${o.format} example for training (${dropped.tooLong} longer than ${o.maxTokens} tokens)`);
  }
  writeFileSync(join(o.outDir, 'heldout.jsonl'), heldOutRecords.map((l) => l + '\n').join(''));
  const result: ExamplesIndex = {
    format: EXAMPLES_FORMAT,
    kind: o.format,
    rowsPerExample: o.format === 'preference' ? 2 : 1,
    dtype,
    vocabSize: o.tokenizer.vocabSize,
    endOfText: endOfText(o.tokenizer),
    tokenizerSha256: o.tokenizerSha256,
    maxTokens: o.maxTokens,
    heldOutFraction: o.heldOutFraction,
    seed: o.seed,
    splits,
    dropped,
  };
  writeFileSync(join(o.outDir, 'examples.json.tmp'), JSON.stringify(result, null, 2) + '\n');
  renameSync(join(o.outDir, 'examples.json.tmp'), join(o.outDir, 'examples.json'));
  o.onProgress?.({ bytesDone: bytesTotal, bytesTotal, examples: index });
  return result;
}

/**
 * The examples of a .jsonl file in order, streamed, each checked (`parseExample`); a line that is not JSON or not
 * an example fails with MDL_ERR_DATA_INPUT naming the file and line. Blank lines are skipped. `bytesDone` follows
 * the reading (for progress).
 */
export async function* readExampleFile(path: string, format: ExampleFormat): AsyncGenerator<{ example: HeldOutRecord; bytesDone: number }> {
  const lines = createInterface({ input: createReadStream(path, { encoding: 'utf8' }), crlfDelay: Infinity });
  let lineNo = 0, bytesDone = 0;
  for await (const line of lines) {
    lineNo++;
    bytesDone += Buffer.byteLength(line) + 1;
    if (line.trim() === '') continue;
    let raw: unknown;
    try {
      raw = JSON.parse(line.replace(/^\uFEFF/, ''));
    } catch (err) {
      throw new ModelError('MDL_ERR_DATA_INPUT', `${path}:${lineNo}: not JSON (${(err as Error).message})`, { cause: err });
    }
    yield { example: parseExample(raw, format, `${path}:${lineNo}`), bytesDone };
  }
}

/** Appends one split's sequences to its three files. */
class SplitFiles {
  #fds: { tokens: number; mask: number };
  #dir: string;
  #split: SplitName;
  #dtype: TokenDtype;
  #offsets: number[] = [0];
  #info: ExampleSplit = { examples: 0, sequences: 0, tokens: 0, learnedTokens: 0 };

  constructor(dir: string, split: SplitName, dtype: TokenDtype) {
    this.#dir = dir;
    this.#split = split;
    this.#dtype = dtype;
    this.#fds = { tokens: openSync(join(dir, `${split}.tokens`), 'w'), mask: openSync(join(dir, `${split}.mask`), 'w') };
  }

  add(sequences: readonly RenderedSequence[]): void {
    this.#info.examples++;
    for (const s of sequences) {
      const ids = this.#dtype === 'uint16' ? Uint16Array.from(s.ids) : Uint32Array.from(s.ids);
      const bytes = Buffer.from(ids.buffer, ids.byteOffset, ids.byteLength);
      if (endianness() === 'BE') (this.#dtype === 'uint16' ? bytes.swap16() : bytes.swap32());
      writeSync(this.#fds.tokens, bytes);
      writeSync(this.#fds.mask, Uint8Array.from(s.trained));
      this.#info.sequences++;
      this.#info.tokens += s.ids.length;
      this.#info.learnedTokens += s.trained.reduce((a, b) => a + b, 0);
      this.#offsets.push(this.#info.tokens);
    }
  }

  finish(): ExampleSplit {
    closeSync(this.#fds.tokens);
    closeSync(this.#fds.mask);
    if (this.#info.tokens >= 2 ** 32) throw new ModelError('MDL_ERR_DATA_INPUT', `the ${this.#split} split has ${this.#info.tokens} tokens; at most 2^32 fit its offsets`);
    const offsets = Uint32Array.from(this.#offsets);
    const bytes = Buffer.from(offsets.buffer);
    if (endianness() === 'BE') bytes.swap32();
    writeFileSync(join(this.#dir, `${this.#split}.offsets`), bytes);
    return { ...this.#info };
  }
}

// ---------------------------------------------------------------------------------------------------- reading

export function readExamplesIndex(dir: string): ExamplesIndex {
  const path = join(dir, 'examples.json');
  let index: ExamplesIndex;
  try {
    index = JSON.parse(readFileSync(path, 'utf8')) as ExamplesIndex;
  } catch (err) {
    throw new ModelError('MDL_ERR_SHARD', `${path}: cannot read the examples index (${(err as Error).message})`, { cause: err });
  }
  if (index?.format !== EXAMPLES_FORMAT) throw new ModelError('MDL_ERR_SHARD', `${path}: format is ${JSON.stringify(index?.format)}, expected ${EXAMPLES_FORMAT}`);
  return index;
}

/** The held-out examples (heldout.jsonl) for the evaluation suites. */
export function readHeldOutRecords(dir: string): HeldOutRecord[] {
  return parseHeldOutRecords(readFileSync(join(dir, 'heldout.jsonl'), 'utf8'));
}

/** heldout.jsonl's text as records (written by prepareExamples, so already checked). */
export function parseHeldOutRecords(text: string): HeldOutRecord[] {
  return text.split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l) as HeldOutRecord);
}

export interface ExampleBatch {
  /** [rows, seqLen + 1] ids, rows = batchSize × rowsPerExample. */
  tokens: Int32Array;
  /** [rows, seqLen]: 1 where target t (token t + 1) is learned. */
  weights: Float32Array;
  rows: number;
  seqLen: number;
  cursor: ShardCursor;
  next: ShardCursor;
}

export interface ExampleReaderOptions {
  split?: SplitName;
  batchSize: number; // examples per rank
  seqLen: number;
  rank?: number;
  worldSize?: number;
  tokenizerSha256?: string;
  cursor?: ShardCursor;
}

export class ExampleReader {
  readonly index: ExamplesIndex;
  #dir: string;
  #split: SplitName;
  #offsets: Uint32Array;
  #b: number;
  #seq: number;
  #rank: number;
  #world: number;
  #cursor: ShardCursor;
  #order = new Map<number, Uint32Array>(); // permutation per epoch (the last two)

  constructor(dir: string, o: ExampleReaderOptions) {
    const { split = 'train', batchSize, seqLen, rank = 0, worldSize = 1, tokenizerSha256, cursor = { shard: 0, offset: 0 } } = o;
    const fail = (msg: string) => new ModelError('MDL_ERR_BATCH', msg);
    if (!Number.isInteger(batchSize) || batchSize < 1) throw fail(`batchSize must be a positive integer, got ${batchSize}`);
    if (!Number.isInteger(worldSize) || worldSize < 1 || !Number.isInteger(rank) || rank < 0 || rank >= worldSize) throw fail(`rank ${rank} of ${worldSize} is not a valid rank`);
    this.#dir = dir;
    this.index = readExamplesIndex(dir);
    if (tokenizerSha256 !== undefined && tokenizerSha256 !== this.index.tokenizerSha256) {
      throw new ModelError('MDL_ERR_SHARD', `${dir}: examples were tokenized by ${this.index.tokenizerSha256.slice(0, 12)}…, not the expected ${tokenizerSha256.slice(0, 12)}…`);
    }
    this.#split = split;
    const raw = readFileSync(join(dir, `${split}.offsets`));
    if (endianness() === 'BE') raw.swap32();
    this.#offsets = new Uint32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
    const count = this.index.splits[split].examples;
    if (this.#offsets.length !== count * this.index.rowsPerExample + 1) throw new ModelError('MDL_ERR_SHARD', `${dir}/${split}.offsets does not match examples.json`);
    let longest = 0;
    for (let i = 1; i < this.#offsets.length; i++) longest = Math.max(longest, this.#offsets[i]! - this.#offsets[i - 1]!);
    // A row is never cut: a cut would drop the very reply being taught (prepareExamples drops what exceeds maxTokens).
    if (longest > seqLen + 1) throw fail(`the ${split} split has a ${longest}-token sequence; seqLen ${seqLen} holds at most ${seqLen + 1}`);
    this.#b = batchSize;
    this.#seq = seqLen;
    this.#rank = rank;
    this.#world = worldSize;
    if (count < batchSize * worldSize) throw fail(`the ${split} split has ${count} examples, fewer than a global batch of ${batchSize * worldSize}`);
    this.#cursor = this.#normalize(cursor);
  }

  get cursor(): ShardCursor {
    return { ...this.#cursor };
  }

  next(): ExampleBatch {
    const batch = this.batchAt(this.#cursor);
    this.#cursor = this.#normalize(batch.next);
    return batch;
  }

  batchAt(cursor: ShardCursor): ExampleBatch {
    const at = this.#normalize(cursor);
    const per = this.index.rowsPerExample, T = this.#seq;
    const rows = this.#b * per;
    const tokens = new Int32Array(rows * (T + 1)).fill(this.index.endOfText);
    const weights = new Float32Array(rows * T);
    const order = this.#orderOf(at.shard);
    for (let e = 0; e < this.#b; e++) {
      const example = order[at.offset + this.#rank * this.#b + e]!;
      for (let k = 0; k < per; k++) {
        const seq = example * per + k, row = e * per + k;
        const start = this.#offsets[seq]!, length = this.#offsets[seq + 1]! - start;
        const { ids, mask } = this.#read(start, Math.min(length, T + 1));
        tokens.set(ids, row * (T + 1));
        for (let t = 0; t + 1 < ids.length; t++) weights[row * T + t] = mask[t + 1]!;
      }
    }
    return { tokens, weights, rows, seqLen: T, cursor: at, next: { shard: at.shard, offset: at.offset + this.#b * this.#world } };
  }

  /** Epoch `epoch`'s order of examples: the held-out split in file order, training shuffled by (seed, epoch). */
  #orderOf(epoch: number): Uint32Array {
    let order = this.#order.get(epoch);
    if (order) return order;
    const n = this.index.splits[this.#split].examples;
    order = new Uint32Array(n).map((_, i) => i);
    if (this.#split === 'train') {
      let s = (this.index.seed ^ Math.imul(epoch + 1, 0x9e3779b9)) >>> 0; // mulberry32 over (seed, epoch)
      const rand = () => {
        s = (s + 0x6d2b79f5) >>> 0;
        let t = Math.imul(s ^ (s >>> 15), 1 | s);
        t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
      };
      for (let i = n - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
    }
    if (this.#order.size >= 2) this.#order.delete(this.#order.keys().next().value!);
    this.#order.set(epoch, order);
    return order;
  }

  /** The first position at or after `cursor` where a whole global batch fits in its epoch. */
  #normalize(cursor: ShardCursor): ShardCursor {
    const { shard, offset } = cursor ?? {};
    if (!Number.isInteger(shard) || shard < 0 || !Number.isInteger(offset) || offset < 0) throw new ModelError('MDL_ERR_BATCH', `cursor ${JSON.stringify(cursor)} is not an example position`);
    const n = this.index.splits[this.#split].examples;
    return offset + this.#b * this.#world <= n ? { shard, offset } : { shard: shard + 1, offset: 0 };
  }

  #read(start: number, count: number): { ids: Uint16Array | Uint32Array; mask: Uint8Array } {
    const width = bytesPerToken(this.index.dtype);
    const bytes = Buffer.alloc(count * width), mask = Buffer.alloc(count);
    for (const [file, buf, at] of [[`${this.#split}.tokens`, bytes, start * width], [`${this.#split}.mask`, mask, start]] as const) {
      const fd = openSync(join(this.#dir, file), 'r');
      try {
        const got = readSync(fd, buf, 0, buf.length, at);
        if (got !== buf.length) throw new ModelError('MDL_ERR_SHARD', `${file}: short read at token ${start}`);
      } finally {
        closeSync(fd);
      }
    }
    if (endianness() === 'BE') (width === 2 ? bytes.swap16() : bytes.swap32());
    const ids = width === 2 ? new Uint16Array(bytes.buffer, bytes.byteOffset, count) : new Uint32Array(bytes.buffer, bytes.byteOffset, count);
    return { ids, mask: new Uint8Array(mask.buffer, mask.byteOffset, count) };
  }
}

/** sha256 of a tokenizer.json's bytes, as the indexes record it. */
export function tokenizerDigest(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}
