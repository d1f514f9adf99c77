/**
 * Corpus → token shards → training batches: what the shards hold, the held-out split, the index checks, and the
 * reader's determinism, cursor resume and data-parallel rank split.
 * Run: node --import tsx --test test/model/data.test.ts
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BYTE_TO_CHAR } from '../../model/byte-level.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { newCorpusReadStats } from '../../model/corpus-reader.ts';
import { isHeldOut, readShardIndex, TokenShardReader, writeTokenShards, type DataProgress, type ShardIndex, type SplitName } from '../../model/data.ts';
import { ModelError } from '../../model/errors.ts';
import { END_OF_TEXT, Tokenizer, trainBpe } from '../../model/tokenizer.ts';

let root: string;
let tokenizer: Tokenizer;
/** 120 short real documents: paragraphs-sized slices of the demo corpus. */
const DOCS = loadDemoCorpus().documents.slice(0, 40).flatMap((d) => [d.slice(0, 700), d.slice(700, 1500), d.slice(1500, 1900)]);
let dirCount = 0;
const freshDir = () => join(root, `shards-${dirCount++}`);

before(async () => {
  root = mkdtempSync(join(tmpdir(), 'meshtrain-data-'));
  tokenizer = await trainBpe(DOCS, { vocabSize: 600 });
});
after(() => rmSync(root, { recursive: true, force: true }));

/** All token ids of a split, shards concatenated, read straight from the files. */
function splitTokens(dir: string, index: ShardIndex, split: SplitName): number[] {
  const out: number[] = [];
  for (const s of index.splits[split].shards) {
    const buf = readFileSync(join(dir, s.file));
    for (let i = 0; i < s.tokens; i++) out.push(index.dtype === 'uint16' ? buf.readUInt16LE(2 * i) : buf.readUInt32LE(4 * i));
  }
  return out;
}

/** The documents `ids` holds, split at <|endoftext|> (which ends every document). */
function documentsOf(ids: number[]): string[] {
  const docs: string[] = [];
  let start = 0;
  ids.forEach((id, i) => {
    if (id === tokenizer.endOfText) {
      docs.push(tokenizer.decode(ids.slice(start, i)));
      start = i + 1;
    }
  });
  assert.equal(start, ids.length, 'the last document must end with <|endoftext|>');
  return docs;
}

