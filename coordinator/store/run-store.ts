/**
 * What experiment tracking keeps about each job beyond the job record itself (job_runs, schema v6 in
 * state-store.ts): the coordinator's code version when the job was submitted, and the dataset its attempts
 * trained on (every prepared file's sha256 in the artifact store, tokenizer.json and index.json among them). The
 * spec, metrics history, checkpoints and model version stay where job-store.ts keeps them; coordinator/tracking/runs.ts joins them.
 * `RunStore` is the interface; `SqliteRunStore` keeps it in SQLite, `MemoryRunStore` in memory for unit tests
 * (test/coordinator/run-store.test.ts runs the same operations against both).
 */
import type Database from 'better-sqlite3';
import { viaJson } from './job-store.ts';

/** The dataset a run trained on: the corpus it was prepared from and each prepared file's sha256. */
export interface RunData {
  corpus: string;
  files: Record<string, string>;
}

export interface RunRecord {
  jobId: string;
  codeVersion: string;
  data: RunData | null; // null until an attempt has prepared the dataset
}

export interface RunStore {
  /** Records the code version a job was submitted under (once; a later call for the same job changes nothing). */
  create(jobId: string, codeVersion: string): void;
  /** Records the dataset a job's attempts train on; a job with no record is left without one. */
  setData(jobId: string, data: RunData): void;
  /** Jobs from before tracking existed have no record: undefined. */
  get(jobId: string): RunRecord | undefined;
  /** Every record, by job id. */
  all(): Map<string, RunRecord>;
}

export class SqliteRunStore implements RunStore {
  readonly #stmts;

  /** `db`: the state database (SqliteStateStore.database), whose migrations created job_runs. */
  constructor(db: Database.Database) {
    this.#stmts = {
      insert: db.prepare('INSERT INTO job_runs(job_id, code_version) VALUES (?, ?) ON CONFLICT(job_id) DO NOTHING'),
      setData: db.prepare('UPDATE job_runs SET data = ? WHERE job_id = ?'),
      get: db.prepare<[string], { job_id: string; code_version: string; data: string | null }>('SELECT * FROM job_runs WHERE job_id = ?'),
      all: db.prepare<[], { job_id: string; code_version: string; data: string | null }>('SELECT * FROM job_runs'),
    };
  }

  create(jobId: string, codeVersion: string): void {
    this.#stmts.insert.run(jobId, codeVersion);
  }

  setData(jobId: string, data: RunData): void {
    this.#stmts.setData.run(JSON.stringify(data), jobId);
  }

  get(jobId: string): RunRecord | undefined {
    const row = this.#stmts.get.get(jobId);
    return row && { jobId: row.job_id, codeVersion: row.code_version, data: row.data === null ? null : (JSON.parse(row.data) as RunData) };
  }

  all(): Map<string, RunRecord> {
    return new Map(this.#stmts.all.all().map((r) => [r.job_id, { jobId: r.job_id, codeVersion: r.code_version, data: r.data === null ? null : (JSON.parse(r.data) as RunData) }]));
  }
}

/** The same contract in memory, for unit tests (values go through JSON, as into SQLite). */
export class MemoryRunStore implements RunStore {
  readonly #runs = new Map<string, RunRecord>();

  create(jobId: string, codeVersion: string): void {
    if (!this.#runs.has(jobId)) this.#runs.set(jobId, { jobId, codeVersion, data: null });
  }

  setData(jobId: string, data: RunData): void {
    const run = this.#runs.get(jobId);
    if (run) run.data = viaJson(data);
  }

  get(jobId: string): RunRecord | undefined {
    const run = this.#runs.get(jobId);
    return run && viaJson(run);
  }

  all(): Map<string, RunRecord> {
    return new Map([...this.#runs].map(([id, run]) => [id, viaJson(run)]));
  }
}
