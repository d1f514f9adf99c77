/**
 * A short-lived worker thread that encodes one checkpoint snapshot (model/checkpoint.ts encodeCheckpointChunks):
 * lays out the safetensors headers and hashes every file, ~1–2 GB/s of CPU that must not run on the agent's main
 * thread (heartbeats, peer keepalives, the rings). The snapshot's buffers come in transferred and go back
 * transferred, with the files as lists of chunks viewing them: nothing is copied. Started by checkpoint-upload.ts
 * through common/worker-boot.mjs; answers one message, then main terminates it.
 */
import { parentPort } from 'node:worker_threads';
import { encodeSnapshot, type EncodeReply, type EncodeRequest } from './checkpoint-upload.ts';
import { failureOf } from './messages.ts';

const port = parentPort!;
port.once('message', ({ step, contents, buffers }: EncodeRequest) => {
  try {
    const { files, sha256, bytes } = encodeSnapshot(step, contents);
    port.postMessage({ type: 'encoded', files, sha256, bytes } satisfies EncodeReply, buffers);
  } catch (err) {
    port.postMessage({ type: 'failed', ...failureOf(err) } satisfies EncodeReply, buffers);
  }
});
