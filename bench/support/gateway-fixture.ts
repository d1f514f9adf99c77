/**
 * Set-up for the gateway benchmark: a registry folder with real GPT versions (made the way a finished job registers
 * them: SqliteStateStore + ModelRegistry.register(exportHf(...))), and `bin/gateway.js serve` child processes on
 * loopback, as users start them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ModelRegistry } from '../../coordinator/registry/registry.ts';
import { SqliteStateStore } from '../../coordinator/store/state-store.ts';
import { GPT } from '../../model/gpt.ts';
import { type GPTConfig } from '../../model/params.ts';
import { exportHf } from '../../model/hf-format.ts';
import type { Tokenizer } from '../../model/tokenizer.ts';

/** Registers one version of `name` per seed (a fresh GPT each) in `<dataDir>/registry`; returns the versions given. */
export async function makeRegistry(dataDir: string, name: string, config: GPTConfig, tokenizer: Tokenizer, seeds: number[]): Promise<{ registry: string; versions: number[] }> {
  const state = new SqliteStateStore(join(dataDir, 'state.db'));
  const registry = new ModelRegistry(join(dataDir, 'registry'), state.database);
  const versions: number[] = [];
  try {
    for (const seed of seeds) {
      const model = new GPT(config, { seed });
      try {
        versions.push((await registry.register(name, exportHf(model, tokenizer), { jobId: `bench-seed-${seed}` })).version);
      } finally {
        model.dispose();
      }
    }
  } finally {
    state.close();
  }
  return { registry: join(dataDir, 'registry'), versions };
}

export interface GatewayProcess {
  url: string;
  child: ChildProcess;
  /** The last few KB of its stderr (warnings, errors). */
  stderr(): string;
  kill(): void;
}

const STDERR_KEEP = 8192;

/** Starts `bin/gateway.js serve --port 0 --host 127.0.0.1 …args` and resolves with its URL once it listens. */
export function startGateway(args: string[], env: Record<string, string | undefined> = {}, timeoutMs = 120_000): Promise<GatewayProcess> {
  const bin = new URL('../../bin/gateway.js', import.meta.url).pathname;
  const child = spawn(process.execPath, [bin, 'serve', '--port', '0', '--host', '127.0.0.1', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, LOG_LEVEL: 'warn', ...env },
  });
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr = (stderr + d).slice(-STDERR_KEEP); });
  const kill = (): void => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); };
  return new Promise<GatewayProcess>((resolve, reject) => {
    const timer = setTimeout(() => { kill(); reject(new Error(`gateway did not listen within ${timeoutMs} ms: ${stderr}`)); }, timeoutMs);
    // readline keeps draining stdout after the first line, so the child never blocks on a full pipe.
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = /gateway listening on (http:\/\/\S+)/.exec(line);
      if (m) { clearTimeout(timer); resolve({ url: m[1]!, child, stderr: () => stderr, kill }); }
    });
    child.on('exit', (code, signal) => { clearTimeout(timer); reject(new Error(`gateway exited (${code ?? signal}) before listening: ${stderr}`)); });
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
  });
}
