/**
 * Durable training jobs and their metrics history, in the coordinator's SQLite database (tables created by
 * state-store.ts's migrations). A job moves queued → running → succeeded | failed | cancelled; every change is one
 * transaction, and a metrics row is keyed by (job, kind, step) so a step replayed after a resume overwrites its
 * own row instead of counting twice.
 */
import type Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import type { ResolvedJobSpec } from '../protocol/job-spec.ts';

export const JOB_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobState = (typeof JOB_STATES)[number];
export const FINAL_STATES: ReadonlySet<JobState> = new Set(['succeeded', 'failed', 'cancelled']);

export interface JobRecord {
  id: string;
  name: string;
  spec: ResolvedJobSpec;
  state: JobState;
  stateReason: string;
  step: number; // last completed optimizer step
  createdMs: number;
  updatedMs: number;
}

export type MetricKind = 'train' | 'eval';

export interface MetricRow {
  step: number;
  kind: MetricKind;
  atMs: number;
  values: Record<string, number>; // e.g. loss, tokensPerS, stepMs, computeMs, allreduceMs
}

interface JobRow {
  id: string;
  name: string;
  spec: string;
  state: JobState;
  state_reason: string;
  step: number;
  created_ms: number;
  updated_ms: number;
}

export class JobStore {
  readonly #stmts;
  readonly #db: Database.Database;

  constructor(db: Database.Database) {
    this.#db = db;
    this.#stmts = {
      insert: db.prepare(
        'INSERT INTO jobs(id, name, spec, state, state_reason, step, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, 0, ?, ?)',
      ),
      get: db.prepare<[string], JobRow>('SELECT * FROM jobs WHERE id = ?'),
      list: db.prepare<[], JobRow>('SELECT * FROM jobs ORDER BY created_ms DESC, id'),
      setState: db.prepare('UPDATE jobs SET state = ?, state_reason = ?, updated_ms = ? WHERE id = ?'),
      setStep: db.prepare('UPDATE jobs SET step = ?, updated_ms = ? WHERE id = ?'),
      putMetric: db.prepare(
        `INSERT INTO job_metrics(job_id, step, kind, at_ms, "values") VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(job_id, kind, step) DO UPDATE SET at_ms = excluded.at_ms, "values" = excluded."values"`,
      ),
      metrics: db.prepare<[string, number], { step: number; kind: MetricKind; at_ms: number; values: string }>(
        'SELECT step, kind, at_ms, "values" FROM job_metrics WHERE job_id = ? AND step > ? ORDER BY step, kind',
      ),
    };
  }

  create(spec: ResolvedJobSpec, nowMs: number): JobRecord {
    const id = `job-${randomBytes(5).toString('hex')}`;
    this.#stmts.insert.run(id, spec.name, JSON.stringify(spec), 'queued', 'submitted', nowMs, nowMs);
    return this.get(id)!;
  }

  get(id: string): JobRecord | undefined {
    const row = this.#stmts.get.get(id);
    return row && fromRow(row);
  }

  list(): JobRecord[] {
    return this.#stmts.list.all().map(fromRow);
  }

  setState(id: string, state: JobState, reason: string, nowMs: number): void {
    this.#stmts.setState.run(state, reason, nowMs, id);
  }

  /** Records a completed step and its metrics together, so the step count and the history never disagree. */
  recordStep(id: string, step: number, metrics: Array<Omit<MetricRow, 'step'>>, nowMs: number): void {
    this.#db.transaction(() => {
      for (const m of metrics) this.#stmts.putMetric.run(id, step, m.kind, m.atMs, JSON.stringify(m.values));
      this.#stmts.setStep.run(step, nowMs, id);
    })();
  }

  metrics(id: string, afterStep = -1): MetricRow[] {
    return this.#stmts.metrics.all(id, afterStep).map((r) => ({ step: r.step, kind: r.kind, atMs: r.at_ms, values: JSON.parse(r.values) }));
  }
}

function fromRow(row: JobRow): JobRecord {
  return {
    id: row.id,
    name: row.name,
    spec: JSON.parse(row.spec) as ResolvedJobSpec,
    state: row.state,
    stateReason: row.state_reason,
    step: row.step,
    createdMs: row.created_ms,
    updatedMs: row.updated_ms,
  };
}
