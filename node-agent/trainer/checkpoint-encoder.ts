/**
 * A short-lived worker thread that encodes one checkpoint snapshot (model/checkpoint.ts encodeCheckpointChunks):
 * lays out the safetensors headers and hashes every file, ~1–2 GB/s of CPU that must not run on the agent's main
 * thread (heartbeats, peer keepalives, the rings). The snapshot's buffers come in transferred and go back
 * transferred, with the files as lists of chunks viewing them: nothing is copied. Started by checkpoint-upload.ts
 * through compute/worker-boot.mjs; answers one message, then main terminates it.
 */
import { parentPort } from 'node:worker_threads';
import { createHash } from 'node:crypto';
import { encodeCheckpointChunks, type CheckpointContents } from '../../model/checkpoint.ts';

export interface EncodeRequest {
  step: number;
  contents: CheckpointContents;
  /** The buffers the tensors view, to be transferred back with the answer. */
  buffers: ArrayBuffer[];
}

export type EncodeReply =
  | { type: 'encoded'; files: Record<string, Uint8Array[]>; sha256: Record<string, string>; bytes: number }
  | { type: 'failed'; error: string; code?: string };

const port = parentPort!;
port.once('message', ({ step, contents, buffers }: EncodeRequest) => {
  try {
    const { files, manifest } = encodeCheckpointChunks(step, contents);
    const sha256: Record<string, string> = {};
    let bytes = 0;
    for (const [name, chunks] of Object.entries(files)) {
      const listed = manifest.files[name];
      sha256[name] = listed ? listed.sha256 : createHash('sha256').update(Buffer.concat(chunks)).digest('hex'); // the manifest: a few hundred bytes
      bytes += chunks.reduce((n, c) => n + c.byteLength, 0);
    }
    port.postMessage({ type: 'encoded', files, sha256, bytes } satisfies EncodeReply, buffers);
  } catch (err) {
    port.postMessage({ type: 'failed', error: (err as Error).message, code: (err as { code?: string }).code } satisfies EncodeReply, buffers);
  }
});
