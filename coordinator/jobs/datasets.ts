/**
 * Dataset preparation on the coordinator, once per (corpus, vocabulary, split, seed): train the BPE tokenizer,
 * write token shards (model/prepare-data.ts) into `<data>/datasets/<key>/`, and store every file of that folder
 * in the artifact store, so agents fetch exactly the bytes that were prepared. A prepared folder is reused by later
 * jobs with the same key; a half-prepared one (no index.json, which is written last) is redone.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../../common/log.ts';
import { Worker } from 'node:worker_threads';
import type { DataProgress } from '../../model/data.ts';
import { readShardIndex, type SplitInfo, type SplitName } from '../../model/shard-index.ts';
import { ModelError } from '../../model/errors.ts';
import { globalBatchSpan, splitServes } from '../../model/token-shard-reader.ts';
import { dataFormatOf, type ResolvedJobSpec } from '../../protocol/job-spec.ts';
import type { ArtifactStore } from '../store/artifact-store.ts';
import type { DatasetWorkerOptions } from './dataset-worker.ts';

export interface DatasetKey {
  corpus: string;
  vocabSize: number;
  heldOutFraction: number;
  seed: number;
  source?: { bytes: number; mtimeMs: number }; // a file corpus: re-prepare when it changes
  format?: 'chat' | 'preference'; // examples (model/examples.ts) rather than token shards
  maxTokens?: number; // examples: the longest sequence kept (seqLen + 1)
  tokenizerSha256?: string; // a tokenizer reused from a model version rather than trained
}

/** A tokenizer the dataset must use: the one of the version a job starts from or distils (its ids are that model's). */
export interface ReusedTokenizer {
  json: string;
  sha256: string;
}

export function datasetKey(spec: ResolvedJobSpec, tokenizer?: ReusedTokenizer): DatasetKey {
  const key: DatasetKey = { corpus: spec.data.corpus, vocabSize: spec.model.vocabSize, heldOutFraction: spec.data.heldOutFraction, seed: spec.training.seed };
  const format = dataFormatOf(spec);
  if (format !== 'text') Object.assign(key, { format, maxTokens: spec.training.seqLen + 1 });
  if (tokenizer) key.tokenizerSha256 = tokenizer.sha256;
  if (spec.data.corpus !== 'demo') {
    const st = statSync(spec.data.corpus); // throws ENOENT: the runner reports it as the job's failure
    key.source = { bytes: st.size, mtimeMs: Math.floor(st.mtimeMs) };
  }
  return key;
}

