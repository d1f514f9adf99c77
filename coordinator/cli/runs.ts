/**
 * The experiment-tracking and sweep commands of the coordinator CLI (coordinator/cli/index.ts routes to them):
 *   coordinator runs list [--name N] [--state S]        runs with their final losses
 *   coordinator runs compare ID ID…                     spec differences, final metrics and loss sparklines side by side
 *   coordinator runs export ID [--format csv|json] [--out FILE]
 *   coordinator sweep submit sweep.json | sweep status ID | sweeps
 */
import { readFile, writeFile } from 'node:fs/promises';
import { UsageError } from '../../common/cli.ts';
import type { RunComparison, RunSummary } from '../tracking/runs.ts';
import type { SweepView } from '../tracking/sweeps.ts';
import type { CliIo, Values } from './client.ts';


const n4 = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? '—' : String(Number(x.toPrecision(4))));
const q = (v: Values, k: string) => (typeof v[k] === 'string' ? `${k}=${encodeURIComponent(v[k] as string)}` : '');

export async function runsCommand(io: CliIo, v: Values, args: string[]): Promise<number> {
  const [sub, ...ids] = args;
  if (sub === 'list' || sub === undefined) {
    if (ids.length) throw new UsageError(`'runs list' takes no arguments (use --name and --state)`);
    const query = [q(v, 'name'), q(v, 'state')].filter(Boolean).join('&');
    const { runs } = await io.api<{ runs: RunSummary[] }>('GET', `/api/runs${query ? `?${query}` : ''}`);
    if (v.json) return io.print(JSON.stringify(runs, null, 2) + '\n'), 0;
    io.table(['ID', 'NAME', 'STATE', 'STEP', 'LOSS', 'EVAL LOSS', 'PPL', 'TOK/S', 'MODEL', 'CODE'], runs.map((r) => [
      r.id, r.name, r.state, `${r.steps}/${r.totalSteps}`, n4(r.trainLoss), n4(r.evalLoss), n4(r.evalPerplexity),
      r.tokensPerS === null ? '—' : String(Math.round(r.tokensPerS)), r.modelVersion ? `${r.name}@v${r.modelVersion}` : '—', r.codeVersion ?? '—',
    ]));
    return 0;
  }
  if (sub === 'compare') {
    if (ids.length < 2) throw new UsageError("'runs compare' takes two or more run ids");
    const cmp = await io.api<RunComparison>('GET', `/api/runs/compare?ids=${ids.map(encodeURIComponent).join(',')}`);
    if (v.json) return io.print(JSON.stringify(cmp, null, 2) + '\n'), 0;
    printComparison(io, cmp);
    return 0;
  }
  if (sub === 'export') {
    if (ids.length !== 1) throw new UsageError("'runs export' takes exactly one run id");
    const format = typeof v.format === 'string' ? v.format : 'json';
    if (format !== 'json' && format !== 'csv') throw new UsageError(`--format must be json or csv, not '${format}'`);
    const body = await io.text(`/api/runs/${encodeURIComponent(ids[0]!)}/export?format=${format}`);
    if (typeof v.out === 'string') {
      await writeFile(v.out, body);
      io.print(`wrote ${ids[0]} as ${format} to ${v.out}\n`);
    } else io.print(body.endsWith('\n') ? body : body + '\n');
    return 0;
  }
  throw new UsageError(`unknown runs command '${sub}'; use list, compare or export`);
}

function printComparison(io: CliIo, cmp: RunComparison): void {
  const ids = cmp.runs.map((r) => r.id);
  io.print('spec differences:\n');
  if (cmp.specDiff.length === 0) io.print('  (none)\n');
  else io.table(['KEY', ...ids], cmp.specDiff.map((d) => [d.path, ...ids.map((id) => JSON.stringify(d.values[id] ?? null))]));
  io.print('\nfinal metrics:\n');
  const row = (label: string, f: (r: RunSummary) => string) => [label, ...cmp.runs.map(f)];
  io.table(['', ...ids], [
    row('name', (r) => r.name),
    row('state', (r) => r.state),
    row('steps', (r) => `${r.steps}/${r.totalSteps}`),
    row('train loss', (r) => n4(r.trainLoss)),
    row('eval loss', (r) => n4(r.evalLoss)),
    row('perplexity', (r) => n4(r.evalPerplexity)),
    row('tokens/s', (r) => (r.tokensPerS === null ? '—' : String(Math.round(r.tokensPerS)))),
    row('model', (r) => (r.modelVersion ? `${r.name}@v${r.modelVersion}` : '—')),
    row('code', (r) => r.codeVersion ?? '—'),
  ]);
  // One scale for every run, so the sparklines compare: lower is better.
  const all = cmp.series.runs.flatMap((s) => s.train).filter((x): x is number => x !== null);
  const lo = Math.min(...all), hi = Math.max(...all);
  io.print(`\ntrain loss by step (${n4(lo)} ▁ … █ ${n4(hi)}, steps ${cmp.series.steps[0] ?? '—'}–${cmp.series.steps.at(-1) ?? '—'}):\n`);
  for (const s of cmp.series.runs) io.print(`  ${s.id.padEnd(Math.max(...ids.map((i) => i.length)))}  ${sparkline(s.train, lo, hi)}\n`);
}

