/**
 * npm run bench -- share [--rows 4] [--seconds 8] [--max 4]
 *
 * How agents computing at once on this machine slow each other: n = 1 … --max processes, each running a training
 * micro-batch (a 4-block GPT of width 128, context 64, --rows sequences: StageModel's forward and backward on wasm,
 * as a trainer worker does) back to back for --seconds, all at once; the median time per micro-batch of each.
 *   runs             [{n, ms: [median per process], slowdown: mean ms ÷ the n = 1 run's}]
 *   agent_cores      the least-squares agentCores of the planner's sharing model, slowdown = max(1, n·c / cores),
 *                    over the runs with n > cores / c (coordinator/jobs/cost-model.ts slowdown; DEFAULT_CALIBRATION.agentCores)
 *   cores            this machine's
 */
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { intOption, parseCli } from '../common/cli.ts';

const CHILD = process.env.MESHTRAIN_SHARE_CHILD;

async function child(rows: number, seconds: number): Promise<void> {
  const { loadBackend } = await import('../model/compute/backend.ts');
  await loadBackend('wasm');
  const { initShardParams, shardLayout } = await import('../model/shard-layout.ts');
  const { StageModel } = await import('../model/stage-model.ts');
  const { gptConfig } = await import('../model/params.ts');
  const config = gptConfig({ vocabSize: 512, nCtx: 64, nLayer: 4, nHead: 4, nEmbd: 128 });
  const layout = shardLayout(config, { stage: 0, stages: 1, firstLayer: 0, endLayer: 4, tpRank: 0, tpSize: 1 });
  const stage = new StageModel(config, layout, initShardParams(config, layout, 1));
  const grads = new Float32Array(layout.totalSize);
  const T = 64;
  const ids = Int32Array.from({ length: rows * T }, (_, i) => (i * 31 + 7) % 512);
  const targets = Int32Array.from({ length: rows * T }, (_, i) => (i * 17 + 3) % 512);
  await stage.backward({ ids }, rows, T, { targets, scale: 1 }, grads); // warm-up
  const times: number[] = [];
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    const t0 = performance.now();
    await stage.backward({ ids }, rows, T, { targets, scale: 1 }, grads);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  process.stdout.write(`${times[times.length >> 1]}\n`);
}

export default async function main(argv: string[]): Promise<object> {
  const { values } = parseCli(argv, { rows: { type: 'string' }, seconds: { type: 'string' }, max: { type: 'string' } });
  const rows = intOption(values.rows, 'rows', 4, 1, 64);
  const seconds = intOption(values.seconds, 'seconds', 8, 1, 600);
  const max = intOption(values.max, 'max', 4, 1, 64);
  const cores = availableParallelism();
  const runs: Array<{ n: number; ms: number[]; slowdown: number }> = [];
  for (let n = 1; n <= max; n++) {
    const ms = await Promise.all(Array.from({ length: n }, () => new Promise<number>((resolve, reject) => {
      const p = spawn(process.execPath, ['--import', 'tsx', new URL(import.meta.url).pathname], {
        stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, MESHTRAIN_SHARE_CHILD: `${rows},${seconds}` },
      });
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      p.on('exit', (code) => (code === 0 ? resolve(Number(out.trim())) : reject(new Error(`a process exited ${code}`))));
    })));
    const mean = ms.reduce((a, b) => a + b, 0) / n;
    const slowdown = runs.length ? mean / (runs[0]!.ms[0]!) : 1;
    runs.push({ n, ms: ms.map((x) => Math.round(x * 10) / 10), slowdown: Math.round(slowdown * 100) / 100 });
    console.error(`${n} at once: ${ms.map((x) => x.toFixed(1)).join(' ')} ms a micro-batch (×${slowdown.toFixed(2)})`);
  }
  // slowdown ≈ n·c / cores where the cores are shared: least squares for c through the origin
  const shared = runs.filter((r) => r.slowdown > 1.15);
  const c = shared.length ? (cores * shared.reduce((a, r) => a + r.n * r.slowdown, 0)) / shared.reduce((a, r) => a + r.n * r.n, 0) : null;
  return { bench: 'share', rows, cores, runs, agent_cores: c === null ? null : Math.round(c * 100) / 100 };
}

if (CHILD) {
  const [rows, seconds] = CHILD.split(',').map(Number);
  await child(rows!, seconds!);
}
