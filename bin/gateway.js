#!/usr/bin/env node
// gateway serve … — see gateway/cli.ts (run through tsx; no build step).
// Registry models run on the GPT backend (gateway/gpt-backend.ts): every version's forward passes run on the
// gateway's compute thread (gateway/worker-engine.ts) on the compute backend --backend names (auto: a hardware GPU
// through WebGPU, then tfjs-node(-gpu) when installed, then wasm with the fast matmul kernels), so this thread's
// event loop (HTTP, streams, metrics) never waits on a forward pass.
import { register } from 'tsx/esm/api';

register();
const { runCli } = await import('../gateway/cli.ts');
const { gptBackendFactory } = await import('../gateway/gpt-backend.ts');
const { createLogger } = await import('../common/log.ts');
const argv = process.argv.slice(2);
const wantsModels = argv[0] === 'serve' && !argv.includes('--fake') && !argv.includes('--help') && !argv.includes('-h');
const backendFactory = async (files, meta, options = {}) => {
  const backend = await gptBackendFactory(files, meta, options);
  createLogger('gateway').info(`${meta.name} v${meta.version}: compute backend: ${backend.computeBackend}, ${backend.kvCache.engine} KV cache, on the compute thread`);
  return backend;
};
process.exitCode = await runCli(argv, wantsModels ? { backendFactory } : {});
setTimeout(() => process.exit(), 100).unref();
