/**
 * Corpus → token shards: reads documents from a .txt or .jsonl file (corpus-reader.ts, whose header gives the rules:
 * the same as `coordinator data prepare` reads by) or any stream of strings, holds out a share of
 * them for evaluation, tokenizes the rest, and writes both as flat little-endian token files plus an index.json
 * (shard-index.ts). Training then reads batches straight from the files (token-shard-reader.ts), so no process ever
 * holds a corpus's tokens in memory: the writer keeps one buffer of tokens per split.
 *
 * Which documents are held out depends only on the seed and each document's position, so the same corpus and seed
 * always give the same split. `<|endoftext|>` follows every document, as in GPT-2's training data.
 */
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { mix32 } from '../common/random.ts';
import { corpusFormat, isBlankDocument, newCorpusReadStats, readCorpusFile, type CorpusReadStats } from './corpus-reader.ts';
import { ModelError } from './errors.ts';
import { bytesPerToken, dtypeFor, SHARD_FORMAT, type ShardIndex, type SplitInfo, type SplitName, type TokenDtype } from './shard-index.ts';
import type { Tokenizer } from './tokenizer.ts';

export { readShardIndex, type ShardIndex, type SplitName } from './shard-index.ts';
export { TokenShardReader, type Batch, type ShardCursor, type TokenShardReaderOptions } from './token-shard-reader.ts';

export interface DataProgress {
  /** Input consumed so far, in UTF-8 bytes. */
  bytesDone: number;
  /** Size of the input, when known (a file, an array of documents). */
  bytesTotal: number | null;
  /** Tokens written so far, both splits. */
  tokens: number;
}

/** Where documents come from: a file path (.txt: documents separated by blank lines; .jsonl: {"text": ...} per line; corpus-reader.ts), or the documents. */
export type CorpusInput = string | Iterable<string> | AsyncIterable<string>;

export interface WriteShardsOptions {
  tokenizer: Tokenizer;
  /** Folder to write; created if missing. Existing shards there are replaced. */
  outDir: string;
  /** Share of documents held out, 0 to < 1. Default 0.05. */
  heldOutFraction?: number;
  /** Picks which documents are held out. Default 1337. */
  seed?: number;
  /** Tokens per shard file before a new one is started. Default 2^24 (32 MiB of uint16). */
  tokensPerShard?: number;
  onProgress?: (progress: DataProgress) => void;
  /** Added to while a corpus file is read: bytes, and the malformed JSONL lines skipped (corpus-reader.ts). */
  readStats?: CorpusReadStats;
}

const SHARD_FILE = /^(train|heldout)-\d{5}\.bin(\.tmp)?$/;

/** Tokens buffered per split before a write (4 MiB of uint32 at most). */
const FLUSH_TOKENS = 1 << 20;

/** Tokenizes `input` into `outDir`: train-NNNNN.bin, heldout-NNNNN.bin, tokenizer.json and, last, index.json. */
export async function writeTokenShards(input: CorpusInput, options: WriteShardsOptions): Promise<ShardIndex> {
  const { tokenizer, outDir, heldOutFraction = 0.05, seed = 1337, tokensPerShard = 1 << 24, onProgress, readStats } = options;
  const bad = (msg: string) => new ModelError('MDL_ERR_DATA_INPUT', msg);
  if (!(heldOutFraction >= 0 && heldOutFraction < 1)) throw bad(`heldOutFraction must be in [0, 1), got ${heldOutFraction}`);
  if (!Number.isInteger(seed)) throw bad(`seed must be an integer, got ${seed}`);
  if (!Number.isInteger(tokensPerShard) || tokensPerShard < 1) throw bad(`tokensPerShard must be a positive integer, got ${tokensPerShard}`);
  const eot = tokenizer.endOfText;
  if (eot === undefined) throw bad('the tokenizer has no <|endoftext|> token to separate documents');

  mkdirSync(outDir, { recursive: true });
  rmSync(join(outDir, 'index.json'), { force: true }); // until the new index lands, the folder is not a valid shard set
  for (const f of readdirSync(outDir)) if (SHARD_FILE.test(f)) rmSync(join(outDir, f));
  const tokenizerText = JSON.stringify(tokenizer.toJSON());
  writeFileSync(join(outDir, 'tokenizer.json'), tokenizerText);
  const dtype = dtypeFor(tokenizer.vocabSize);
  const writers = {
    train: new SplitWriter(outDir, 'train', dtype, tokensPerShard),
    heldOut: new SplitWriter(outDir, 'heldout', dtype, tokensPerShard),
  };

  const progress = { bytesDone: 0, bytesTotal: null as number | null, tokens: 0 };
  let lastReport = 0;
  const report = (force: boolean) => {
    if (!onProgress || (!force && progress.bytesDone - lastReport < 1 << 18)) return;
    lastReport = progress.bytesDone;
    onProgress({ ...progress });
  };
  try {
    let docIndex = 0;
    for await (const doc of readDocuments(input, progress, readStats)) {
      const split: SplitName = isHeldOut(seed, docIndex++, heldOutFraction) ? 'heldOut' : 'train';
      const ids = tokenizer.encodeOrdinary(doc);
      ids.push(eot);
      writers[split].add(ids);
      progress.tokens += ids.length;
      report(false);
    }
  } catch (err) {
    for (const w of Object.values(writers)) w.abort();
    throw err;
  }
  const index: ShardIndex = {
    format: SHARD_FORMAT,
    dtype,
    vocabSize: tokenizer.vocabSize,
    endOfText: eot,
    tokenizer: 'tokenizer.json',
    tokenizerSha256: createHash('sha256').update(tokenizerText).digest('hex'),
    heldOutFraction,
    seed,
    splits: { train: writers.train.finish(), heldOut: writers.heldOut.finish() },
  };
  const tmp = join(outDir, 'index.json.tmp');
  writeFileSync(tmp, JSON.stringify(index, null, 2) + '\n');
  renameSync(tmp, join(outDir, 'index.json'));
  report(true);
  return index;
}

