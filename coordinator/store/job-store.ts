/**
 * Durable training jobs and their metrics history: the `JobStore` interface the runner, scheduler and API use,
 * `SqliteJobStore` keeping it in the coordinator's SQLite database (tables created by state-store.ts's
 * migrations), and `MemoryJobStore`, the same contract in memory for unit tests (test/coordinator/store-contracts.test.ts
 * runs one table of operations against both). A job moves queued → running → succeeded | failed | cancelled; every
 * change is one transaction, and a metrics row is keyed by (job, kind, step) so a step replayed after a resume
 * overwrites its own row instead of counting twice.
 */
import type Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';

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
  attempt: number; // how many times the job has been started on agents (resumes included)
  modelVersion: number | null; // the registry version a finished job produced
  plan: unknown | null; // the planner's last choice for this job (coordinator/jobs/planner.ts Plan), JSON
  createdMs: number;
  updatedMs: number;
}

export interface CheckpointRecord {
  step: number;
  attempt: number;
  files: Record<string, string>; // file name → sha256 in the artifact store
  createdMs: number;
}

export type MetricKind = 'train' | 'eval';

export interface MetricRow {
  step: number;
  kind: MetricKind;
  atMs: number;
  values: Record<string, number>; // e.g. loss, tokensPerS, stepMs, computeMs, allreduceMs
}

/** A metric row as recorded for a step (the step is the call's). */
export type StepMetric = Omit<MetricRow, 'step'>;

/**
 * What the coordinator keeps about jobs. Updates of an unknown job change nothing, except that metrics or a
 * checkpoint for one are refused (they reference the job); records come back as copies, JSON values as stored.
 */
export interface JobStore {
  create(spec: ResolvedJobSpec, nowMs: number): JobRecord;
  get(id: string): JobRecord | undefined;
  /** Newest first (then by id). */
  list(): JobRecord[];
  setState(id: string, state: JobState, reason: string, nowMs: number): void;
  /** Records a completed step and its metrics together, so the step count and the history never disagree. */
  recordStep(id: string, step: number, metrics: StepMetric[], nowMs: number): void;
  /** Adds metric rows to a step already recorded (an evaluation that finished later), leaving the job's step as it is. */
  putMetrics(id: string, step: number, metrics: StepMetric[]): void;
  /** Starts a new attempt and returns its number (1 for the first start). */
  nextAttempt(id: string, nowMs: number): number;
  setModelVersion(id: string, version: number, nowMs: number): void;
  /** Replaces the spec (a re-plan changes its `parallel`); the caller validated it. */
  setSpec(id: string, spec: ResolvedJobSpec, nowMs: number): void;
  setPlan(id: string, plan: unknown, nowMs: number): void;
  /** Records the checkpoint of a step (replacing one of the same step). */
  putCheckpoint(id: string, cp: CheckpointRecord): void;
  deleteCheckpoint(id: string, step: number): void;
  /** Every artifact digest any job's recorded checkpoint uses. */
  checkpointDigests(): Set<string>;
  /**
   * An attempt resumes from the checkpoint of `step`: what earlier attempts recorded after it is about to be
   * recomputed, so it goes (together with setting the job's step), and each step stays counted once.
   */
  rewindTo(id: string, step: number, nowMs: number): void;
  /** Newest first. */
  checkpoints(id: string): CheckpointRecord[];
  /** The rows after `afterStep`, by step then kind. */
  metrics(id: string, afterStep?: number): MetricRow[];
}

/** A new job's id. */
const newJobId = (): string => `job-${randomBytes(5).toString('hex')}`;

/**
 * For the in-memory stores: values go through JSON on the way in and out, as SQLite's JSON columns do, so what a
 * caller gets back is its own copy in the shape SQLite would give it.
 */
export const viaJson = <T>(value: T): T => JSON.parse(JSON.stringify(value)) as T;

interface JobRow {
  id: string;
  name: string;
  spec: string;
  state: JobState;
  state_reason: string;
  step: number;
  attempt: number;
  model_version: number | null;
  plan: string | null;
  created_ms: number;
  updated_ms: number;
}

export class SqliteJobStore implements JobStore {
  readonly #stmts;
  readonly #db: Database.Database;

