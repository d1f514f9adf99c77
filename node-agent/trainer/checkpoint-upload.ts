/**
 * Data-parallel rank 0 of a stage shard saves the shard's checkpoint: the trainer worker's `export` snapshot (one
 * copy of the parameters and full-length moments) is encoded and hashed in a short-lived worker thread
 * (checkpoint-encoder.ts) and then uploaded file by file as streams of views of that snapshot, while training goes
 * on. Nothing is joined into one buffer or written to the agent's disk, and the main thread only moves 1 MiB
 * pieces to sockets: the snapshot is the only copy the checkpoint adds to what training holds.
 */
import { Worker } from 'node:worker_threads';
import type { CheckpointContents } from '../../model/checkpoint.ts';
import type { EncodeReply, EncodeRequest } from './checkpoint-encoder.ts';

/** What uploading needs of the artifact store (node-agent/artifact-client.ts). */
export interface Uploader {
  upload(chunks: readonly Uint8Array[], sha256: string): Promise<void>;
}

/** A checkpoint ready to upload: each file as its chunks, with its sha256. */
export interface EncodedCheckpoint {
  files: Record<string, Uint8Array[]>;
  sha256: Record<string, string>;
  bytes: number;
}

/**
 * Encodes `contents` in a worker thread. The tensors must view `buffers` (whole ArrayBuffers), which are
 * transferred there and back: the caller's views of them are detached meanwhile and must not be used again; the
 * returned chunks view the same memory.
 */
export function encodeInWorker(step: number, contents: CheckpointContents, buffers: ArrayBuffer[]): Promise<EncodedCheckpoint> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('../compute/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./checkpoint-encoder.ts', import.meta.url).href },
    });
    let settled = false;
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      fn();
      void worker.terminate();
    };
    worker.once('message', (m: EncodeReply) =>
      settle(() => (m.type === 'encoded' ? resolve(m) : reject(Object.assign(new Error(m.error), m.code ? { code: m.code } : {})))),
    );
    worker.once('error', (err) => settle(() => reject(new Error(`checkpoint encoder crashed: ${err.message}`))));
    worker.once('exit', (code) => settle(() => reject(new Error(`checkpoint encoder exited (code ${code}) before answering`))));
    worker.postMessage({ step, contents, buffers } satisfies EncodeRequest, buffers);
  });
}

/** Uploads every file at once (the store's fsyncs overlap) and returns name → sha256. */
export async function uploadCheckpoint(store: Uploader, encoded: EncodedCheckpoint): Promise<Record<string, string>> {
  const names = Object.keys(encoded.files);
  await Promise.all(names.map((name) => store.upload(encoded.files[name]!, encoded.sha256[name]!)));
  return Object.fromEntries(names.map((name) => [name, encoded.sha256[name]!]));
}
