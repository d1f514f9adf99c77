/**
 * node --import tsx model/prepare-data.ts --corpus demo --vocab 4096 --out .data/demo-tokens [--held-out 0.05] [--seed 1337]
 *
 * Corpus → tokenizer → token shards, the data step of a training job: trains the BPE tokenizer on the training
 * documents only (the held-out ones stay unseen, so evaluation measures text the tokenizer never saw either), then
 * writes the shards and index.json with that tokenizer. As a command it prints a live progress line on stderr and
 * the timings as one JSON line on stdout.
 */
import { pathToFileURL } from 'node:url';
import { loadDemoCorpus } from './corpus.ts';
import { newCorpusReadStats, type CorpusReadStats } from './corpus-reader.ts';
import { isHeldOut, readDocuments, writeTokenShards, type CorpusInput, type DataProgress } from './data.ts';
import type { ShardIndex } from './shard-index.ts';
import { trainBpe, type Tokenizer, type TrainProgress } from './tokenizer.ts';

export interface PrepareOptions {
  /** 'demo' (the bundled corpus, corpus.ts) or a .txt/.jsonl path. */
  corpus: string;
  outDir: string;
  vocabSize: number;
  /** Default 0.05. */
  heldOutFraction?: number;
  /** Default 1337. */
  seed?: number;
  tokensPerShard?: number;
  onTokenizerProgress?: (p: TrainProgress) => void;
  onShardProgress?: (p: DataProgress) => void;
  /** Added to while the shards are written: the malformed JSONL lines skipped (corpus-reader.ts). */
  readStats?: CorpusReadStats;
}

export interface Prepared {
  tokenizer: Tokenizer;
  index: ShardIndex;
  /** Wall time of tokenizer training and of tokenizing + writing the shards. */
  trainMs: number;
  shardMs: number;
}

export async function prepareTokenData(options: PrepareOptions): Promise<Prepared> {
  const { corpus, outDir, vocabSize, heldOutFraction = 0.05, seed = 1337, tokensPerShard } = options;
  const input: CorpusInput = corpus === 'demo' ? loadDemoCorpus().documents : corpus;
  const t0 = performance.now();
  const tokenizer = await trainBpe(trainingDocuments(input, seed, heldOutFraction), { vocabSize, onProgress: options.onTokenizerProgress });
  const t1 = performance.now();
  const index = await writeTokenShards(input, { tokenizer, outDir, heldOutFraction, seed, tokensPerShard, onProgress: options.onShardProgress, readStats: options.readStats });
  return { tokenizer, index, trainMs: t1 - t0, shardMs: performance.now() - t1 };
}

/** The documents of `input` that writeTokenShards will put in the train split (same numbering, same seed). */
export async function* trainingDocuments(input: CorpusInput, seed: number, heldOutFraction: number): AsyncGenerator<string> {
  let i = 0;
  for await (const doc of readDocuments(input)) if (!isHeldOut(seed, i++, heldOutFraction)) yield doc;
}

async function main(argv: string[]): Promise<void> {
  const { parseCli, intOption } = await import('../common/cli.ts');
  const { values } = parseCli(argv, {
    corpus: { type: 'string', default: 'demo' },
    vocab: { type: 'string', default: '4096' },
    out: { type: 'string' },
    'held-out': { type: 'string', default: '0.05' },
    seed: { type: 'string', default: '1337' },
  });
  if (!values.out) throw new Error('--out DIR is required');
  const line = (s: string) => process.stderr.isTTY ? process.stderr.write(`\r\x1b[2K${s}`) : undefined;
  const readStats = newCorpusReadStats();
  const result = await prepareTokenData({
    readStats,
    corpus: values.corpus!,
    outDir: values.out,
    vocabSize: intOption(values.vocab, 'vocab', 4096, 258, 1 << 20),
    heldOutFraction: Number(values['held-out']),
    seed: intOption(values.seed, 'seed', 1337),
    onTokenizerProgress: (p) => line(`tokenizer: ${p.phase} ${p.texts} documents, ${p.words} distinct words, vocab ${p.vocab}/${p.vocabSize}`),
    onShardProgress: (p) => line(`shards: ${(p.bytesDone / 1e6).toFixed(1)}/${((p.bytesTotal ?? 0) / 1e6).toFixed(1)} MB, ${p.tokens} tokens`),
  });
  line('');
  if (readStats.malformedLines > 0) process.stderr.write(`skipped ${readStats.malformedLines} malformed JSONL line(s); the first: ${readStats.firstMalformed}\n`);
  const { index } = result;
  process.stdout.write(JSON.stringify({
    vocabSize: index.vocabSize,
    trainTokens: index.splits.train.tokens,
    heldOutTokens: index.splits.heldOut.tokens,
    documents: index.splits.train.documents + index.splits.heldOut.documents,
    tokenizerTrainMs: Math.round(result.trainMs),
    shardMs: Math.round(result.shardMs),
    tokenizerSha256: index.tokenizerSha256,
  }) + '\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((err) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  });
}
