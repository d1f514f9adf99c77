/**
 * The JobStore, RunStore and SweepStore contracts, each a script of operations run against the SQLite store (on a
 * fresh in-memory database) and the in-memory one unit tests use: both must give the same transcript, and the
 * transcript must be the one written here. That is what makes MemoryJobStore & co. faithful stand-ins.
 * Run: npx tsx --test test/coordinator/store-contracts.test.ts
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { SqliteStateStore } from '../../coordinator/store/state-store.ts';
import { MemoryJobStore, SqliteJobStore, type JobStore } from '../../coordinator/store/job-store.ts';
import { MemoryRunStore, SqliteRunStore, type RunStore } from '../../coordinator/store/run-store.ts';
import { MemorySweepStore, SqliteSweepStore, type SweepStore } from '../../coordinator/store/sweep-store.ts';
import { validateJobSpec, type ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { validateSweepSpec, type ResolvedSweepSpec } from '../../protocol/sweep-spec.ts';

function jobSpec(name: string): ResolvedJobSpec {
  const res = validateJobSpec({
    name,
    model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
    data: { corpus: 'demo' },
    training: { steps: 10, batchSize: 4, seqLen: 16 },
  });
  assert.ok(res.ok);
  return res.spec;
}

function sweepSpec(): ResolvedSweepSpec {
  const base = { name: 'ignored', model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 }, data: { corpus: 'demo' }, training: { steps: 4, batchSize: 4, seqLen: 16 } };
  const res = validateSweepSpec({ name: 'sw', base, strategy: 'grid', budget: 2, parameters: { 'training.lr': { values: [0.1, 0.01] } } }, 7);
  if (!res.ok) assert.fail(res.errors.join('; '));
  return res.spec;
}

interface Stores {
  jobs: JobStore;
  runs: RunStore;
  sweeps: SweepStore;
}

const implementations: Array<{ name: string; open(): Stores }> = [
  {
    name: 'SQLite',
    open() {
      const db = new SqliteStateStore(':memory:').database;
      return { jobs: new SqliteJobStore(db), runs: new SqliteRunStore(db), sweeps: new SqliteSweepStore(db) };
    },
  },
  { name: 'memory', open: () => ({ jobs: new MemoryJobStore(), runs: new MemoryRunStore(), sweeps: new MemorySweepStore() }) },
];

/** Runs `script` on each implementation; the transcripts (job ids replaced by their order of creation) must agree. */
function sameOnBoth(script: (s: Stores) => unknown[]): unknown[] {
  const transcripts = implementations.map((impl) => {
    const s = impl.open();
    const ids: string[] = [];
    const create = s.jobs.create.bind(s.jobs);
    s.jobs.create = (spec, nowMs) => {
      const job = create(spec, nowMs);
      ids.push(job.id);
      return job;
    };
    const text = JSON.stringify(script(s), (_k, v: unknown) => (typeof v === 'string' && ids.includes(v) ? `#${ids.indexOf(v)}` : v));
    return { name: impl.name, out: JSON.parse(text) as unknown[] };
  });
  assert.deepEqual(transcripts[1]!.out, transcripts[0]!.out, `${transcripts[1]!.name} differs from ${transcripts[0]!.name}`);
  return transcripts[0]!.out;
}

const throws = (fn: () => unknown): string => {
  try {
    fn();
    return 'no error';
  } catch {
    return 'refused';
  }
};

