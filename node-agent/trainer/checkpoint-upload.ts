/**
 * A checkpoint from an in-memory snapshot: what a ZeRO-1 job over several replicas saves, whose moments are
 * gathered from every replica into the trainer worker's `export` snapshot (one copy of the parameters and
 * full-length moments). Every other job's checkpoint is written by the trainer worker straight from its buffers and
 * uploaded from disk (artifacts.ts, `spill`). The snapshot is encoded and hashed in a short-lived worker thread
 * (checkpoint-encoder.ts), or inline when small, and uploaded file by file as streams of views of it, while training
 * goes on; nothing is joined into one buffer, and the main thread only moves 1 MiB pieces to sockets.
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { encodeCheckpointChunks, type CheckpointContents } from '../../model/checkpoint.ts';
import { AgentError } from '../errors.ts';
import { errorOf, type ThreadFailure } from './messages.ts';

/** What checkpoint-encoder.ts (the worker) is sent and answers. */
export interface EncodeRequest {
  step: number;
  contents: CheckpointContents;
  /** The buffers the tensors view, to be transferred back with the answer. */
  buffers: ArrayBuffer[];
}

export type EncodeReply =
  | { type: 'encoded'; files: Record<string, Uint8Array[]>; sha256: Record<string, string>; bytes: number }
  | ({ type: 'failed' } & ThreadFailure);

/**
 * Snapshots up to this size are encoded on the calling thread: hashing 16 MB takes ~10–20 ms, where starting a
 * worker thread (a tsx-loaded module graph) takes ~0.3–0.5 s, which for a small model is several steps' time.
 */
export const INLINE_ENCODE_MAX_BYTES = 16 << 20;

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

/** Lays out and hashes a checkpoint's files as chunks viewing the tensors (what the encoder worker runs). */
export function encodeSnapshot(step: number, contents: CheckpointContents): EncodedCheckpoint {
  const { files, manifest } = encodeCheckpointChunks(step, contents);
  const sha256: Record<string, string> = {};
  let bytes = 0;
  for (const [name, chunks] of Object.entries(files)) {
    const listed = manifest.files[name];
    sha256[name] = listed ? listed.sha256 : createHash('sha256').update(Buffer.concat(chunks)).digest('hex'); // the manifest: a few hundred bytes
    bytes += chunks.reduce((n, c) => n + c.byteLength, 0);
  }
  return { files, sha256, bytes };
}

/** Encodes a snapshot: on this thread when it is small (INLINE_ENCODE_MAX_BYTES), else in a worker (encodeInWorker). */
export function encodeCheckpointFiles(step: number, contents: CheckpointContents, buffers: ArrayBuffer[]): Promise<EncodedCheckpoint> {
  const total = buffers.reduce((n, b) => n + b.byteLength, 0);
  if (total <= INLINE_ENCODE_MAX_BYTES) {
    try {
      return Promise.resolve(encodeSnapshot(step, contents));
    } catch (err) {
      return Promise.reject(err);
    }
  }
  return encodeInWorker(step, contents, buffers);
}

/**
 * Encodes `contents` in a worker thread. The tensors must view `buffers` (whole ArrayBuffers), which are
 * transferred there and back: the caller's views of them are detached meanwhile and must not be used again; the
 * returned chunks view the same memory.
 */
export function encodeInWorker(step: number, contents: CheckpointContents, buffers: ArrayBuffer[]): Promise<EncodedCheckpoint> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('../../common/worker-boot.mjs', import.meta.url), {
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
      settle(() => (m.type === 'encoded' ? resolve(m) : reject(errorOf(m)))), // the encoder's error keeps its code
    );
    worker.once('error', (err) => settle(() => reject(new AgentError('AGT_ERR_TRAINER', `checkpoint encoder crashed: ${err.message}`))));
    worker.once('exit', (code) => settle(() => reject(new AgentError('AGT_ERR_TRAINER', `checkpoint encoder exited (code ${code}) before answering`))));
    worker.postMessage({ step, contents, buffers } satisfies EncodeRequest, buffers);
  });
}

/** Uploads every file at once (the store's fsyncs overlap) and returns name → sha256. */
export async function uploadCheckpoint(store: Uploader, encoded: EncodedCheckpoint): Promise<Record<string, string>> {
  const names = Object.keys(encoded.files);
  await Promise.all(names.map((name) => store.upload(encoded.files[name]!, encoded.sha256[name]!)));
  return Object.fromEntries(names.map((name) => [name, encoded.sha256[name]!]));
}
