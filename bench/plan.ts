/**
 * npm run bench -- plan [--steps 8] [--layouts 1x1x1,4x1x1,2x2x1,1x2x2,2x1x2,1x4x1] [--embd 128] [--backend wasm]
 *
 * The planner's predicted step time against the step time measured on real agent processes: a coordinator and 4
 * agents on loopback, one short job per pinned data × pipeline × tensor layout, all on the same model and global
 * batch, one after the other. Each job's GET /api/jobs/:id/plan gives the planner's prediction (predictedStepMs)
 * and the median step it measured (measuredStepMs, leaving out the first step: it pays for warm-up).
 *   layouts          [{layout, predicted_ms, measured_ms, rel_error}] with rel_error = |predicted − measured| / measured
 *   max_rel_error    the largest of them (target ≤ 0.25)
 *   agents           what the planner was told about each agent (host, cores, matmulGflops measured on join)
 *   foreign_cores    per layout: cores other processes kept busy meanwhile (/proc; on a shared machine other work
 *                    slows the agents, and the planner cannot know of it)
 * The planner is given what the coordinator gives it in every job (coordinator/jobs/runner.ts tick()): the free
 * agents' host, cores, memory and matmul GFLOP/s; nothing here is tuned to these layouts. The model is the
 * reference width (d 128, 4 heads, context 64) with 4 blocks so that 4 pipeline stages fit; --embd 64 runs the
 * same at half the width, where per-operation costs dominate. --backend runs the agents on another backend
 * (webgpu-software: llvmpipe, whose error is a figure to report, not a target).
 *   backend          what the agents computed on
 * The planner knows each agent by what it measured at join on its own backend (matmul rate and the compute probe,
 * protocol/probe.ts) and by the step times of the jobs before (the coordinator's refit, coordinator/jobs/planner-feedback.ts), as in
 * every cluster: the first layout is predicted from the probes alone.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { intOption, parseCli, UsageError } from '../common/cli.ts';
import { startCluster, type LocalCluster } from '../scripts/local-cluster.ts';
import { BACKENDS, isBackendChoice } from '../protocol/backends.ts';
import type { PlanReport } from '../coordinator/jobs/plan-report.ts';
import { runToEnd, writeCorpus } from '../test/support/jobs.ts';

const AGENTS = 4;
const MODEL = { vocabSize: 512, nCtx: 64, nLayer: 4, nHead: 4, nEmbd: 128 }; // a step: 0.6–1.3 s on 2 cores
const BATCH = 16; // global batch, sequences; with 4 micro-batches it divides over up to 4 replicas
const MICRO_BATCHES = 4;
const DEFAULT_LAYOUTS = '1x1x1,4x1x1,2x2x1,1x2x2,2x1x2,1x4x1';

const round1 = (x: number) => Math.round(x * 10) / 10;
const round3 = (x: number) => Math.round(x * 1000) / 1000;

/**
 * Busy CPU time of the whole machine and of this benchmark's processes (this one, the coordinator, the agents), in
 * seconds, from /proc (Linux); null where there is none.
 */
export function cpuSeconds(cluster: LocalCluster): { at: number; all: number; ours: number } | null {
  try {
    const [user, nice, system, , , irq, softirq] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const pids = [process.pid, cluster.coordinator.child.pid, ...cluster.agents.map((a) => a.child.pid)];
    let ours = 0;
    for (const pid of pids) {
      const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      ours += Number(fields[11]) + Number(fields[12]); // utime, stime
    }
    return { at: performance.now() / 1e3, all: (user! + nice! + system! + irq! + softirq!) / 100, ours: ours / 100 };
  } catch {
    return null;
  }
}

/** Cores kept busy by processes other than ours between two samples. */
export function foreignCores(from: ReturnType<typeof cpuSeconds>, to: ReturnType<typeof cpuSeconds>): number | null {
  if (!from || !to || to.at <= from.at) return null;
  return round1(Math.max(0, to.all - from.all - (to.ours - from.ours)) / (to.at - from.at));
}

