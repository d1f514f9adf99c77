/**
 * What experiment tracking keeps about each job beyond the job record itself (job_runs, schema v6 in
 * state-store.ts): the coordinator's code version when the job was submitted, and the dataset its attempts
 * trained on (every prepared file's sha256 in the artifact store, tokenizer.json and index.json among them). The
 * spec, metrics history, checkpoints and model version stay where job-store.ts keeps them; coordinator/tracking/runs.ts joins them.
 */
import type Database from 'better-sqlite3';

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

export class RunStore {
  readonly #stmts;

  constructor(db: Database.Database) {
    this.#stmts = {
      insert: db.prepare('INSERT INTO job_runs(job_id, code_version) VALUES (?, ?) ON CONFLICT(job_id) DO NOTHING'),
      setData: db.prepare('UPDATE job_runs SET data = ? WHERE job_id = ?'),
      get: db.prepare<[string], { job_id: string; code_version: string; data: string | null }>('SELECT * FROM job_runs WHERE job_id = ?'),
      all: db.prepare<[], { job_id: string; code_version: string; data: string | null }>('SELECT * FROM job_runs'),
    };
  }

  /** Records the code version a job was submitted under (once; a later call for the same job changes nothing). */
  create(jobId: string, codeVersion: string): void {
    this.#stmts.insert.run(jobId, codeVersion);
  }

  setData(jobId: string, data: RunData): void {
    this.#stmts.setData.run(JSON.stringify(data), jobId);
  }

  /** Jobs from before tracking existed have no record: undefined. */
  get(jobId: string): RunRecord | undefined {
    const row = this.#stmts.get.get(jobId);
    return row && { jobId: row.job_id, codeVersion: row.code_version, data: row.data === null ? null : (JSON.parse(row.data) as RunData) };
  }

  all(): Map<string, RunRecord> {
    return new Map(this.#stmts.all.all().map((r) => [r.job_id, { jobId: r.job_id, codeVersion: r.code_version, data: r.data === null ? null : (JSON.parse(r.data) as RunData) }]));
  }
}