const BARS = '▁▂▃▄▅▆▇█';

/** At most `width` characters, each the mean of its bucket of steps, on the shared scale [lo, hi]; ' ' where none. */
export function sparkline(values: ReadonlyArray<number | null>, lo: number, hi: number, width = 40): string {
  const buckets = Math.min(width, values.length);
  let out = '';
  for (let b = 0; b < buckets; b++) {
    const slice = values.slice(Math.floor((b * values.length) / buckets), Math.floor(((b + 1) * values.length) / buckets)).filter((x): x is number => x !== null);
    if (slice.length === 0) {
      out += ' ';
      continue;
    }
    const mean = slice.reduce((a, c) => a + c, 0) / slice.length;
    const frac = hi > lo ? (mean - lo) / (hi - lo) : 0;
    out += BARS[Math.min(BARS.length - 1, Math.max(0, Math.round(frac * (BARS.length - 1))))];
  }
  return out;
}

export async function sweepCommand(io: CliIo, v: Values, args: string[]): Promise<number> {
  const [sub, arg, ...extra] = args;
  if (extra.length || (sub !== 'list' && arg === undefined)) throw new UsageError("use 'sweep submit FILE', 'sweep status ID' or 'sweep list'");
  if (sub === 'submit') {
    let spec: unknown;
    try {
      spec = JSON.parse(await readFile(arg!, 'utf8'));
    } catch (err) {
      throw new UsageError(`cannot read sweep spec ${arg}: ${(err as Error).message}`);
    }
    const s = await io.api<SweepView>('POST', '/api/sweeps', spec);
    io.print(v.json ? JSON.stringify(s, null, 2) + '\n' : `submitted ${s.id} (${s.name}): ${s.totalTrials} trials, ${s.spec.parallelTrials} at a time\n`);
    return 0;
  }
  if (sub === 'status') {
    const s = await io.api<SweepView>('GET', `/api/sweeps/${encodeURIComponent(arg!)}`);
    if (v.json) return io.print(JSON.stringify(s, null, 2) + '\n'), 0;
    io.print(`${s.id} (${s.name}): ${s.state} — ${s.stateReason}; ${s.trials.length} of ${s.totalTrials} trials submitted\n`);
    io.table(['TRIAL', 'JOB', 'STATE', ...Object.keys(s.spec.parameters).map((p) => p.toUpperCase()), 'LOSS', 'MODEL', ''], s.trials.map((t) => [
      t.name, t.jobId, t.jobState, ...Object.keys(s.spec.parameters).map((p) => String(t.params[p])),
      t.loss === null ? '—' : `${n4(t.loss)}${t.lossKind === 'train' ? ' (train)' : ''}`,
      t.modelVersion ? `${t.name}@v${t.modelVersion}` : '—', s.best?.idx === t.idx ? '← best' : '',
    ]));
    if (s.best) io.print(`best: ${s.best.name} (${s.best.jobId}) loss ${n4(s.best.loss)}: ${s.best.note}\n`);
    return 0;
  }
  if (sub === 'list') {
    const { sweeps } = await io.api<{ sweeps: SweepView[] }>('GET', '/api/sweeps');
    if (v.json) return io.print(JSON.stringify(sweeps, null, 2) + '\n'), 0;
    io.table(['ID', 'NAME', 'STATE', 'TRIALS', 'BEST'], sweeps.map((s) => [s.id, s.name, s.state, `${s.trials.length}/${s.totalTrials}`, s.best ? `${s.best.name} ${n4(s.best.loss)}` : '—']));
    return 0;
  }
  throw new UsageError(`unknown sweep command '${sub}'; use submit, status or list`);
}