/** Prepares (or reuses) the dataset of `spec`; returns its folder's files by name → sha256 in the artifact store. */
export async function prepareDataset(
  spec: ResolvedJobSpec,
  dataDir: string,
  artifacts: ArtifactStore,
  log: Logger,
  tokenizer?: ReusedTokenizer,
): Promise<Record<string, string>> {
  const prepared = preparedFolder(spec);
  if (prepared) return storePrepared(prepared, spec, artifacts, log);
  const key = datasetKey(spec, tokenizer);
  const id = createHash('sha256').update(JSON.stringify(key)).digest('hex').slice(0, 16);
  const dir = join(dataDir, 'datasets', id);
  const indexFile = key.format ? 'examples.json' : 'index.json';
  if (!existsSync(join(dir, indexFile))) {
    const tmp = `${dir}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
    let lastLog = 0;
    const started = performance.now();
    log.info(`preparing dataset ${id}: corpus ${key.corpus}, ${key.format ?? 'text'}, vocabulary ${key.vocabSize}${tokenizer ? ' (reused)' : ''}, held out ${key.heldOutFraction}`);
    const { splits, skipped } = await prepareInWorker(
      {
        corpus: key.corpus, outDir: tmp, vocabSize: key.vocabSize, heldOutFraction: key.heldOutFraction, seed: key.seed,
        ...(key.format ? { format: key.format, maxTokens: key.maxTokens! } : {}), ...(tokenizer ? { tokenizerJson: tokenizer.json } : {}),
      },
      (p) => {
        if (performance.now() - lastLog < 1000) return;
        lastLog = performance.now();
        log.info(`dataset ${id}: tokenized ${(p.bytesDone / 1e6).toFixed(1)}${p.bytesTotal ? ` of ${(p.bytesTotal / 1e6).toFixed(1)}` : ''} MB, ${p.tokens} tokens`);
      },
    );
    renameSync(tmp, dir);
    const { train, heldOut } = splits;
    const unit = key.format ? 'examples' : 'documents';
    log.info(
      `dataset ${id} ready in ${((performance.now() - started) / 1000).toFixed(1)} s: ${train.tokens} train tokens (${train.documents} ${unit}), ` +
        `${heldOut.tokens} held-out tokens (${heldOut.documents} ${unit})`,
    );
    if (skipped.lines > 0) {
      log.warn(`dataset ${id}: skipped ${skipped.lines} malformed JSONL line(s) of ${key.corpus}, which are not trained on; the first: ${skipped.first}. Fix or remove them and submit again to train on every line.`);
    }
  }
  if (!key.format) checkTrainSplit(readShardIndex(dir).splits.train, spec);
  const files: Record<string, string> = {};
  for (const name of readdirSync(dir).sort()) {
    const { digest } = await artifacts.putStream(createReadStream(join(dir, name)));
    files[name] = digest;
  }
  return files;
}

/**
 * Refuses, once and for good, a token dataset whose train split cannot serve one global batch: every agent would fail
 * the same way at every restart (model/token-shard-reader.ts reads batches by the same rule).
 * MDL_ERR_DATASET_MISMATCH makes the job fail at once, not retry.
 */
function checkTrainSplit(train: SplitInfo, spec: ResolvedJobSpec): void {
  const { batchSize, seqLen } = spec.training;
  const span = globalBatchSpan(batchSize, seqLen);
  if (splitServes(train, span)) return;
  throw new ModelError(
    'MDL_ERR_DATASET_MISMATCH',
    `the train split has ${train.tokens} tokens in ${train.documents} documents, and one global batch of ${batchSize} × ${seqLen} needs ${span} in one shard: use a larger corpus, a smaller training.batchSize or seqLen, or a smaller data.heldOutFraction (${spec.data.heldOutFraction} of the documents are held out)`,
  );
}

/** The corpus folder when it is already a prepared dataset (`coordinator data prepare` or model/prepare-data.ts output), else null. */
function preparedFolder(spec: ResolvedJobSpec): string | null {
  const dir = spec.data.corpus;
  if (dir === 'demo' || !existsSync(dir) || !statSync(dir).isDirectory()) return null;
  return existsSync(join(dir, 'index.json')) && existsSync(join(dir, 'tokenizer.json')) ? dir : null;
}

/**
 * Stores a prepared folder's index, tokenizer and shards as they are: its split and seed are the ones it was
 * prepared with (spec.data.heldOutFraction does not re-split it), and its vocabulary must fit the model's.
 */
async function storePrepared(dir: string, spec: ResolvedJobSpec, artifacts: ArtifactStore, log: Logger): Promise<Record<string, string>> {
  let index;
  try {
    index = readShardIndex(dir);
  } catch (err) {
    throw new ModelError('MDL_ERR_DATASET_MISMATCH', `${dir} looks like a prepared dataset but cannot be used: ${(err as Error).message}`, { cause: err });
  }
  if (index.vocabSize > spec.model.vocabSize) {
    throw new ModelError(
      'MDL_ERR_DATASET_MISMATCH',
      `${dir} was tokenized with a vocabulary of ${index.vocabSize}, larger than model.vocabSize ${spec.model.vocabSize}; set model.vocabSize ≥ ${index.vocabSize} or prepare it with --vocab ${spec.model.vocabSize}`,
    );
  }
  checkTrainSplit(index.splits.train, spec);
  const names = ['index.json', index.tokenizer, ...index.splits.train.shards.map((s) => s.file), ...index.splits.heldOut.shards.map((s) => s.file)];
  const files: Record<string, string> = {};
  for (const name of names.sort()) files[name] = (await artifacts.putStream(createReadStream(join(dir, name)))).digest;
  log.info(`using the prepared dataset ${dir}: ${index.splits.train.tokens} train tokens, ${index.splits.heldOut.tokens} held-out tokens, vocabulary ${index.vocabSize}`);
  return files;
}

/** prepareTokenData in a worker thread (dataset-worker.ts), so the coordinator keeps answering heartbeats. */
function prepareInWorker(
  options: DatasetWorkerOptions,
  onProgress: (p: DataProgress) => void,
): Promise<{ splits: Record<SplitName, SplitInfo>; skipped: { lines: number; first?: string | undefined } }> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('../../common/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./dataset-worker.ts', import.meta.url).href, options },
    });
    worker.on('message', (m: { type: string; progress?: DataProgress; splits?: Record<SplitName, SplitInfo>; skipped?: { lines: number; first?: string }; message?: string; code?: string }) => {
      if (m.type === 'progress') onProgress(m.progress!);
      else if (m.type === 'done') resolve({ splits: m.splits!, skipped: m.skipped ?? { lines: 0 } });
      else if (m.type === 'error') reject(Object.assign(new Error(m.message), { code: m.code }));
    });
    worker.once('error', reject);
    worker.once('exit', (code) => code !== 0 && reject(new Error(`dataset worker exited with ${code}`)));
  });
}
