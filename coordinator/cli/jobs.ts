/**
 * The training-job commands of the coordinator CLI (coordinator/cli/index.ts routes to them):
 *   coordinator submit job.json        submit a job spec; prints its id
 *   coordinator jobs                   list jobs
 *   coordinator job ID [--watch]       one job: state, metrics, layout, per-rank step breakdown (--watch: live)
 *   coordinator plan ID                the planner's choice, its candidates, predicted vs measured step time
 *   coordinator replan ID LAYOUT       change a job's layout ('auto' or d×p×t)
 */
import { readFile } from 'node:fs/promises';
import { UsageError } from '../../common/cli.ts';
import type { PlanReport } from '../jobs/plan-report.ts';
import type { JobLive } from '../jobs/runner.ts';
import { FINAL_STATES, type CheckpointRecord, type JobRecord, type MetricRow } from '../store/job-store.ts';
import type { CliIo, Values } from './client.ts';

export async function submit(io: CliIo, v: Values, file: string): Promise<number> {
  let spec: unknown;
  try {
    spec = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new UsageError(`cannot read job spec ${file}: ${(err as Error).message}`);
  }
  const job = await io.api<JobRecord>('POST', '/api/jobs', spec);
  if (v.json) io.print(JSON.stringify(job, null, 2) + '\n');
  else io.print(`submitted ${job.id} (${job.name}): ${job.state}\n`);
  return 0;
}

export async function listJobs(io: CliIo, v: Values): Promise<number> {
  const { jobs } = await io.api<{ jobs: Array<Omit<JobRecord, 'spec'> & { totalSteps: number }> }>('GET', '/api/jobs');
  if (v.json) io.print(JSON.stringify(jobs, null, 2) + '\n');
  else io.table(['ID', 'NAME', 'STATE', 'STEP', 'WHY', 'UPDATED'], jobs.map((j) => [j.id, j.name, j.state, `${j.step}/${j.totalSteps}`, j.stateReason, new Date(j.updatedMs).toISOString()]));
  return 0;
}

export async function showJob(io: CliIo, v: Values, id: string): Promise<number> {
  const res = await io.api<{ job: JobRecord; metrics: MetricRow[]; checkpoints: CheckpointRecord[] }>('GET', `/api/jobs/${encodeURIComponent(id)}`);
  const live = await io.api<JobLive>('GET', `/api/jobs/${encodeURIComponent(id)}/live`);
  if (v.json) {
    io.print(JSON.stringify({ ...res, live }, null, 2) + '\n');
    return 0;
  }
  const { job, metrics } = res;
  const last = (kind: string) => metrics.filter((m) => m.kind === kind).at(-1);
  const fmt = (m: MetricRow | undefined) => (m ? Object.entries(m.values).map(([k, x]) => `${k} ${Number(x.toPrecision(4))}`).join(', ') : '—');
  io.print(
    [
      `${job.id} (${job.name}): ${job.state} — ${job.stateReason}`,
      `step ${job.step} of ${job.spec.training.steps}`,
      `model: vocab ${job.spec.model.vocabSize}, ctx ${job.spec.model.nCtx}, ${job.spec.model.nLayer} layers, ${job.spec.model.nHead} heads, d ${job.spec.model.nEmbd}`,
      `last train: ${fmt(last('train'))}`,
      `last eval:  ${fmt(last('eval'))}`,
      `checkpoints: ${res.checkpoints.length ? res.checkpoints.map((c) => c.step).join(', ') : '—'}`,
    ].join('\n') + '\n',
  );
  if (live.layout) {
    const b = live.breakdown;
    io.print(`\nlayout ${live.layout.data}×${live.layout.pipeline}×${live.layout.tensor} (data × pipeline × tensor), attempt ${live.attempt}` +
      (b ? `; a typical step: ${b.stepMs.toFixed(0)} ms = compute ${b.computeMs.toFixed(0)} + all-reduce ${b.allreduceMs.toFixed(0)} + bubble ${b.bubbleMs.toFixed(0)} + waiting ${b.waitMs.toFixed(0)}` : '') + '\n');
    const ms = (x: number) => x.toFixed(0);
    const byRank = new Map(live.ranks.map((r) => [r.rank, r]));
    io.table(
      ['RANK', 'AGENT', 'DP', 'STAGE', 'SHARD', 'LAYERS', 'STEP', 'STEP MS', 'COMPUTE', 'ALL-REDUCE', 'BUBBLE', 'WAIT'],
      live.placement.map((c) => {
        const r = byRank.get(c.rank);
        return [String(c.rank), c.nodeName, String(c.dp), String(c.pp), String(c.tp), `${c.layers[0]}–${c.layers[1]}`,
          r ? String(r.step) : '—', r ? ms(r.stepMs) : '—', r ? ms(r.computeMs) : '—', r ? ms(r.allreduceMs) : '—', r ? ms(r.bubbleMs) : '—', r ? ms(r.waitMs) : '—'];
      }),
    );
    for (const l of live.links) io.print(`link ${l.fromName} → ${l.toName}: ${(l.bytes / 1e6).toFixed(2)} MB in ${l.ms.toFixed(1)} ms = ${l.gbps.toFixed(3)} GB/s\n`);
    if (live.straggler) io.print(`straggler: ${live.straggler.reason}\n`);
  }
  return 0;
}

