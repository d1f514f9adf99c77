#!/usr/bin/env node
// gateway serve … — see gateway/cli.ts (run through tsx; no build step).
// Registry models run on the GPT backend (gateway/gpt-backend.ts) with the agent's compute backend choice (wasm
// with the fast matmul kernels by default; tfjs-node(-gpu) when installed).
import { register } from 'tsx/esm/api';

register();
const { runCli } = await import('../gateway/cli.ts');
const { gptBackendFactory } = await import('../gateway/gpt-backend.ts');
const { loadBackend } = await import('../node-agent/compute/backend.ts');
const argv = process.argv.slice(2);
const wantsModels = argv[0] === 'serve' && !argv.includes('--fake') && !argv.includes('--help') && !argv.includes('-h');
const backendFactory = async (files, meta) => {
  await loadBackend(process.env.MESHTRAIN_BACKEND ?? 'auto');
  return gptBackendFactory(files, meta);
};
process.exitCode = await runCli(argv, wantsModels ? { backendFactory } : {});
setTimeout(() => process.exit(), 100).unref();