describe('writing shards', () => {
  test('the shards hold every document once, in order, each followed by <|endoftext|>, split into train and held-out', async () => {
    const dir = freshDir();
    const index = await writeTokenShards(DOCS, { tokenizer, outDir: dir, heldOutFraction: 0.2, seed: 7 });
    const train = documentsOf(splitTokens(dir, index, 'train'));
    const heldOut = documentsOf(splitTokens(dir, index, 'heldOut'));
    assert.deepEqual(train, DOCS.filter((_, i) => !isHeldOut(7, i, 0.2)));
    assert.deepEqual(heldOut, DOCS.filter((_, i) => isHeldOut(7, i, 0.2)));
    assert.equal(index.splits.train.documents + index.splits.heldOut.documents, DOCS.length);
    assert.ok(heldOut.length > 0 && train.length > heldOut.length);
  });

  test('the index records dtype, vocabulary, <|endoftext|> and the sha256 of the tokenizer.json written beside the shards', async () => {
    const dir = freshDir();
    const index = await writeTokenShards(DOCS, { tokenizer, outDir: dir });
    assert.equal(index.dtype, 'uint16');
    assert.equal(index.vocabSize, 600);
    assert.equal(index.endOfText, tokenizer.endOfText);
    const file = readFileSync(join(dir, 'tokenizer.json'));
    assert.equal(index.tokenizerSha256, createHash('sha256').update(file).digest('hex'));
    assert.deepEqual(Tokenizer.fromJSON(file.toString()).toJSON(), tokenizer.toJSON());
    assert.deepEqual(readShardIndex(dir), index);
  });

  test('the held-out split depends only on the seed and fraction, and its share is near the fraction', () => {
    const pick = (seed: number, f: number) => Array.from({ length: 5000 }, (_, i) => isHeldOut(seed, i, f));
    assert.deepEqual(pick(1, 0.1), pick(1, 0.1));
    assert.notDeepEqual(pick(1, 0.1), pick(2, 0.1));
    for (const f of [0.01, 0.05, 0.3]) {
      const share = pick(1337, f).filter(Boolean).length / 5000;
      assert.ok(Math.abs(share - f) < 0.02, `fraction ${f} gave share ${share}`);
    }
    assert.ok(pick(1, 0).every((h) => !h));
  });

  test('a held-out fraction of 0 leaves the held-out split empty', async () => {
    const index = await writeTokenShards(DOCS, { tokenizer, outDir: freshDir(), heldOutFraction: 0 });
    assert.deepEqual(index.splits.heldOut, { documents: 0, tokens: 0, shards: [] });
  });

  test('a small shard size spreads the tokens over several files of at most that many tokens', async () => {
    const whole = freshDir();
    const split = freshDir();
    const a = await writeTokenShards(DOCS, { tokenizer, outDir: whole });
    const b = await writeTokenShards(DOCS, { tokenizer, outDir: split, tokensPerShard: 1000 });
    assert.ok(b.splits.train.shards.length > 5);
    assert.ok(b.splits.train.shards.every((s) => s.tokens <= 1000));
    assert.deepEqual(b.splits.train.shards.map((s) => s.file).slice(0, 2), ['train-00000.bin', 'train-00001.bin']);
    assert.deepEqual(splitTokens(split, b, 'train'), splitTokens(whole, a, 'train'));
  });

  test('.txt (blank-line separated) and .jsonl files give the same shards as the documents themselves', async () => {
    const docs = ['First document.\nIts second line.', 'Second "document" with {braces}.', 'Third, ünïcödé 🙂.'];
    const txt = join(root, 'corpus.txt');
    const jsonl = join(root, 'corpus.jsonl');
    writeFileSync(txt, `\n${docs.join('\n\n\n')}\n`);
    writeFileSync(jsonl, docs.map((text) => JSON.stringify({ text, id: 1 })).join('\n') + '\n\n');
    const opts = { tokenizer, heldOutFraction: 0 };
    const fromDocs = freshDir();
    const want = splitTokens(fromDocs, await writeTokenShards(docs, { ...opts, outDir: fromDocs }), 'train');
    for (const file of [txt, jsonl]) {
      const dir = freshDir();
      assert.deepEqual(splitTokens(dir, await writeTokenShards(file, { ...opts, outDir: dir }), 'train'), want, file);
    }
  });

  // A bad JSONL line used to fail the job here while `coordinator data prepare` skipped and counted it, so one file
  // gave the two different documents. Both now read through model/corpus-reader.ts, which skips and counts (the
  // data-preparation report's malformed_jsonl, this reader's readStats): the rule the larger dataprep suite holds.
  test('a bad JSONL line is skipped and counted, naming its line; a missing file or another extension is refused', async () => {
    const bad = join(root, 'bad.jsonl');
    const fine = freshDir();
    const want = splitTokens(fine, await writeTokenShards(['fine'], { tokenizer, outDir: fine, heldOutFraction: 0 }), 'train');
    for (const [lines, fault] of [['{"text": "fine"}\n{"txt": "no text field"}\n', /bad\.jsonl:2: no string "text"/], ['{"text": "fine"}\n{"text": \n', /bad\.jsonl:2: not JSON/]] as const) {
      writeFileSync(bad, lines);
      const dir = freshDir();
      const readStats = newCorpusReadStats();
      assert.deepEqual(splitTokens(dir, await writeTokenShards(bad, { tokenizer, outDir: dir, heldOutFraction: 0, readStats }), 'train'), want);
      assert.equal(readStats.malformedLines, 1);
      assert.match(readStats.firstMalformed!, fault);
    }
    const expect = (message: RegExp) => (err: unknown) => err instanceof ModelError && err.code === 'MDL_ERR_DATA_INPUT' && message.test(err.message);
    await assert.rejects(writeTokenShards(join(root, 'nope.txt'), { tokenizer, outDir: freshDir() }), expect(/cannot read the corpus file/));
    await assert.rejects(writeTokenShards(join(root, 'corpus.csv'), { tokenizer, outDir: freshDir() }), expect(/must be a \.txt or \.jsonl file/));
    await assert.rejects(writeTokenShards(DOCS, { tokenizer, outDir: freshDir(), heldOutFraction: 1 }), expect(/heldOutFraction/));
  });

  test('progress counts bytes up to the input size and ends with the total tokens', async () => {
    const seen: DataProgress[] = [];
    const docs = loadDemoCorpus().documents.slice(-20); // ≈ 1 MB: progress comes every 256 KiB along the way
    const index = await writeTokenShards(docs, { tokenizer, outDir: freshDir(), onProgress: (p) => seen.push(p) });
    const total = docs.reduce((n, d) => n + Buffer.byteLength(d), 0);
    assert.ok(seen.length >= 2);
    assert.ok(seen.every((p, i) => p.bytesTotal === total && (i === 0 || p.bytesDone >= seen[i - 1]!.bytesDone)));
    assert.deepEqual(seen.at(-1), { bytesDone: total, bytesTotal: total, tokens: index.splits.train.tokens + index.splits.heldOut.tokens });
  });

  test('documents streamed from an async source are written as they come, and a failing source leaves no index', async () => {
    const dir = freshDir();
    async function* failing() {
      yield DOCS[0]!;
      yield DOCS[1]!;
      throw new Error('source broke');
    }
    await assert.rejects(writeTokenShards(failing(), { tokenizer, outDir: dir }), /source broke/);
    assert.equal(existsSync(join(dir, 'index.json')), false);
    assert.throws(() => readShardIndex(dir), (err: unknown) => err instanceof ModelError && err.code === 'MDL_ERR_SHARD');
  });

  test('a vocabulary over 65536 ids is written as uint32', async () => {
    const extra = Array.from({ length: 65_300 }, (_, i) => `x${i}`);
    const big = new Tokenizer([...BYTE_TO_CHAR, ...extra], [], [END_OF_TEXT]);
    const dir = freshDir();
    const index = await writeTokenShards(['ab', 'c'], { tokenizer: big, outDir: dir, heldOutFraction: 0 });
    assert.equal(index.dtype, 'uint32');
    assert.deepEqual(splitTokens(dir, index, 'train'), [97, 98, 65556, 99, 65556]);
  });

  test('a truncated or missing shard file, or a wrong format, is caught when the index is read', async () => {
    const dir = freshDir();
    const index = await writeTokenShards(DOCS, { tokenizer, outDir: dir });
    const shard = join(dir, index.splits.train.shards[0]!.file);
    truncateSync(shard, 10);
    assert.throws(() => readShardIndex(dir), /train-00000\.bin has 10 bytes, the index says \d+ uint16 tokens/);
    rmSync(shard);
    assert.throws(() => readShardIndex(dir), /shard file train-00000\.bin is missing/);
    writeFileSync(join(dir, 'index.json'), JSON.stringify({ ...index, format: 'other' }));
    assert.throws(() => readShardIndex(dir), /format must be "meshtrain-token-shards\/1"/);
  });
});

