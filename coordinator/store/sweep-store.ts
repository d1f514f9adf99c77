/**
 * Durable sweeps and their trials, in the coordinator's SQLite database (tables from state-store.ts's migration 6).
 * A sweep moves running → succeeded | failed | cancelled. A trial row is written in the same transaction as the job
 * it submits (coordinator/tracking/sweeps.ts), so a coordinator that stops mid-sweep finds every trial it started and starts none twice.
 * `SweepStore` is the interface; `SqliteSweepStore` keeps it in SQLite, `MemorySweepStore` in memory for unit tests
 * (test/coordinator/sweep-store.test.ts runs the same operations against both).
 */
import type Database from 'better-sqlite3';
import type { ResolvedSweepSpec } from '../../protocol/sweep-spec.ts';
import type { TrialParams } from '../tracking/sweep-plan.ts';
import { byText, viaJson } from './job-store.ts';

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

export interface SweepStore {
  create(id: string, spec: ResolvedSweepSpec, nowMs: number): SweepRecord;
  get(id: string): SweepRecord | undefined;
  /** Newest first (then by id). */
  list(): SweepRecord[];
  setState(id: string, state: SweepState, reason: string, nowMs: number): void;
  /**
   * Submits a trial's job (`submit` returns its id) and records the trial, all or nothing: a trial that cannot be
   * recorded (an unknown sweep, an index already taken) leaves no job behind.
   */
  addTrial(sweepId: string, idx: number, params: TrialParams, submit: () => string): string;
  /** The sweep's trials by index. */
  trials(sweepId: string): TrialRecord[];
  sweepOfJob(jobId: string): string | undefined;
}

export class SqliteSweepStore implements SweepStore {
  readonly #db: Database.Database;
  readonly #stmts;

  /** `db`: the state database (SqliteStateStore.database), whose migrations created sweeps and sweep_trials. */
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

  /** The job is submitted and the trial recorded in one transaction: a failed insert rolls the job back. */
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

/** The same contract in memory, for unit tests (values go through JSON, as into SQLite). */
export class MemorySweepStore implements SweepStore {
  readonly #sweeps = new Map<string, SweepRecord>();
  readonly #trials = new Map<string, TrialRecord[]>();

  create(id: string, spec: ResolvedSweepSpec, nowMs: number): SweepRecord {
    if (this.#sweeps.has(id)) throw new Error(`sweep ${id} exists (UNIQUE constraint failed)`);
    this.#sweeps.set(id, { id, name: spec.name, spec: viaJson(spec), state: 'running', stateReason: 'submitted', createdMs: nowMs, updatedMs: nowMs });
    this.#trials.set(id, []);
    return this.get(id)!;
  }

  get(id: string): SweepRecord | undefined {
    const s = this.#sweeps.get(id);
    return s && viaJson(s);
  }

  list(): SweepRecord[] {
    return [...this.#sweeps.values()].sort((a, b) => b.createdMs - a.createdMs || byText(a.id, b.id)).map(viaJson);
  }

  setState(id: string, state: SweepState, reason: string, nowMs: number): void {
    const s = this.#sweeps.get(id);
    if (s) Object.assign(s, { state, stateReason: reason, updatedMs: nowMs });
  }

  /** Checks the trial can be recorded before submitting its job, which is all or nothing without a transaction. */
  addTrial(sweepId: string, idx: number, params: TrialParams, submit: () => string): string {
    const trials = this.#trials.get(sweepId);
    if (!trials) throw new Error(`no sweep ${sweepId} (FOREIGN KEY constraint failed)`);
    if (trials.some((t) => t.idx === idx)) throw new Error(`sweep ${sweepId} has a trial ${idx} (UNIQUE constraint failed)`);
    const jobId = submit();
    trials.push({ idx, params: viaJson(params), jobId });
    return jobId;
  }

  trials(sweepId: string): TrialRecord[] {
    return [...(this.#trials.get(sweepId) ?? [])].sort((a, b) => a.idx - b.idx).map(viaJson);
  }

  sweepOfJob(jobId: string): string | undefined {
    for (const [sweepId, trials] of this.#trials) if (trials.some((t) => t.jobId === jobId)) return sweepId;
    return undefined;
  }
}