/** The live line of `job ID --watch`: step, progress, loss, tokens/s, the step's split and the straggler. */
function watchLine(job: Pick<JobRecord, 'state' | 'step'> & { totalSteps: number }, live: JobLive | null, lastTrain?: MetricRow, lastEval?: MetricRow): string {
  const frac = job.totalSteps > 0 ? Math.min(1, job.step / job.totalSteps) : 0;
  const width = 20, filled = Math.round(frac * width);
  const parts = [`${job.state} step ${job.step}/${job.totalSteps} ${'█'.repeat(filled)}${'░'.repeat(width - filled)} ${(frac * 100).toFixed(0)}%`];
  if (lastTrain) parts.push(`loss ${lastTrain.values.loss!.toFixed(4)}`);
  if (lastEval) parts.push(`eval ${lastEval.values.loss!.toFixed(4)}`);
  if (lastTrain?.values.tokensPerS !== undefined) parts.push(`${Math.round(lastTrain.values.tokensPerS).toLocaleString('en-US')} tok/s`);
  const b = live?.breakdown;
  if (b) parts.push(`${b.stepMs.toFixed(0)} ms/step (compute ${b.computeMs.toFixed(0)}, all-reduce ${b.allreduceMs.toFixed(0)}, bubble ${b.bubbleMs.toFixed(0)}, wait ${b.waitMs.toFixed(0)})`);
  if (live?.straggler) parts.push(`straggler ${live.straggler.nodeName} ${live.straggler.ratio.toFixed(1)}×`);
  return parts.join(' · ');
}

/** Polls the job once a second and shows its live line (one JSON object per change with --json) until it ends. */
export async function watchJob(io: CliIo, v: Values, id: string): Promise<number> {
  const path = `/api/jobs/${encodeURIComponent(id)}`;
  const tty = process.stdout.isTTY && !v.json;
  let after = -1, lastState = '', lastTrain: MetricRow | undefined, lastEval: MetricRow | undefined;
  for (;;) {
    const res = await io.api<{ job: JobRecord; metrics: MetricRow[] }>('GET', `${path}?after=${after}`);
    const live = await io.api<JobLive>('GET', `${path}/live`);
    const { job } = res;
    const totalSteps = job.spec.training.steps;
    for (const row of res.metrics) {
      if (row.kind === 'train') lastTrain = row;
      else lastEval = row;
      if (v.json) io.print(JSON.stringify({ jobId: id, ...row }) + '\n');
    }
    after = Math.max(after, ...res.metrics.map((m) => m.step));
    const line = watchLine({ state: job.state, step: job.step, totalSteps }, live, lastTrain, lastEval);
    if (v.json) {
      if (job.state !== lastState) io.print(JSON.stringify({ jobId: id, state: job.state, reason: job.stateReason, step: job.step }) + '\n');
    } else if (tty) io.print(`\r\x1b[2K${line}`);
    else if (res.metrics.length || job.state !== lastState) io.print(line + '\n');
    lastState = job.state;
    if (FINAL_STATES.has(job.state)) {
      if (tty) io.print(`\n${job.state}: ${job.stateReason}\n`);
      else if (!v.json) io.print(`${job.state}: ${job.stateReason}\n`);
      return job.state === 'succeeded' ? 0 : 1;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}


/** 'auto' or d×p×t (x or ×) → the job spec's `parallel`. */
function parseLayout(text: string): 'auto' | { data: number; pipeline: number; tensor: number } {
  if (text === 'auto') return 'auto';
  const m = /^(\d+)[x×](\d+)[x×](\d+)$/.exec(text);
  if (!m) throw new UsageError(`layout '${text}' is neither 'auto' nor data×pipeline×tensor such as 2x2x1`);
  return { data: Number(m[1]), pipeline: Number(m[2]), tensor: Number(m[3]) };
}

export async function replan(io: CliIo, v: Values, id: string, layout: string): Promise<number> {
  const job = await io.api<JobRecord>('POST', `/api/jobs/${encodeURIComponent(id)}/replan`, { parallel: parseLayout(layout) });
  if (v.json) io.print(JSON.stringify(job, null, 2) + '\n');
  else io.print(`${job.id}: ${job.state} — ${job.stateReason}\n`);
  return 0;
}

export async function showPlan(io: CliIo, v: Values, id: string): Promise<number> {
  const report = await io.api<PlanReport>('GET', `/api/jobs/${encodeURIComponent(id)}/plan`);
  if (v.json) {
    io.print(JSON.stringify(report, null, 2) + '\n');
    return 0;
  }
  const plan = report.plan;
  if (!plan) {
    io.print(`${id}: not planned yet\n`);
    return 0;
  }
  const ms = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(1));
  io.print(`${plan.explanation}\n${plan.refused ? `refused: ${plan.refused}\n` : ''}\n`);
  io.table(
    ['LAYOUT', 'MICRO', 'STAGES', 'STEP MS', 'BUBBLE MS', 'DP MS', 'TP MS', 'MEM MB', 'FITS'],
    plan.candidates.map((c) => [
      `${c.layout.data}×${c.layout.pipeline}×${c.layout.tensor}`, String(c.microBatches), c.stages.map(([a, b]) => `${a}-${b}`).join(','),
      ms(c.predicted.stepMs), ms(c.predicted.bubbleMs), ms(c.predicted.dataAllreduceMs), ms(c.predicted.tensorCommMs),
      ms(c.predicted.memoryBytesPerAgent / 1e6), c.feasible ? 'yes' : `no: ${c.reason ?? ''}`,
    ]),
  );
  io.print(`\npredicted ${ms(report.predictedStepMs)} ms per step, measured ${ms(report.measuredStepMs)} ms (median of ${report.measuredSteps} steps)\n`);
  return 0;
}
