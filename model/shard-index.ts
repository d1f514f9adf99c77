/**
 * The index of a folder of token shards (index.json): which files hold which split's tokens, their dtype and the
 * tokenizer that made them. The writer (data.ts) writes it last, so a folder with an index is complete; the reader
 * (token-shard-reader.ts) trusts nothing in it until `readShardIndex` has checked it against the files.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ModelError } from './errors.ts';

export const SHARD_FORMAT = 'meshtrain-token-shards/1';
export type TokenDtype = 'uint16' | 'uint32';
export type SplitName = 'train' | 'heldOut';

export interface ShardFile {
  /** File name inside the shard folder. */
  file: string;
  /** Tokens in it (file size = tokens × bytes per token). */
  tokens: number;
}

export interface SplitInfo {
  documents: number;
  tokens: number;
  shards: ShardFile[];
}

export interface ShardIndex {
  format: typeof SHARD_FORMAT;
  /** Little-endian unsigned integers: uint16 when the vocabulary fits (≤ 65536 ids), else uint32. */
  dtype: TokenDtype;
  vocabSize: number;
  /** Id of `<|endoftext|>`, written after every document. */
  endOfText: number;
  /** The tokenizer.json in this folder and the sha256 of its bytes. */
  tokenizer: string;
  tokenizerSha256: string;
  /** Share of documents held out, and the seed that picked them. */
  heldOutFraction: number;
  seed: number;
  splits: Record<SplitName, SplitInfo>;
}

export const bytesPerToken = (dtype: TokenDtype) => (dtype === 'uint16' ? 2 : 4);
export const dtypeFor = (vocabSize: number): TokenDtype => (vocabSize <= 65536 ? 'uint16' : 'uint32');

/** Reads and checks `dir`/index.json: its fields, and that every shard file exists with the size it claims. */
export function readShardIndex(dir: string): ShardIndex {
  const path = join(dir, 'index.json');
  const fail = (msg: string, cause?: unknown): never => {
    throw new ModelError('MDL_ERR_SHARD', `${path}: ${msg}`, { cause });
  };
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    return fail(`cannot read the shard index (${(err as Error).message})`, err);
  }
  const index = raw as ShardIndex;
  if (typeof raw !== 'object' || raw === null) return fail('not a JSON object');
  if (index.format !== SHARD_FORMAT) return fail(`format must be "${SHARD_FORMAT}", got ${JSON.stringify(index.format)}`);
  if (index.dtype !== 'uint16' && index.dtype !== 'uint32') return fail(`dtype must be "uint16" or "uint32", got ${JSON.stringify(index.dtype)}`);
  if (!Number.isInteger(index.vocabSize) || index.vocabSize < 1) return fail('vocabSize must be a positive integer');
  if (index.dtype !== dtypeFor(index.vocabSize)) return fail(`dtype ${index.dtype} does not match vocabSize ${index.vocabSize}`);
  if (!Number.isInteger(index.endOfText) || index.endOfText < 0 || index.endOfText >= index.vocabSize) return fail('endOfText must be an id below vocabSize');
  if (typeof index.tokenizerSha256 !== 'string' || !/^[0-9a-f]{64}$/.test(index.tokenizerSha256)) return fail('tokenizerSha256 must be 64 hex digits');
  if (typeof index.splits !== 'object' || index.splits === null) return fail('splits is missing');
  for (const name of ['train', 'heldOut'] as const) {
    const split = index.splits[name];
    if (typeof split !== 'object' || split === null || !Array.isArray(split.shards)) return fail(`splits.${name} must have a shards array`);
    let total = 0;
    split.shards.forEach((s, i) => {
      const where = `splits.${name}.shards[${i}]`;
      if (typeof s?.file !== 'string' || !/^[\w.-]+$/.test(s.file)) return fail(`${where}.file must be a plain file name`);
      if (!Number.isInteger(s.tokens) || s.tokens < 0) return fail(`${where}.tokens must be a non-negative integer`);
      let size: number;
      try {
        size = statSync(join(dir, s.file)).size;
      } catch (err) {
        return fail(`${where}: shard file ${s.file} is missing`, err);
      }
      const want = s.tokens * bytesPerToken(index.dtype);
      if (size !== want) return fail(`${where}: ${s.file} has ${size} bytes, the index says ${s.tokens} ${index.dtype} tokens (${want} bytes)`);
      total += s.tokens;
    });
    if (split.tokens !== total) return fail(`splits.${name}.tokens is ${split.tokens} but its shards hold ${total}`);
  }
  return index;
}
