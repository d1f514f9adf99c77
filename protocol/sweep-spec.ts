/**
 * The hyper-parameter sweep spec: what `POST /api/sweeps` and `coordinator sweep submit sweep.json` accept. A base
 * job spec, the parameters to vary (each a key path into the job spec, with a list of values or a range), the
 * strategy, and a budget of trials. `validateSweepSpec` checks the shape and the rules a schema cannot say (each
 * path names a field of the job spec, ranges are ordered, a log range is positive, a grid lists its values) and
 * returns every problem at once; coordinator/tracking/sweep-plan.ts then validates each trial's job spec.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { JobSpec } from './job-spec.ts';

const ParamValue = Type.Union([Type.Number(), Type.String({ maxLength: 4096 }), Type.Boolean()]);

export const ValuesParameter = Type.Object(
  { values: Type.Array(ParamValue, { minItems: 1, maxItems: 1000, description: 'the values to try, in order (grid) or to draw from (random)' }) },
  { additionalProperties: false },
);

export const RangeParameter = Type.Object(
  {
    min: Type.Number({ description: 'lowest value drawn' }),
    max: Type.Number({ description: 'highest value drawn' }),
    scale: Type.Optional(Type.Union([Type.Literal('linear'), Type.Literal('log')], { description: "'log': uniform in log(value), for rates; default 'linear'" })),
    integer: Type.Optional(Type.Boolean({ description: 'round each draw to an integer within [min, max]' })),
  },
  { additionalProperties: false },
);

export const SweepParameter = Type.Union([ValuesParameter, RangeParameter]);

export const SweepSpec = Type.Object(
  {
    // Trials are named `<name>-t<i>` and must still be valid job names (64 characters at most).
    name: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,55}$', description: 'sweep name; trial jobs are <name>-t<i>' }),
    base: Type.Unknown({ description: 'the job spec every trial starts from (job-spec.ts); its name is replaced by the trial name' }),
    parameters: Type.Record(Type.String({ pattern: '^[A-Za-z][A-Za-z0-9]*(\\.[A-Za-z][A-Za-z0-9]*)*$' }), SweepParameter, {
      minProperties: 1,
      maxProperties: 16,
      description: 'job spec key path (e.g. training.lr) → {values} or {min, max, scale?, integer?}',
    }),
    strategy: Type.Union([Type.Literal('grid'), Type.Literal('random')], { description: "'grid': every combination of the values in order; 'random': seeded draws" }),
    budget: Type.Integer({ minimum: 1, maximum: 1000, description: 'most trials run' }),
    seed: Type.Optional(Type.Integer({ minimum: 0, maximum: 2 ** 31 - 1, description: "random strategy's seed (default: drawn once and stored)" })),
    parallelTrials: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, description: 'trials running at once (default 1)' })),
    metric: Type.Optional(Type.Literal('evalLoss', { description: 'what picks the best trial: the last held-out loss (lower is better)' })),
  },
  { additionalProperties: false },
);

export type SweepSpec = Static<typeof SweepSpec>;
export type SweepParameter = Static<typeof SweepParameter>;

/** A spec with its defaults filled in (and its seed fixed): what is stored with the sweep. */
export interface ResolvedSweepSpec extends SweepSpec {
  seed: number;
  parallelTrials: number;
  metric: 'evalLoss';
}

const check = TypeCompiler.Compile(SweepSpec);

export type SweepSpecResult = { ok: true; spec: ResolvedSweepSpec } | { ok: false; errors: string[] };

/** `seed`: the one used when the spec names none (the caller draws it, so this stays pure). */
export function validateSweepSpec(raw: unknown, seed: number): SweepSpecResult {
  const params = (raw as { parameters?: unknown } | null)?.parameters;
  const pathErrors = params && typeof params === 'object' ? Object.keys(params).flatMap(pathProblems) : [];
  if (!check.Check(raw)) {
    // Every problem at once: the paths are checked even when the shape is wrong elsewhere.
    const errors = [...check.Errors(raw)].map((e) => `${e.path || '/'} ${e.message}`);
    return { ok: false, errors: [...new Set([...errors, ...pathErrors])] };
  }
  const spec = raw as SweepSpec;
  const errors: string[] = [...pathErrors];
  if (!spec.base || typeof spec.base !== 'object' || Array.isArray(spec.base)) errors.push('/base must be a job spec object');
  for (const [path, p] of Object.entries(spec.parameters)) {
    const at = `/parameters/${path}`;
    if ('values' in p) continue;
    if (!Number.isFinite(p.min) || !Number.isFinite(p.max) || p.min > p.max) errors.push(`${at}: min ${p.min} must not exceed max ${p.max}`);
    if (p.scale === 'log' && !(p.min > 0)) errors.push(`${at}: a log scale needs min > 0`);
    if (p.integer && Math.ceil(p.min) > Math.floor(p.max)) errors.push(`${at}: no integer lies in [${p.min}, ${p.max}]`);
    if (spec.strategy === 'grid') errors.push(`${at}: a grid needs a list of values, not a range`);
  }
  if (errors.length) return { ok: false, errors };
  return { ok: true, spec: { ...spec, seed: spec.seed ?? seed, parallelTrials: spec.parallelTrials ?? 1, metric: 'evalLoss' } };
}

function pathProblems(path: string): string[] {
  const at = `/parameters/${path}`;
  const field = fieldSchema(path);
  if (field === undefined) return [`${at} names no field of the job spec`];
  if (path === 'name') return [`${at}: the sweep names its trials itself`];
  if (isObjectSchema(field)) return [`${at} names a section of the job spec, not a field`];
  return [];
}

/** The job spec schema of the field at a dotted key path ('training.lr'); undefined when there is no such field. */
export function fieldSchema(path: string): TSchema | undefined {
  let at: TSchema | undefined = JobSpec;
  for (const key of path.split('.')) {
    const objects: TSchema[] = at?.anyOf ? (at.anyOf as TSchema[]).filter(isObjectSchema) : at && isObjectSchema(at) ? [at] : [];
    at = objects.map((o) => (Object.hasOwn(o.properties as object, key) ? (o.properties as Record<string, TSchema>)[key] : undefined)).find((s) => s !== undefined);
    if (!at) return undefined;
  }
  return at;
}

function isObjectSchema(s: TSchema): boolean {
  return s.type === 'object' && typeof s.properties === 'object';
}