/**
 * Whether document `i` is held out: a hash of (seed, i) read as a number in [0, 1) falls under `fraction`. Needs no
 * document count, so it works on a stream; the held-out share is `fraction` on average, not exactly.
 */
export function isHeldOut(seed: number, i: number, fraction: number): boolean {
  if (fraction <= 0) return false;
  return mix32(mix32(seed ^ 0x9e3779b9) ^ i) / 2 ** 32 < fraction;
}


/**
 * Documents of `input`, one at a time; `progress.bytesDone`/`bytesTotal` follow the reading. A file is read by
 * corpus-reader.ts's rules (`stats` counts the malformed JSONL lines it skips); a document that is empty or only
 * whitespace is skipped, from a file or from the documents themselves.
 */
export async function* readDocuments(input: CorpusInput, progress: Omit<DataProgress, 'tokens'> = { bytesDone: 0, bytesTotal: null }, stats: CorpusReadStats = newCorpusReadStats()): AsyncGenerator<string> {
  if (typeof input !== 'string') {
    if (Array.isArray(input)) progress.bytesTotal = input.reduce((n: number, d: string) => n + Buffer.byteLength(d), 0);
    for await (const doc of input) {
      progress.bytesDone += Buffer.byteLength(doc);
      if (!isBlankDocument(doc)) yield doc;
    }
    return;
  }
  const format = corpusFormat(input);
  if (!format) throw new ModelError('MDL_ERR_DATA_INPUT', `${input}: the corpus must be a .txt or .jsonl file`);
  try {
    progress.bytesTotal = statSync(input).size;
  } catch (err) {
    throw new ModelError('MDL_ERR_DATA_INPUT', `${input}: cannot read the corpus file (${(err as Error).message})`, { cause: err });
  }
  const start = stats.bytes;
  for await (const doc of readCorpusFile(input, format, stats)) {
    progress.bytesDone = stats.bytes - start; // ≈: a CRLF line has one byte more than counted
    yield doc;
  }
  progress.bytesDone = progress.bytesTotal; // the whole file was read
}

/** Appends one split's tokens to numbered shard files; files are written under a .tmp name and renamed when full. */
class SplitWriter {
  #dir: string;
  #prefix: string;
  #dtype: TokenDtype;
  #perShard: number;
  #buffer: Uint16Array | Uint32Array;
  #buffered = 0;
  #fd: number | null = null;
  #inShard = 0; // tokens in the open shard
  #shards: SplitInfo['shards'] = [];
  #tokens = 0;
  #documents = 0;

  constructor(dir: string, prefix: string, dtype: TokenDtype, perShard: number) {
    this.#dir = dir;
    this.#prefix = prefix;
    this.#dtype = dtype;
    this.#perShard = perShard;
    this.#buffer = dtype === 'uint16' ? new Uint16Array(FLUSH_TOKENS) : new Uint32Array(FLUSH_TOKENS);
  }

  add(ids: readonly number[]): void {
    this.#documents++;
    for (let i = 0; i < ids.length; ) {
      if (this.#inShard + this.#buffered === this.#perShard) this.#closeShard();
      const room = Math.min(this.#buffer.length - this.#buffered, this.#perShard - this.#inShard - this.#buffered);
      const n = Math.min(room, ids.length - i);
      this.#buffer.set(ids.slice(i, i + n), this.#buffered);
      this.#buffered += n;
      i += n;
      if (this.#buffered === this.#buffer.length) this.#flush();
    }
  }

  finish(): SplitInfo {
    if (this.#inShard + this.#buffered > 0) this.#closeShard();
    return { documents: this.#documents, tokens: this.#tokens, shards: this.#shards };
  }

  abort(): void {
    if (this.#fd !== null) closeSync(this.#fd);
    this.#fd = null;
  }

  #name(): string {
    return `${this.#prefix}-${String(this.#shards.length).padStart(5, '0')}.bin`;
  }

  #flush(): void {
    if (this.#buffered === 0) return;
    this.#fd ??= openSync(join(this.#dir, this.#name() + '.tmp'), 'w');
    const view = this.#buffer.subarray(0, this.#buffered);
    const bytes = Buffer.from(view.buffer, view.byteOffset, view.byteLength);
    // The files are little-endian on every machine; typed arrays use the host's order.
    if (endianness() === 'BE') (this.#dtype === 'uint16' ? bytes.swap16() : bytes.swap32());
    writeSync(this.#fd, bytes);
    this.#inShard += this.#buffered;
    this.#tokens += this.#buffered;
    this.#buffered = 0;
  }

  #closeShard(): void {
    this.#flush();
    if (this.#fd === null) return;
    closeSync(this.#fd);
    this.#fd = null;
    const file = this.#name();
    renameSync(join(this.#dir, file + '.tmp'), join(this.#dir, file));
    this.#shards.push({ file, tokens: this.#inShard });
    this.#inShard = 0;
  }
}

/** Bytes of one token in `dtype`, re-exported for callers that size buffers. */
export { bytesPerToken };