  /** `db`: the state database (SqliteStateStore.database), whose migrations created the tables. */
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
      nextAttempt: db.prepare('UPDATE jobs SET attempt = attempt + 1, updated_ms = ? WHERE id = ?'),
      setModel: db.prepare('UPDATE jobs SET model_version = ?, updated_ms = ? WHERE id = ?'),
      setPlan: db.prepare('UPDATE jobs SET plan = ?, updated_ms = ? WHERE id = ?'),
      setSpec: db.prepare('UPDATE jobs SET spec = ?, updated_ms = ? WHERE id = ?'),
      putCheckpoint: db.prepare(
        `INSERT INTO job_checkpoints(job_id, step, attempt, files, created_ms) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(job_id, step) DO UPDATE SET attempt = excluded.attempt, files = excluded.files, created_ms = excluded.created_ms`,
      ),
      deleteCheckpoint: db.prepare('DELETE FROM job_checkpoints WHERE job_id = ? AND step = ?'),
      allCheckpointFiles: db.prepare<[], { files: string }>('SELECT files FROM job_checkpoints'),
      truncateMetrics: db.prepare('DELETE FROM job_metrics WHERE job_id = ? AND step > ?'),
      checkpoints: db.prepare<[string], { step: number; attempt: number; files: string; created_ms: number }>(
        'SELECT step, attempt, files, created_ms FROM job_checkpoints WHERE job_id = ? ORDER BY step DESC',
      ),
    };
  }

  create(spec: ResolvedJobSpec, nowMs: number): JobRecord {
    const id = newJobId();
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

  recordStep(id: string, step: number, metrics: StepMetric[], nowMs: number): void {
    this.#db.transaction(() => {
      for (const m of metrics) this.#stmts.putMetric.run(id, step, m.kind, m.atMs, JSON.stringify(m.values));
      this.#stmts.setStep.run(step, nowMs, id);
    })();
  }

  putMetrics(id: string, step: number, metrics: StepMetric[]): void {
    this.#db.transaction(() => {
      for (const m of metrics) this.#stmts.putMetric.run(id, step, m.kind, m.atMs, JSON.stringify(m.values));
    })();
  }

  nextAttempt(id: string, nowMs: number): number {
    this.#stmts.nextAttempt.run(nowMs, id);
    return this.get(id)!.attempt;
  }

  setModelVersion(id: string, version: number, nowMs: number): void {
    this.#stmts.setModel.run(version, nowMs, id);
  }

  setSpec(id: string, spec: ResolvedJobSpec, nowMs: number): void {
    this.#stmts.setSpec.run(JSON.stringify(spec), nowMs, id);
  }

  setPlan(id: string, plan: unknown, nowMs: number): void {
    this.#stmts.setPlan.run(JSON.stringify(plan), nowMs, id);
  }

  putCheckpoint(id: string, cp: CheckpointRecord): void {
    this.#stmts.putCheckpoint.run(id, cp.step, cp.attempt, JSON.stringify(cp.files), cp.createdMs);
  }

  deleteCheckpoint(id: string, step: number): void {
    this.#stmts.deleteCheckpoint.run(id, step);
  }

  checkpointDigests(): Set<string> {
    return new Set(this.#stmts.allCheckpointFiles.all().flatMap((r) => Object.values(JSON.parse(r.files) as Record<string, string>)));
  }

  rewindTo(id: string, step: number, nowMs: number): void {
    this.#db.transaction(() => {
      this.#stmts.truncateMetrics.run(id, step);
      this.#stmts.setStep.run(step, nowMs, id);
    })();
  }

  checkpoints(id: string): CheckpointRecord[] {
    return this.#stmts.checkpoints.all(id).map((r) => ({ step: r.step, attempt: r.attempt, files: JSON.parse(r.files), createdMs: r.created_ms }));
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
    attempt: row.attempt,
    modelVersion: row.model_version,
    plan: row.plan === null ? null : (JSON.parse(row.plan) as unknown),
    createdMs: row.created_ms,
    updatedMs: row.updated_ms,
  };
}

/** The same contract in memory, for unit tests (no database: nothing to open or close). */
export class MemoryJobStore implements JobStore {
  readonly #jobs = new Map<string, JobRecord>();
  /** By job, then `${kind} ${step}`: the (job, kind, step) key of SQLite's job_metrics. */
  readonly #metrics = new Map<string, Map<string, MetricRow>>();
  /** By job, then step. */
  readonly #checkpoints = new Map<string, Map<number, CheckpointRecord>>();

