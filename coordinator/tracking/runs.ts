/**
 * Runs as experiment tracking sees them: one job is one run (its attempts are part of it). Pure functions over the
 * job record, its metrics history and its run record (coordinator/store/run-store.ts): the summary `GET /api/runs` lists, the side
 * by side `GET /api/runs/compare` answers, and the JSON and CSV `GET /api/runs/:id/export` sends.
 */
import type { CheckpointRecord, JobRecord, MetricRow } from '../store/job-store.ts';
import { FINAL_STATES } from '../store/job-store.ts';
import type { RunData, RunRecord } from '../store/run-store.ts';

export interface RunSummary {
  id: string;
  name: string;
  /** spec.kind when the spec has one, else 'pretrain' (job-spec.ts's default). */
  kind: string;
  state: JobRecord['state'];
  stateReason: string;
  createdMs: number;
  finishedMs: number | null;
  steps: number; // last completed step
  totalSteps: number;
  trainLoss: number | null; // the last 'train' row's loss
  evalLoss: number | null; // the last 'eval' row's loss (held-out)
  evalPerplexity: number | null;
  tokensPerS: number | null; // mean over the recorded training steps
  modelVersion: number | null;
  codeVersion: string | null; // null for jobs submitted before tracking existed
}

/** The last row of each kind and the mean tokens/s, which is all a summary needs of the history. */
export interface MetricDigest {
  lastTrain: Record<string, number> | null;
  lastEval: Record<string, number> | null;
  meanTokensPerS: number | null;
}

export function digestMetrics(rows: readonly MetricRow[]): MetricDigest {
  const train = rows.filter((r) => r.kind === 'train');
  const tps = train.map((r) => r.values.tokensPerS).filter((x): x is number => Number.isFinite(x));
  return {
    lastTrain: train.at(-1)?.values ?? null,
    lastEval: rows.filter((r) => r.kind === 'eval').at(-1)?.values ?? null,
    meanTokensPerS: tps.length ? tps.reduce((a, b) => a + b, 0) / tps.length : null,
  };
}

export function runSummary(job: JobRecord, digest: MetricDigest, run: RunRecord | undefined): RunSummary {
  const kind = (job.spec as { kind?: unknown }).kind;
  const evalLoss = digest.lastEval?.loss ?? null;
  return {
    id: job.id,
    name: job.name,
    kind: typeof kind === 'string' ? kind : 'pretrain',
    state: job.state,
    stateReason: job.stateReason,
    createdMs: job.createdMs,
    finishedMs: FINAL_STATES.has(job.state) ? job.updatedMs : null,
    steps: job.step,
    totalSteps: job.spec.training.steps,
    trainLoss: digest.lastTrain?.loss ?? null,
    evalLoss,
    evalPerplexity: digest.lastEval?.perplexity ?? (evalLoss === null ? null : Math.exp(evalLoss)),
    tokensPerS: digest.meanTokensPerS,
    modelVersion: job.modelVersion,
    codeVersion: run?.codeVersion ?? null,
  };
}

/** Nested objects as "a.b.c" → leaf value (arrays are leaves, compared whole). */
export function flatten(value: unknown, prefix = '', out: Record<string, unknown> = {}): Record<string, unknown> {
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (prefix) out[prefix] = value;
  return out;
}

export interface RunComparison {
  runs: RunSummary[];
  /** Every spec key path whose value is not the same in all runs, with each run's value (null where it has none). */
  specDiff: Array<{ path: string; values: Record<string, unknown> }>;
  /** Loss by step on one x axis: every step any run recorded, null where a run has no row of that kind there. */
  series: { steps: number[]; runs: Array<{ id: string; train: Array<number | null>; eval: Array<number | null> }> };
}

export function compareRuns(items: ReadonlyArray<{ job: JobRecord; metrics: readonly MetricRow[]; run: RunRecord | undefined }>): RunComparison {
  const flat = items.map((i) => flatten(i.job.spec));
  const paths = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
  const specDiff = paths
    .filter((p) => new Set(flat.map((f) => JSON.stringify(f[p] ?? null))).size > 1)
    .map((path) => ({ path, values: Object.fromEntries(items.map((i, k) => [i.job.id, flat[k]![path] ?? null])) }));
  const steps = [...new Set(items.flatMap((i) => i.metrics.map((m) => m.step)))].sort((a, b) => a - b);
  const column = (rows: readonly MetricRow[], kind: MetricRow['kind']) => {
    const byStep = new Map(rows.filter((r) => r.kind === kind).map((r) => [r.step, r.values.loss ?? null]));
    return steps.map((s) => byStep.get(s) ?? null);
  };
  return {
    runs: items.map((i) => runSummary(i.job, digestMetrics(i.metrics), i.run)),
    specDiff,
    series: { steps, runs: items.map((i) => ({ id: i.job.id, train: column(i.metrics, 'train'), eval: column(i.metrics, 'eval') })) },
  };
}

export interface RunExport {
  format: 'meshtrain-run/1';
  run: RunSummary;
  spec: JobRecord['spec'];
  codeVersion: string | null;
  artifacts: {
    dataset: RunData | null;
    checkpoints: CheckpointRecord[];
    model: { name: string; version: number; files: Record<string, { bytes: number; sha256: string }> } | null;
  };
  metrics: MetricRow[];
}

/** One row per recorded (step, kind): step, kind, atMs, then every metric any row has, in order of first appearance. */
export function metricsCsv(rows: readonly MetricRow[]): string {
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r.values)))];
  const lines = [['step', 'kind', 'atMs', ...keys].map(csvCell).join(',')];
  for (const r of rows) lines.push([r.step, r.kind, r.atMs, ...keys.map((k) => r.values[k] ?? '')].map(csvCell).join(','));
  return lines.join('\n') + '\n';
}

/** RFC 4180: a cell with a comma, quote or line break is quoted, its quotes doubled. */
function csvCell(v: unknown): string {
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}
