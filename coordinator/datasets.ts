/**
 * Dataset preparation on the coordinator, once per (corpus, vocabulary, split, seed): train the BPE tokenizer,
 * write token shards (model/prepare-data.ts) into `<data>/datasets/<key>/`, and store every file of that folder
 * in the artifact store, so agents fetch exactly the bytes that were prepared. A prepared folder is reused by later
 * jobs with the same key; a half-prepared one (no index.json, which is written last) is redone.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../common/log.ts';
import { Worker } from 'node:worker_threads';
import type { DataProgress } from '../model/data.ts';
import type { SplitInfo, SplitName } from '../model/shard-index.ts';
import type { ResolvedJobSpec } from '../protocol/job-spec.ts';
import type { ArtifactStore } from './artifact-store.ts';

export interface DatasetKey {
  corpus: string;
  vocabSize: number;
  heldOutFraction: number;
  seed: number;
  source?: { bytes: number; mtimeMs: number }; // a file corpus: re-prepare when it changes
}

export function datasetKey(spec: ResolvedJobSpec): DatasetKey {
  const key: DatasetKey = { corpus: spec.data.corpus, vocabSize: spec.model.vocabSize, heldOutFraction: spec.data.heldOutFraction, seed: spec.training.seed };
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
): Promise<Record<string, string>> {
  const key = datasetKey(spec);
  const id = createHash('sha256').update(JSON.stringify(key)).digest('hex').slice(0, 16);
  const dir = join(dataDir, 'datasets', id);
  if (!existsSync(join(dir, 'index.json'))) {
    const tmp = `${dir}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
    let lastLog = 0;
    const started = performance.now();
    log.info(`preparing dataset ${id}: corpus ${key.corpus}, vocabulary ${key.vocabSize}, held out ${key.heldOutFraction}`);
    const splits = await prepareInWorker(
      { corpus: key.corpus, outDir: tmp, vocabSize: key.vocabSize, heldOutFraction: key.heldOutFraction, seed: key.seed },
      (p) => {
        if (performance.now() - lastLog < 1000) return;
        lastLog = performance.now();
        log.info(`dataset ${id}: tokenized ${(p.bytesDone / 1e6).toFixed(1)}${p.bytesTotal ? ` of ${(p.bytesTotal / 1e6).toFixed(1)}` : ''} MB, ${p.tokens} tokens`);
      },
    );
    renameSync(tmp, dir);
    const { train, heldOut } = splits;
    log.info(
      `dataset ${id} ready in ${((performance.now() - started) / 1000).toFixed(1)} s: ${train.tokens} train tokens (${train.documents} documents), ` +
        `${heldOut.tokens} held-out tokens (${heldOut.documents} documents)`,
    );
  }
  const files: Record<string, string> = {};
  for (const name of readdirSync(dir).sort()) {
    const { digest } = await artifacts.putStream(createReadStream(join(dir, name)));
    files[name] = digest;
  }
  return files;
}

/** prepareTokenData in a worker thread (dataset-worker.ts), so the coordinator keeps answering heartbeats. */
function prepareInWorker(
  options: { corpus: string; outDir: string; vocabSize: number; heldOutFraction: number; seed: number },
  onProgress: (p: DataProgress) => void,
): Promise<Record<SplitName, SplitInfo>> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('../node-agent/compute/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./dataset-worker.ts', import.meta.url).href, options },
    });
    worker.on('message', (m: { type: string; progress?: DataProgress; splits?: Record<SplitName, SplitInfo>; message?: string; code?: string }) => {
      if (m.type === 'progress') onProgress(m.progress!);
      else if (m.type === 'done') resolve(m.splits!);
      else if (m.type === 'error') reject(Object.assign(new Error(m.message), { code: m.code }));
    });
    worker.once('error', reject);
    worker.once('exit', (code) => code !== 0 && reject(new Error(`dataset worker exited with ${code}`)));
  });
}
