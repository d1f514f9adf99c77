#!/usr/bin/env node
// gateway serve … — see gateway/cli.ts (run through tsx; no build step).
// Registry models run on the GPT backend (gateway/gpt-backend.ts) on the compute backend --backend names (auto:
// a hardware GPU through WebGPU, then tfjs-node(-gpu) when installed, then wasm with the fast matmul kernels),
// loaded once for the process however many versions it serves.
import { register } from 'tsx/esm/api';

register();
const { runCli } = await import('../gateway/cli.ts');
const { gptBackendFactory } = await import('../gateway/gpt-backend.ts');
const { loadBackend } = await import('../model/compute/backend.ts');
const { createLogger } = await import('../common/log.ts');
const { adapterName } = await import('../protocol/gpu.ts');
const argv = process.argv.slice(2);
const wantsModels = argv[0] === 'serve' && !argv.includes('--fake') && !argv.includes('--help') && !argv.includes('-h');
let loaded;
const backendFactory = async (files, meta, options = {}) => {
  loaded ??= loadBackend(options.backend ?? 'auto').then((b) => {
    const gpu = b.gpu ? ` on ${adapterName(b.gpu)}` : '';
    createLogger('gateway').info(`compute backend: ${b.name}${gpu}${b.passedOver.length ? `; passed over ${b.passedOver.join('; ')}` : ''}`);
    return b;
  });
  await loaded;
  return gptBackendFactory(files, meta);
};
process.exitCode = await runCli(argv, wantsModels ? { backendFactory } : {});
setTimeout(() => process.exit(), 100).unref();
