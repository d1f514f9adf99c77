/**
 * Runs model/prepare-data.ts in a worker thread for the coordinator (started through
 * node-agent/compute/worker-boot.mjs): tokenizer training and tokenizing are CPU-bound for seconds, and on the
 * coordinator's main thread they would hold up heartbeats long enough for agents to be declared dead.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { prepareTokenData, type PrepareOptions } from '../model/prepare-data.ts';

const options = workerData.options as Omit<PrepareOptions, 'onShardProgress' | 'onTokenizerProgress'>;
try {
  const prepared = await prepareTokenData({
    ...options,
    onShardProgress: (p) => parentPort!.postMessage({ type: 'progress', progress: p }),
  });
  parentPort!.postMessage({ type: 'done', splits: prepared.index.splits, trainMs: prepared.trainMs, shardMs: prepared.shardMs });
} catch (err) {
  parentPort!.postMessage({ type: 'error', message: (err as Error).message, code: (err as { code?: string }).code });
}