  create(spec: ResolvedJobSpec, nowMs: number): JobRecord {
    const id = newJobId();
    const job: JobRecord = {
      id, name: spec.name, spec: viaJson(spec), state: 'queued', stateReason: 'submitted', step: 0, attempt: 0,
      modelVersion: null, plan: null, createdMs: nowMs, updatedMs: nowMs,
    };
    this.#jobs.set(id, job);
    this.#metrics.set(id, new Map());
    this.#checkpoints.set(id, new Map());
    return viaJson(job);
  }

  get(id: string): JobRecord | undefined {
    const job = this.#jobs.get(id);
    return job && viaJson(job);
  }

  list(): JobRecord[] {
    return [...this.#jobs.values()].sort((a, b) => b.createdMs - a.createdMs || byText(a.id, b.id)).map(viaJson);
  }

  setState(id: string, state: JobState, reason: string, nowMs: number): void {
    this.#update(id, nowMs, { state, stateReason: reason });
  }

  recordStep(id: string, step: number, metrics: StepMetric[], nowMs: number): void {
    this.#putRows(id, step, metrics);
    this.#update(id, nowMs, { step });
  }

  putMetrics(id: string, step: number, metrics: StepMetric[]): void {
    this.#putRows(id, step, metrics);
  }

  nextAttempt(id: string, nowMs: number): number {
    const job = this.#known(id);
    this.#update(id, nowMs, { attempt: job.attempt + 1 });
    return job.attempt;
  }

  setModelVersion(id: string, version: number, nowMs: number): void {
    this.#update(id, nowMs, { modelVersion: version });
  }

  setSpec(id: string, spec: ResolvedJobSpec, nowMs: number): void {
    this.#update(id, nowMs, { spec: viaJson(spec) });
  }

  setPlan(id: string, plan: unknown, nowMs: number): void {
    this.#update(id, nowMs, { plan: viaJson(plan) });
  }

  putCheckpoint(id: string, cp: CheckpointRecord): void {
    this.#known(id);
    this.#checkpoints.get(id)!.set(cp.step, viaJson(cp));
  }

  deleteCheckpoint(id: string, step: number): void {
    this.#checkpoints.get(id)?.delete(step);
  }

  checkpointDigests(): Set<string> {
    return new Set([...this.#checkpoints.values()].flatMap((byStep) => [...byStep.values()].flatMap((cp) => Object.values(cp.files))));
  }

  rewindTo(id: string, step: number, nowMs: number): void {
    const rows = this.#metrics.get(id);
    for (const [key, row] of rows ?? []) if (row.step > step) rows!.delete(key);
    this.#update(id, nowMs, { step });
  }

  checkpoints(id: string): CheckpointRecord[] {
    return [...(this.#checkpoints.get(id)?.values() ?? [])].sort((a, b) => b.step - a.step).map(viaJson);
  }

  metrics(id: string, afterStep = -1): MetricRow[] {
    return [...(this.#metrics.get(id)?.values() ?? [])]
      .filter((r) => r.step > afterStep)
      .sort((a, b) => a.step - b.step || byText(a.kind, b.kind))
      .map(viaJson);
  }

  /** The job, or the error SQLite's foreign key would raise for rows that reference a job that is not there. */
  #known(id: string): JobRecord {
    const job = this.#jobs.get(id);
    if (!job) throw new Error(`no job ${id} (FOREIGN KEY constraint failed)`);
    return job;
  }

  #putRows(id: string, step: number, metrics: StepMetric[]): void {
    if (metrics.length === 0) return;
    this.#known(id);
    const rows = this.#metrics.get(id)!;
    for (const m of metrics) rows.set(`${m.kind} ${step}`, viaJson({ step, kind: m.kind, atMs: m.atMs, values: m.values }));
  }

  #update(id: string, nowMs: number, change: Partial<JobRecord>): void {
    const job = this.#jobs.get(id);
    if (job) Object.assign(job, change, { updatedMs: nowMs });
  }
}

/** SQLite's default (BINARY) order of text, for the in-memory stores' ORDER BY. */
export const byText = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