describe('JobStore contract (SQLite and memory)', () => {
  test('a job moves through its states, counts attempts and keeps its plan, spec and model version', () => {
    const out = sameOnBoth(({ jobs }) => {
      const job = jobs.create(jobSpec('a'), 100);
      const fresh = { state: job.state, reason: job.stateReason, step: job.step, attempt: job.attempt, plan: job.plan, model: job.modelVersion };
      jobs.setState(job.id, 'running', 'on 2 agents', 110);
      const first = jobs.nextAttempt(job.id, 120);
      const second = jobs.nextAttempt(job.id, 130);
      jobs.setPlan(job.id, { chosen: { layout: { data: 2 } }, dropped: undefined }, 140);
      jobs.setSpec(job.id, { ...job.spec, parallel: 'auto' }, 150);
      jobs.setModelVersion(job.id, 3, 160);
      jobs.setState('job-unknown', 'failed', 'nothing happens', 170);
      const back = jobs.get(job.id)!;
      return [fresh, first, second, back.state, back.stateReason, back.plan, back.spec.parallel, back.modelVersion, back.updatedMs, jobs.get('job-unknown') ?? null];
    });
    assert.deepEqual(out, [
      { state: 'queued', reason: 'submitted', step: 0, attempt: 0, plan: null, model: null },
      1, 2, 'running', 'on 2 agents', { chosen: { layout: { data: 2 } } }, 'auto', 3, 160, null,
    ]);
  });

  test('metrics are keyed by job, kind and step: a replayed step overwrites its row, and rewinding drops the later ones', () => {
    const out = sameOnBoth(({ jobs }) => {
      const job = jobs.create(jobSpec('m'), 0);
      jobs.recordStep(job.id, 1, [{ kind: 'train', atMs: 1, values: { loss: 5 } }], 1);
      jobs.recordStep(job.id, 2, [{ kind: 'train', atMs: 2, values: { loss: 4.5 } }, { kind: 'eval', atMs: 2, values: { loss: 4.8 } }], 2);
      jobs.recordStep(job.id, 3, [{ kind: 'train', atMs: 3, values: { loss: 4.2 } }], 3);
      jobs.recordStep(job.id, 2, [{ kind: 'train', atMs: 4, values: { loss: 4.4 } }], 4); // replayed after a resume
      jobs.putMetrics(job.id, 2, [{ kind: 'eval', atMs: 5, values: { loss: 4.8, exactMatch: 0.5 } }]);
      const all = jobs.metrics(job.id).map((m) => [m.step, m.kind, m.atMs, m.values]);
      const after1 = jobs.metrics(job.id, 1).length;
      const stepBefore = jobs.get(job.id)!.step;
      jobs.rewindTo(job.id, 1, 6);
      return [all, after1, stepBefore, jobs.get(job.id)!.step, jobs.metrics(job.id).map((m) => [m.step, m.kind]), throws(() => jobs.recordStep('job-unknown', 1, [{ kind: 'train', atMs: 1, values: {} }], 1))];
    });
    assert.deepEqual(out, [
      [[1, 'train', 1, { loss: 5 }], [2, 'eval', 5, { loss: 4.8, exactMatch: 0.5 }], [2, 'train', 4, { loss: 4.4 }], [3, 'train', 3, { loss: 4.2 }]],
      3, 2, 1, [[1, 'train']], 'refused',
    ]);
  });

  test('checkpoints come newest first, replace one of the same step, and every recorded digest is known', () => {
    const out = sameOnBoth(({ jobs }) => {
      const a = jobs.create(jobSpec('a'), 1);
      const b = jobs.create(jobSpec('b'), 2);
      jobs.putCheckpoint(a.id, { step: 2, attempt: 1, files: { 'model.safetensors': 'd2' }, createdMs: 10 });
      jobs.putCheckpoint(a.id, { step: 4, attempt: 1, files: { 'model.safetensors': 'd4' }, createdMs: 20 });
      jobs.putCheckpoint(a.id, { step: 4, attempt: 2, files: { 'model.safetensors': 'd4b' }, createdMs: 30 });
      jobs.putCheckpoint(b.id, { step: 1, attempt: 1, files: { 'model.safetensors': 'e1', 'optimizer.safetensors': 'e1o' }, createdMs: 40 });
      const listed = jobs.checkpoints(a.id);
      jobs.deleteCheckpoint(a.id, 2);
      return [listed, jobs.checkpoints(a.id).map((c) => c.step), [...jobs.checkpointDigests()].sort(), jobs.list().map((j) => j.id), throws(() => jobs.putCheckpoint('job-unknown', { step: 1, attempt: 1, files: {}, createdMs: 1 }))];
    });
    assert.deepEqual(out, [
      [{ step: 4, attempt: 2, files: { 'model.safetensors': 'd4b' }, createdMs: 30 }, { step: 2, attempt: 1, files: { 'model.safetensors': 'd2' }, createdMs: 10 }],
      [4], ['d4b', 'e1', 'e1o'], ['#1', '#0'], 'refused',
    ]);
  });

  test('a record handed out is a copy: changing it changes nothing stored', () => {
    const out = sameOnBoth(({ jobs }) => {
      const job = jobs.create(jobSpec('c'), 1);
      job.state = 'failed';
      jobs.get(job.id)!.spec.training.steps = 99;
      jobs.recordStep(job.id, 1, [{ kind: 'train', atMs: 1, values: { loss: 1 } }], 1);
      jobs.metrics(job.id)[0]!.values.loss = 7;
      return [jobs.get(job.id)!.state, jobs.get(job.id)!.spec.training.steps, jobs.metrics(job.id)[0]!.values.loss];
    });
    assert.deepEqual(out, ['queued', 10, 1]);
  });
});

