/**
 * The decisions of a hyper-parameter sweep, as pure functions (sweeps.ts is the executor that submits jobs and
 * watches them): which parameters each trial gets (every grid combination in order, or seeded random draws), each
 * trial's job spec checked before anything is submitted, what to do next given the trials' states, and which
 * trial is best.
 *
 * A grid varies the first parameter slowest, like nested loops written in the order the parameters are listed.
 * Random draws come from one seeded stream (gateway/sampling.ts's mulberry32), one draw per parameter per trial in
 * listed order, so the same spec and seed always plan the same trials, on any machine and after any restart.
 */
import { seededRandom } from '../../common/random.ts';
import { validateJobSpec, type ResolvedJobSpec } from '../../protocol/job-spec.ts';
import type { ResolvedSweepSpec, SweepParameter } from '../../protocol/sweep-spec.ts';
import type { JobState } from '../store/job-store.ts';

export type ParamValue = number | string | boolean;
export type TrialParams = Record<string, ParamValue>;

/** Every trial's parameters, at most `budget` of them: trial i (1-based) is element i - 1. */
export function planTrials(spec: Pick<ResolvedSweepSpec, 'parameters' | 'strategy' | 'budget' | 'seed'>): TrialParams[] {
  const params = Object.entries(spec.parameters);
  if (spec.strategy === 'grid') {
    const lists = params.map(([path, p]) => [path, 'values' in p ? p.values : []] as const);
    const total = lists.reduce((n, [, values]) => n * values.length, 1);
    const out: TrialParams[] = [];
    for (let i = 0; i < Math.min(total, spec.budget); i++) {
      const trial: TrialParams = {};
      let rest = i;
      // The last parameter varies fastest: peel digits off i from the right in a mixed radix.
      for (let k = lists.length - 1; k >= 0; k--) {
        const [path, values] = lists[k]!;
        trial[path] = values[rest % values.length]!;
        rest = Math.floor(rest / values.length);
      }
      out.push(Object.fromEntries(params.map(([path]) => [path, trial[path]!])));
    }
    return out;
  }
  const random = seededRandom(spec.seed);
  return Array.from({ length: spec.budget }, () => Object.fromEntries(params.map(([path, p]) => [path, draw(p, random())])));
}

/** One value of `p` from a uniform u in [0, 1). */
export function draw(p: SweepParameter, u: number): ParamValue {
  if ('values' in p) return p.values[Math.min(p.values.length - 1, Math.floor(u * p.values.length))]!;
  const x = p.scale === 'log' ? Math.exp(Math.log(p.min) + u * (Math.log(p.max) - Math.log(p.min))) : p.min + u * (p.max - p.min);
  if (!p.integer) return Math.min(p.max, Math.max(p.min, x)); // exp(log(·)) may land a hair outside
  return Math.min(Math.floor(p.max), Math.max(Math.ceil(p.min), Math.round(x)));
}

export function trialName(sweepName: string, idx: number): string {
  return `${sweepName}-t${idx}`;
}

/** `base` with each key path set to its value, named for its trial (a new object; `base` is not changed). */
export function trialSpec(base: unknown, params: TrialParams, name: string): { spec: unknown } | { error: string } {
  const spec = structuredClone(base) as Record<string, unknown>;
  for (const [path, value] of Object.entries(params)) {
    const keys = path.split('.');
    let at: Record<string, unknown> = spec;
    for (const key of keys.slice(0, -1)) {
      if (at[key] === undefined) at[key] = {};
      if (!at[key] || typeof at[key] !== 'object' || Array.isArray(at[key])) return { error: `${path}: base.${keys.slice(0, keys.indexOf(key) + 1).join('.')} is not an object` };
      at = at[key] as Record<string, unknown>;
    }
    at[keys.at(-1)!] = value;
  }
  spec.name = name;
  return { spec };
}

/** Every trial's validated job spec, or every problem of every trial (each naming its trial and parameters). */
export function trialSpecs(spec: ResolvedSweepSpec, trials: readonly TrialParams[]): { ok: true; specs: ResolvedJobSpec[] } | { ok: false; errors: string[] } {
  const specs: ResolvedJobSpec[] = [];
  const errors: string[] = [];
  trials.forEach((params, i) => {
    const name = trialName(spec.name, i + 1);
    const label = `trial ${i + 1} (${Object.entries(params).map(([k, v]) => `${k}=${v}`).join(', ')})`;
    const built = trialSpec(spec.base, params, name);
    if ('error' in built) return void errors.push(`${label}: ${built.error}`);
    const res = validateJobSpec(built.spec);
    if (res.ok) specs.push(res.spec);
    else errors.push(...res.errors.map((e) => `${label}: ${e}`));
  });
  return errors.length ? { ok: false, errors } : { ok: true, specs };
}

/** What the sweep knows of a trial it submitted: its job's state and held-out loss. */
export interface TrialState {
  idx: number; // 1-based
  jobState: JobState;
  /** The last 'eval' row's loss; when the job recorded none, its final train loss (lossKind 'train'). */
  loss: number | null;
  lossKind: 'eval' | 'train' | null;
}

export type SweepDecision =
  | { action: 'submit'; idxs: number[] } // submit these trials now
  | { action: 'wait' } // trials are running and none may start yet
  | { action: 'finish'; state: 'succeeded' | 'failed'; reason: string };

/**
 * What the sweep does next: keep `parallelTrials` trials running until `total` have been submitted, then finish
 * when the last one ends — succeeded when some trial has a loss to rank, failed when none does.
 */
export function decideSweep(total: number, parallelTrials: number, trials: readonly TrialState[]): SweepDecision {
  const running = trials.filter((t) => !isFinal(t.jobState)).length;
  const next = trials.length + 1;
  const room = Math.min(parallelTrials - running, total - trials.length);
  if (room > 0) return { action: 'submit', idxs: Array.from({ length: room }, (_, k) => next + k) };
  if (running > 0 || trials.length < total) return { action: 'wait' };
  const best = bestTrial(trials);
  if (!best) return { action: 'finish', state: 'failed', reason: `none of the ${total} trials succeeded with a loss to compare` };
  return { action: 'finish', state: 'succeeded', reason: `best: trial ${best.idx} (${best.lossKind === 'eval' ? 'held-out' : 'train, no held-out'} loss ${best.loss})` };
}

/**
 * The succeeded trial with the lowest held-out loss. Train losses are no held-out figure: a trial with only a
 * train loss is ranked only when no trial has a held-out one. Ties go to the earlier trial.
 */
export function bestTrial<T extends TrialState>(trials: readonly T[]): T | undefined {
  const ranked = trials.filter((t) => t.jobState === 'succeeded' && t.loss !== null && Number.isFinite(t.loss));
  const pool = ranked.some((t) => t.lossKind === 'eval') ? ranked.filter((t) => t.lossKind === 'eval') : ranked;
  return pool.reduce<T | undefined>((best, t) => (!best || t.loss! < best.loss! || (t.loss === best.loss && t.idx < best.idx) ? t : best), undefined);
}

function isFinal(s: JobState): boolean {
  return s === 'succeeded' || s === 'failed' || s === 'cancelled';
}