describe('reading batches', () => {
  let dir: string;
  let stream: number[];
  let index: ShardIndex;
  before(async () => {
    dir = freshDir();
    // Shards of uneven length (documents are cut wherever 900 tokens are reached) exercise the shard-tail skipping.
    index = await writeTokenShards(DOCS, { tokenizer, outDir: dir, heldOutFraction: 0.1, tokensPerShard: 900 });
    stream = splitTokens(dir, index, 'train');
  });

  test('a batch is [batch, seq + 1] windows of the token stream, each row overlapping the next by one token', () => {
    const reader = new TokenShardReader(dir, { batchSize: 3, seqLen: 16 });
    const { tokens, next, cursor } = reader.next();
    assert.equal(tokens.length, 3 * 17);
    assert.deepEqual(cursor, { shard: 0, offset: 0 });
    assert.deepEqual(Array.from(tokens.subarray(0, 17)), stream.slice(0, 17));
    assert.deepEqual(Array.from(tokens.subarray(17, 34)), stream.slice(16, 33));
    assert.deepEqual(next, { shard: 0, offset: 48 });
  });

  test('the same cursor always gives the same batch, and a new reader resumed at a saved cursor continues identically', () => {
    const opts = { batchSize: 4, seqLen: 32 };
    const a = new TokenShardReader(dir, opts);
    for (let i = 0; i < 25; i++) a.next(); // crosses several shard boundaries
    const saved = a.cursor;
    const expected = Array.from({ length: 40 }, () => a.next().tokens); // and wraps into the next epoch
    const b = new TokenShardReader(dir, { ...opts, cursor: saved });
    for (const want of expected) assert.deepEqual(b.next().tokens, want);
    assert.deepEqual(a.batchAt(saved).tokens, new TokenShardReader(dir, opts).batchAt(saved).tokens);
  });

  test('when a shard cannot hold the next global batch, reading moves to the next shard and wraps after the last', () => {
    const reader = new TokenShardReader(dir, { batchSize: 2, seqLen: 100 }); // 201 tokens per batch, shards of ≤ 900
    const shards = index.splits.train.shards.length;
    const visited: number[] = [];
    for (let i = 0; i < 4 * shards + 4; i++) {
      const b = reader.next();
      assert.ok(b.cursor.offset + 201 <= index.splits.train.shards[b.cursor.shard]!.tokens);
      visited.push(b.cursor.shard);
    }
    assert.deepEqual([...new Set(visited)].sort((x, y) => x - y), [...Array(shards).keys()].filter((s) => index.splits.train.shards[s]!.tokens >= 201));
    assert.ok(visited.indexOf(0, 1) > 0, 'reading wrapped around to shard 0');
  });

  test('N ranks of batch b read exactly the rows of one rank of batch N·b, rank r taking rows [r·b, (r+1)·b)', () => {
    for (const [world, b, seq] of [[2, 2, 16], [3, 1, 24], [4, 3, 8]] as const) {
      const single = new TokenShardReader(dir, { batchSize: world * b, seqLen: seq });
      const ranks = Array.from({ length: world }, (_, rank) => new TokenShardReader(dir, { batchSize: b, seqLen: seq, rank, worldSize: world }));
      for (let step = 0; step < 30; step++) {
        const global = single.next();
        const parts = ranks.map((r) => r.next());
        const rowLen = seq + 1;
        parts.forEach((part, rank) => {
          assert.deepEqual(part.tokens, global.tokens.subarray(rank * b * rowLen, (rank + 1) * b * rowLen), `world ${world} step ${step} rank ${rank}`);
          assert.deepEqual(part.next, global.next);
        });
      }
    }
  });

  test('the held-out split is read the same way from its own shards', () => {
    const held = splitTokens(dir, index, 'heldOut');
    const reader = new TokenShardReader(dir, { split: 'heldOut', batchSize: 1, seqLen: 8 });
    assert.deepEqual(Array.from(reader.next().tokens), held.slice(0, 9));
  });

  test('impossible requests are refused: bad rank, a batch larger than any shard, a cursor outside, another tokenizer', () => {
    const refused = (opts: Parameters<typeof construct>[0], message: RegExp) =>
      assert.throws(() => construct(opts), (err: unknown) => err instanceof ModelError && message.test(err.message));
    const construct = (opts: ConstructorParameters<typeof TokenShardReader>[1]) => new TokenShardReader(dir, opts);
    refused({ batchSize: 1, seqLen: 8, rank: 2, worldSize: 2 }, /rank must be an integer in \[0, 2\)/);
    refused({ batchSize: 0, seqLen: 8 }, /batchSize must be a positive integer/);
    refused({ batchSize: 8, seqLen: 200 }, /cannot serve a global batch of 8 × 200/);
    refused({ batchSize: 1, seqLen: 8, cursor: { shard: 999, offset: 0 } }, /cursor .* is outside/);
    refused({ batchSize: 1, seqLen: 8, tokenizerSha256: '0'.repeat(64) }, /not the expected 000000000000/);
    const reader = construct({ batchSize: 1, seqLen: 8 });
    assert.throws(() => reader.batchAt({ shard: 0, offset: -1 }), /outside/);
  });
});
