/**
 * The worker thread behind coordinator/registry/import.ts: reads the uploaded files from the artifact store, runs convertImport and
 * hands the version's files back as transferred buffers (no copy). Started through common/worker-boot.mjs.
 */
import { readFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { convertImport } from './import.ts';

try {
  const paths = workerData.paths as Record<string, string>;
  const given = Object.fromEntries(Object.entries(paths).map(([file, path]) => [file, readFileSync(path)]));
  const result = convertImport(given);
  // Each file in a buffer of its own, so its memory is transferred rather than copied (small ones sit in Node's
  // shared pool and are copied out of it first).
  const own = (b: Uint8Array) => (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? b : new Uint8Array(b));
  const files = Object.fromEntries(Object.entries(result.files).map(([f, b]) => [f, own(b)]));
  parentPort!.postMessage({ type: 'done', result: { ...result, files } }, Object.values(files).map((b) => b.buffer as ArrayBuffer));
} catch (err) {
  parentPort!.postMessage({ type: 'error', message: (err as Error).message, code: (err as { code?: string }).code });
}
