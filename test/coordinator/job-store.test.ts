import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStateStore } from '../../coordinator/store/state-store.ts';
import { SqliteJobStore as JobStore } from '../../coordinator/store/job-store.ts';
import { validateJobSpec, type ResolvedJobSpec } from '../../protocol/job-spec.ts';

function spec(): ResolvedJobSpec {
  const res = validateJobSpec({
    name: 'tiny',
    model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
    data: { corpus: 'demo' },
    training: { steps: 10, batchSize: 4, seqLen: 16 },
  });
  assert.ok(res.ok);
  return res.spec;
}

test('a job and its metrics survive closing and reopening the database', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jobs-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'state.db');
  let state = new SqliteStateStore(file);
  let jobs = new JobStore(state.database);
  const job = jobs.create(spec(), 1000);
  assert.equal(job.state, 'queued');
  jobs.setState(job.id, 'running', 'on 2 agents', 1100);
  jobs.recordStep(job.id, 1, [{ kind: 'train', atMs: 1200, values: { loss: 5.5 } }], 1200);
  jobs.recordStep(job.id, 2, [{ kind: 'train', atMs: 1300, values: { loss: 5.1 } }, { kind: 'eval', atMs: 1300, values: { loss: 5.3 } }], 1300);
  state.close();

  state = new SqliteStateStore(file);
  jobs = new JobStore(state.database);
  const back = jobs.get(job.id)!;
  assert.equal(back.state, 'running');
  assert.equal(back.step, 2);
  assert.deepEqual(back.spec, job.spec);
  assert.deepEqual(
    jobs.metrics(job.id).map((m) => [m.step, m.kind, m.values.loss]),
    [[1, 'train', 5.5], [2, 'eval', 5.3], [2, 'train', 5.1]],
  );
  assert.deepEqual(jobs.metrics(job.id, 1).map((m) => m.step), [2, 2]);
  state.close();
});

test('a step recorded twice (replayed after a resume) keeps one row with the newer values', () => {
  const state = new SqliteStateStore(':memory:');
  const jobs = new JobStore(state.database);
  const job = jobs.create(spec(), 0);
  jobs.recordStep(job.id, 3, [{ kind: 'train', atMs: 1, values: { loss: 4 } }], 1);
  jobs.recordStep(job.id, 3, [{ kind: 'train', atMs: 2, values: { loss: 3.9 } }], 2);
  assert.deepEqual(jobs.metrics(job.id).map((m) => m.values.loss), [3.9]);
  state.close();
});

test('metrics put at an earlier step (a late evaluation) leave the job at its newest step', () => {
  const state = new SqliteStateStore(':memory:');
  const jobs = new JobStore(state.database);
  const job = jobs.create(spec(), 0);
  jobs.recordStep(job.id, 6, [{ kind: 'train', atMs: 1, values: { loss: 4 } }], 1);
  jobs.putMetrics(job.id, 3, [{ kind: 'eval', atMs: 2, values: { exactMatch: 0.5 } }]);
  assert.equal(jobs.get(job.id)!.step, 6);
  assert.deepEqual(jobs.metrics(job.id).map((m) => [m.step, m.kind]), [[3, 'eval'], [6, 'train']]);
  state.close();
});

test('jobs are listed newest first', () => {
  const state = new SqliteStateStore(':memory:');
  const jobs = new JobStore(state.database);
  const a = jobs.create(spec(), 1);
  const b = jobs.create(spec(), 2);
  assert.deepEqual(jobs.list().map((j) => j.id), [b.id, a.id]);
  state.close();
});
