/**
 * Prepares a job's dataset in a worker thread for the coordinator (started through
 * common/worker-boot.mjs): tokenizer training and tokenizing are CPU-bound for seconds, and on the
 * coordinator's main thread they would hold up heartbeats long enough for agents to be declared dead.
 *
 * Text becomes token shards (model/prepare-data.ts), conversations and preference pairs become examples
 * (model/examples.ts). The tokenizer is trained on the training split, or reused as given: a job that starts from
 * (or distils) a model version must feed that model the ids its tokenizer makes.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { isHeldOut, writeTokenShards, type DataProgress } from '../../model/data.ts';
import { prepareExamples, readExampleFile, tokenizerDigest, type ExampleFormat } from '../../model/examples.ts';
import { newCorpusReadStats, type CorpusReadStats } from '../../model/corpus-reader.ts';
import { prepareTokenData } from '../../model/prepare-data.ts';
import type { SplitInfo, SplitName } from '../../model/shard-index.ts';
import { Tokenizer, trainBpe } from '../../model/tokenizer.ts';

export interface DatasetWorkerOptions {
  corpus: string;
  outDir: string;
  vocabSize: number;
  heldOutFraction: number;
  seed: number;
  format?: ExampleFormat;
  maxTokens?: number;
  tokenizerJson?: string;
}

const post = (m: unknown) => parentPort!.postMessage(m);

/** What the corpus reader skipped (malformed JSONL lines), reported with the splits so the coordinator can say so. */
const readStats: CorpusReadStats = newCorpusReadStats();

async function prepare(o: DatasetWorkerOptions): Promise<Record<SplitName, SplitInfo>> {
  const onProgress = (progress: DataProgress) => post({ type: 'progress', progress });
  if (!o.format && !o.tokenizerJson) {
    return (await prepareTokenData({ ...o, onShardProgress: onProgress, readStats })).index.splits;
  }
  mkdirSync(o.outDir, { recursive: true });
  const tokenizer = o.tokenizerJson ? Tokenizer.fromJSON(JSON.parse(o.tokenizerJson)) : await trainBpe(exampleTexts(o), { vocabSize: o.vocabSize });
  const json = o.tokenizerJson ?? JSON.stringify(tokenizer.toJSON());
  if (!o.format) return (await writeTokenShards(o.corpus, { tokenizer, outDir: o.outDir, heldOutFraction: o.heldOutFraction, seed: o.seed, onProgress, readStats })).splits;
  writeFileSync(join(o.outDir, 'tokenizer.json'), json);
  const index = await prepareExamples({
    corpus: o.corpus, outDir: o.outDir, format: o.format, tokenizer, tokenizerSha256: tokenizerDigest(json), maxTokens: o.maxTokens!,
    heldOutFraction: o.heldOutFraction, seed: o.seed,
    onProgress: (p) => onProgress({ bytesDone: p.bytesDone, bytesTotal: p.bytesTotal, tokens: 0 }),
  });
  const split = (s: SplitName): SplitInfo => ({ documents: index.splits[s].examples, tokens: index.splits[s].tokens, shards: [] });
  return { train: split('train'), heldOut: split('heldOut') };
}

/** The training examples' texts (prompts and replies), for a tokenizer trained from scratch on instruction data. */
async function* exampleTexts(o: DatasetWorkerOptions): AsyncGenerator<string> {
  let index = 0; // numbered as prepareExamples numbers them, so the held-out split is the same
  for await (const { example } of readExampleFile(o.corpus, o.format!)) {
    if (isHeldOut(o.seed, index++, o.heldOutFraction)) continue;
    yield [...example.prompt.map((m) => m.content), ...(example.kind === 'chat' ? [example.response] : [example.chosen, example.rejected])].join('\n');
  }
}

try {
  const splits = await prepare(workerData.options as DatasetWorkerOptions);
  post({ type: 'done', splits, skipped: { lines: readStats.malformedLines, first: readStats.firstMalformed } });
} catch (err) {
  post({ type: 'error', message: (err as Error).message, code: (err as { code?: string }).code });
}