describe('RunStore contract (SQLite and memory)', () => {
  test('a run keeps the first code version it was created with and the dataset set later', () => {
    const out = sameOnBoth(({ jobs, runs }) => {
      const job = jobs.create(jobSpec('r'), 1);
      const other = jobs.create(jobSpec('s'), 2);
      runs.create(job.id, 'abc123');
      runs.create(job.id, 'def456');
      const before = runs.get(job.id);
      runs.setData(job.id, { corpus: 'demo', files: { 'index.json': 'd1' } });
      runs.setData(other.id, { corpus: 'demo', files: {} }); // no record: nothing is made
      return [before, runs.get(job.id), runs.get(other.id) ?? null, [...runs.all().keys()]];
    });
    assert.deepEqual(out, [
      { jobId: '#0', codeVersion: 'abc123', data: null },
      { jobId: '#0', codeVersion: 'abc123', data: { corpus: 'demo', files: { 'index.json': 'd1' } } },
      null, ['#0'],
    ]);
  });
});

describe('SweepStore contract (SQLite and memory)', () => {
  test('a sweep records its trials with their jobs, and a trial that cannot be recorded leaves no job', () => {
    const out = sameOnBoth(({ jobs, sweeps }) => {
      const created = sweeps.create('sw-1', sweepSpec(), 5);
      const first = sweeps.addTrial('sw-1', 1, { 'training.lr': 0.1 }, () => jobs.create(jobSpec('sw-t1'), 6).id);
      const again = throws(() => sweeps.addTrial('sw-1', 1, { 'training.lr': 0.01 }, () => jobs.create(jobSpec('sw-t1b'), 7).id));
      const unknown = throws(() => sweeps.addTrial('sw-9', 1, {}, () => jobs.create(jobSpec('orphan'), 8).id));
      sweeps.setState('sw-1', 'succeeded', 'best: trial 1', 9);
      return [
        [created.state, created.stateReason], first, again, unknown, jobs.list().map((j) => j.name),
        sweeps.trials('sw-1'), sweeps.sweepOfJob(first) ?? null, sweeps.sweepOfJob('job-none') ?? null,
        sweeps.list().map((s) => [s.id, s.state, s.stateReason, s.updatedMs]),
      ];
    });
    assert.deepEqual(out, [
      ['running', 'submitted'], '#0', 'refused', 'refused', ['sw-t1'],
      [{ idx: 1, params: { 'training.lr': 0.1 }, jobId: '#0' }], 'sw-1', null,
      [['sw-1', 'succeeded', 'best: trial 1', 9]],
    ]);
  });
});
