/**
 * Durable sweeps and their trials, in the coordinator's SQLite database (tables from state-store.ts's migration 6).
 * A sweep moves running → succeeded | failed | cancelled. A trial row is written in the same transaction as the job
 * it submits (coordinator/tracking/sweeps.ts), so a coordinator that stops mid-sweep finds every trial it started and starts none twice.
 */
import type Database from 'better-sqlite3';
import type { ResolvedSweepSpec } from '../../protocol/sweep-spec.ts';
import type { TrialParams } from '../tracking/sweep-plan.ts';

export const SWEEP_STATES = ['running', 'succeeded', 'failed', 'cancelled'] as const;
export type SweepState = (typeof SWEEP_STATES)[number];

export interface SweepRecord {
  id: string;
  name: string;
  spec: ResolvedSweepSpec;
  state: SweepState;
  stateReason: string;
  createdMs: number;
  updatedMs: number;
}

export interface TrialRecord {
  idx: number; // 1-based; the trial job is named <sweep name>-t<idx>
  params: TrialParams;
  jobId: string;
}

interface SweepRow {
  id: string;
  name: string;
  spec: string;
  state: SweepState;
  state_reason: string;
  created_ms: number;
  updated_ms: number;
}

export class SweepStore {
  readonly #db: Database.Database;
  readonly #stmts;

  constructor(db: Database.Database) {
    this.#db = db;
    this.#stmts = {
      insert: db.prepare('INSERT INTO sweeps(id, name, spec, state, state_reason, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      get: db.prepare<[string], SweepRow>('SELECT * FROM sweeps WHERE id = ?'),
      list: db.prepare<[], SweepRow>('SELECT * FROM sweeps ORDER BY created_ms DESC, id'),
      setState: db.prepare('UPDATE sweeps SET state = ?, state_reason = ?, updated_ms = ? WHERE id = ?'),
      addTrial: db.prepare('INSERT INTO sweep_trials(sweep_id, idx, params, job_id) VALUES (?, ?, ?, ?)'),
      trials: db.prepare<[string], { idx: number; params: string; job_id: string }>('SELECT idx, params, job_id FROM sweep_trials WHERE sweep_id = ? ORDER BY idx'),
      sweepOfJob: db.prepare<[string], { sweep_id: string }>('SELECT sweep_id FROM sweep_trials WHERE job_id = ?'),
    };
  }

  create(id: string, spec: ResolvedSweepSpec, nowMs: number): SweepRecord {
    this.#stmts.insert.run(id, spec.name, JSON.stringify(spec), 'running', 'submitted', nowMs, nowMs);
    return this.get(id)!;
  }

  get(id: string): SweepRecord | undefined {
    const row = this.#stmts.get.get(id);
    return row && fromRow(row);
  }

  list(): SweepRecord[] {
    return this.#stmts.list.all().map(fromRow);
  }

  setState(id: string, state: SweepState, reason: string, nowMs: number): void {
    this.#stmts.setState.run(state, reason, nowMs, id);
  }

  /** Submits a trial's job (`submit` returns its id) and records the trial in one transaction. */
  addTrial(sweepId: string, idx: number, params: TrialParams, submit: () => string): string {
    return this.#db.transaction(() => {
      const jobId = submit();
      this.#stmts.addTrial.run(sweepId, idx, JSON.stringify(params), jobId);
      return jobId;
    })();
  }

  trials(sweepId: string): TrialRecord[] {
    return this.#stmts.trials.all(sweepId).map((r) => ({ idx: r.idx, params: JSON.parse(r.params) as TrialParams, jobId: r.job_id }));
  }

  sweepOfJob(jobId: string): string | undefined {
    return this.#stmts.sweepOfJob.get(jobId)?.sweep_id;
  }
}

function fromRow(row: SweepRow): SweepRecord {
  return {
    id: row.id,
    name: row.name,
    spec: JSON.parse(row.spec) as ResolvedSweepSpec,
    state: row.state,
    stateReason: row.state_reason,
    createdMs: row.created_ms,
    updatedMs: row.updated_ms,
  };
}
