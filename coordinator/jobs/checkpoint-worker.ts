/**
 * The worker thread behind checkpoint-shards.ts: merges shard checkpoints into the canonical one, or cuts the
 * canonical one into shard checkpoints, from the artifact store's files into a scratch folder of the store, one
 * tensor at a time (model/checkpoint-merge.ts). Hashing and copying a 1.5 GB checkpoint takes seconds of CPU that
 * the coordinator's event loop, which answers heartbeats, must not spend. Started through
 * common/worker-boot.mjs; answers {type: 'done', files} (one name → {path, bytes, sha256} per output)
 * or {type: 'error', message, code}.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { runCheckpointTask, type CheckpointTask } from './checkpoint-shards.ts';

try {
  parentPort!.postMessage({ type: 'done', files: await runCheckpointTask(workerData as CheckpointTask) });
} catch (err) {
  parentPort!.postMessage({ type: 'error', message: (err as Error).message, code: (err as { code?: string }).code });
}
