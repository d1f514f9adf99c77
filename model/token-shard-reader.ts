/**
 * Training batches from token shards, deterministic and resumable, split across data-parallel ranks.
 *
 * A split's shards are read in order as windows of the token stream (like llm.c's loader): a global batch of
 * B = batchSize × worldSize rows starts at the cursor, row i is tokens [i·seq, i·seq + seq + 1) from there (inputs
 * and, shifted by one, targets), and the cursor then moves B·seq tokens on. When a shard has too few tokens left
 * for a whole global batch the rest is skipped and reading goes on at the start of the next shard, after the last
 * shard at the first (the next epoch). Rank r gets rows [r·b, (r+1)·b) of each global batch, so N ranks of b rows
 * together read exactly what one rank of N·b rows reads: the oracle for data-parallel equivalence tests.
 *
 * A batch depends only on the cursor it is read at, so saving the cursor with a checkpoint and passing it back
 * resumes the data where it stopped. Reads are positioned file reads: only the batch is ever in memory.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { ModelError } from './errors.ts';
import { bytesPerToken, readShardIndex, type ShardIndex, type SplitInfo, type SplitName } from './shard-index.ts';

/** Where the next global batch starts: a shard of the split and a token offset in it. */
export interface ShardCursor {
  shard: number;
  offset: number;
}

export interface TokenShardReaderOptions {
  /** Default 'train'. */
  split?: SplitName;
  /** Rows per rank (b); the global batch is batchSize × worldSize. */
  batchSize: number;
  /** Tokens per row that the model sees; each row holds seqLen + 1 (the targets are shifted by one). */
  seqLen: number;
  /** This reader's data-parallel rank, 0 ≤ rank < worldSize. Default 0 of 1. */
  rank?: number;
  worldSize?: number;
  /** When given, the shards must have been made by the tokenizer with this sha256 (of its tokenizer.json). */
  tokenizerSha256?: string;
  /** Where to start. Default { shard: 0, offset: 0 }. */
  cursor?: ShardCursor;
}

export interface Batch {
  /** [batch, seqLen + 1] row-major token ids. */
  tokens: Int32Array;
  batch: number;
  seqLen: number;
  /** Where this global batch was read (normalized: the shard and offset actually used). */
  cursor: ShardCursor;
  /** Where the next global batch starts: save this to resume. */
  next: ShardCursor;
}

/** Tokens one global batch of `globalBatch` sequences of `seqLen` takes from one shard: the inputs and the last target. */
export const globalBatchSpan = (globalBatch: number, seqLen: number): number => globalBatch * seqLen + 1;

/** Whether some shard of `split` holds `span` tokens, i.e. can serve a global batch. */
export const splitServes = (split: SplitInfo, span: number): boolean => split.shards.some((s) => s.tokens >= span);

export class TokenShardReader {
  #dir: string;
  #index: ShardIndex;
  #split: SplitInfo;
  #batch: number;
  #seq: number;
  #rank: number;
  #world: number;
  #cursor: ShardCursor;