function parseLayouts(text: string): Array<{ data: number; pipeline: number; tensor: number }> {
  return text.split(',').map((s) => {
    const m = /^(\d+)x(\d+)x(\d+)$/.exec(s.trim());
    if (!m) throw new UsageError(`--layouts: '${s}' is not DxPxT (e.g. 2x2x1)`);
    const [data, pipeline, tensor] = [Number(m[1]), Number(m[2]), Number(m[3])];
    if (data * pipeline * tensor > AGENTS || data * pipeline * tensor < 1) throw new UsageError(`--layouts: ${s} needs 1..${AGENTS} agents`);
    return { data, pipeline, tensor };
  });
}

export default async function main(argv: string[]): Promise<object> {
  const { values } = parseCli(argv, { steps: { type: 'string' }, layouts: { type: 'string' }, embd: { type: 'string' }, backend: { type: 'string' } });
  const backend = values.backend ?? 'wasm';
  if (!isBackendChoice(backend)) throw new UsageError(`--backend must be one of ${BACKENDS.join(', ')}`);
  const steps = intOption(values.steps, 'steps', 8, 3, 1000);
  const model = { ...MODEL, nEmbd: intOption(values.embd, 'embd', MODEL.nEmbd, MODEL.nHead, 1024) };
  if (model.nEmbd % model.nHead !== 0) throw new UsageError(`--embd must be a multiple of ${model.nHead}`);
  const layouts = parseLayouts(values.layouts ?? DEFAULT_LAYOUTS);
  const dir = mkdtempSync(join(tmpdir(), 'bench-plan-'));
  const corpus = writeCorpus(dir, 0, 30);
  console.error(`starting a coordinator and ${AGENTS} agents…`);
  const cluster = await startCluster({ agents: 0, stderr: 'ignore', agentArgs: ['--backend', backend] });
  try {
    for (let i = 0; i < AGENTS; i++) cluster.startAgent(`agent-${i}`);
    await cluster.waitForNodes(AGENTS, 600_000); // agents of one machine measure themselves one at a time: slow on llvmpipe
    const { nodes } = await cluster.api<{ nodes: Array<{ id: string; peerAddress: string; capabilities: { cores: number; matmulGflops: number } }> }>('GET', '/api/nodes');
    const rows: Array<{ layout: string; predicted_ms: number; measured_ms: number; rel_error: number; steps: number; foreign_cores: number | null }> = [];
    for (const parallel of layouts) {
      const name = `${parallel.data}x${parallel.pipeline}x${parallel.tensor}`;
      const t0 = performance.now();
      const cpu0 = cpuSeconds(cluster);
      const view = await runToEnd(cluster, {
        name: `plan-${name}`,
        model,
        data: { corpus },
        training: { steps, batchSize: BATCH, microBatches: MICRO_BATCHES, seqLen: MODEL.nCtx, checkpointEvery: 0, evalEvery: 0 },
        parallel,
      }, 1_800_000);
      const report = await cluster.api<PlanReport>('GET', `/api/jobs/${view.job.id}/plan`);
      const predicted = report.predictedStepMs!, measured = report.measuredStepMs!;
      const relError = Math.abs(predicted - measured) / measured;
      const foreign = foreignCores(cpu0, cpuSeconds(cluster));
      rows.push({ layout: name, predicted_ms: round1(predicted), measured_ms: round1(measured), rel_error: round3(relError), steps: report.measuredSteps, foreign_cores: foreign });
      console.error(`${name}: predicted ${predicted.toFixed(1)} ms, measured ${measured.toFixed(1)} ms (median of ${report.measuredSteps} steps), ` +
        `error ${(relError * 100).toFixed(0)}%  [${((performance.now() - t0) / 1000).toFixed(1)} s; other processes kept ${foreign ?? '?'} cores busy]`);
      console.error(`  ${report.plan?.explanation ?? ''}`);
    }
    const maxRelError = Math.max(...rows.map((r) => r.rel_error));
    return {
      bench: 'plan',
      backend,
      agents: nodes.map((n) => ({ id: n.id, host: new URL(n.peerAddress).hostname, cores: n.capabilities.cores, matmul_gflops: n.capabilities.matmulGflops })),
      model,
      batch_size: BATCH,
      micro_batches: MICRO_BATCHES,
      layouts: rows,
      max_rel_error: maxRelError,
      target_max_rel_error: 0.25,
      meets_target: maxRelError <= 0.25,
    };
  } finally {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