  constructor(dir: string, options: TokenShardReaderOptions) {
    const { split = 'train', batchSize, seqLen, rank = 0, worldSize = 1, tokenizerSha256, cursor = { shard: 0, offset: 0 } } = options;
    const fail = (msg: string) => new ModelError('MDL_ERR_BATCH', msg);
    if (!Number.isInteger(batchSize) || batchSize < 1) throw fail(`batchSize must be a positive integer, got ${batchSize}`);
    if (!Number.isInteger(seqLen) || seqLen < 1) throw fail(`seqLen must be a positive integer, got ${seqLen}`);
    if (!Number.isInteger(worldSize) || worldSize < 1) throw fail(`worldSize must be a positive integer, got ${worldSize}`);
    if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize) throw fail(`rank must be an integer in [0, ${worldSize}), got ${rank}`);
    this.#dir = dir;
    this.#index = readShardIndex(dir);
    if (tokenizerSha256 !== undefined && tokenizerSha256 !== this.#index.tokenizerSha256) {
      throw new ModelError('MDL_ERR_SHARD', `${dir}: shards were made by tokenizer ${this.#index.tokenizerSha256.slice(0, 12)}…, not the expected ${tokenizerSha256.slice(0, 12)}…`);
    }
    this.#split = this.#index.splits[split];
    this.#batch = batchSize;
    this.#seq = seqLen;
    this.#rank = rank;
    this.#world = worldSize;
    const span = this.#globalSpan();
    if (!splitServes(this.#split, span)) {
      const largest = Math.max(0, ...this.#split.shards.map((s) => s.tokens));
      throw fail(`the ${split} split cannot serve a global batch of ${batchSize * worldSize} × ${seqLen} (${span} tokens): its largest shard has ${largest} tokens`);
    }
    this.#cursor = this.#normalize(cursor);
  }

  get index(): ShardIndex {
    return this.#index;
  }

  /** Where the next `next()` reads. */
  get cursor(): ShardCursor {
    return { ...this.#cursor };
  }

  /** This rank's rows of the global batch at `cursor`; the same cursor always gives the same rows. */
  batchAt(cursor: ShardCursor): Batch {
    const at = this.#normalize(cursor);
    const shard = this.#split.shards[at.shard]!;
    const rowTokens = this.#batch * this.#seq + 1; // this rank's rows overlap by one token
    const start = at.offset + this.#rank * this.#batch * this.#seq;
    const ids = this.#read(shard.file, start, rowTokens);
    const tokens = new Int32Array(this.#batch * (this.#seq + 1));
    for (let row = 0; row < this.#batch; row++) {
      tokens.set(ids.subarray(row * this.#seq, row * this.#seq + this.#seq + 1), row * (this.#seq + 1));
    }
    const next = { shard: at.shard, offset: at.offset + this.#world * this.#batch * this.#seq };
    return { tokens, batch: this.#batch, seqLen: this.#seq, cursor: at, next };
  }

  /** The batch at the current cursor, then moves the cursor past it. */
  next(): Batch {
    const batch = this.batchAt(this.#cursor);
    this.#cursor = this.#normalize(batch.next);
    return batch;
  }

  /** Moves the cursor (to resume from a checkpoint). */
  seek(cursor: ShardCursor): void {
    this.#cursor = this.#normalize(cursor);
  }

  /** Tokens one global batch needs from one shard. */
  #globalSpan(): number {
    return globalBatchSpan(this.#world * this.#batch, this.#seq);
  }

  /** `cursor` moved to the first place at or after it where a whole global batch fits in one shard. */
  #normalize(cursor: ShardCursor): ShardCursor {
    const shards = this.#split.shards;
    const { shard, offset } = cursor ?? {};
    if (!Number.isInteger(shard) || shard < 0 || shard >= shards.length || !Number.isInteger(offset) || offset < 0 || offset > shards[shard]!.tokens) {
      throw new ModelError('MDL_ERR_BATCH', `cursor ${JSON.stringify(cursor)} is outside the ${shards.length} shard(s) of this split`);
    }
    let at = { shard, offset };
    // At most one full pass: the constructor checked that some shard fits a global batch.
    for (let i = 0; i <= shards.length; i++) {
      if (shards[at.shard]!.tokens - at.offset >= this.#globalSpan()) return at;
      at = { shard: (at.shard + 1) % shards.length, offset: 0 };
    }
    throw new ModelError('MDL_ERR_BATCH', 'no shard can serve a global batch');
  }

  #read(file: string, start: number, count: number): Uint16Array | Uint32Array {
    const width = bytesPerToken(this.#index.dtype);
    const bytes = Buffer.alloc(count * width);
    const fd = openSync(join(this.#dir, file), 'r');
    try {
      const got = readSync(fd, bytes, 0, bytes.length, start * width);
      if (got !== bytes.length) throw new ModelError('MDL_ERR_SHARD', `${file}: short read at token ${start} (${got} of ${bytes.length} bytes)`);
    } finally {
      closeSync(fd);
    }
    if (endianness() === 'BE') (width === 2 ? bytes.swap16() : bytes.swap32());
    return width === 2 ? new Uint16Array(bytes.buffer, bytes.byteOffset, count) : new Uint32Array(bytes.buffer, bytes.byteOffset, count);
  }
}
