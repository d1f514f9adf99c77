import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decideJobs, dataParallelDegree, type FreeAgent, type QueuedJob } from '../../coordinator/job-scheduler.ts';
import { validateJobSpec, type ResolvedJobSpec } from '../../protocol/job-spec.ts';

function spec(parallel: { data: number } | 'auto', batchSize = 12, microBatches = 1): ResolvedJobSpec {
  const res = validateJobSpec({
    name: 'j',
    model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
    data: { corpus: 'demo' },
    training: { steps: 5, batchSize, microBatches, seqLen: 16 },
    parallel,
  });
  assert.ok(res.ok, JSON.stringify(!res.ok && res.errors));
  return res.spec;
}
const job = (id: string, createdMs: number, s: ResolvedJobSpec): QueuedJob => ({ id, createdMs, spec: s });
const agent = (id: string, matmulGflops = 10, firstSeenMs = 0): FreeAgent => ({ id, matmulGflops, firstSeenMs });

test('auto picks the most ranks that split the batch evenly, micro-batches included', () => {
  const cases: Array<[batch: number, micro: number, free: number, degree: number]> = [
    [12, 1, 5, 4], [12, 1, 12, 12], [12, 2, 5, 3], [12, 4, 5, 3], [7, 1, 4, 1], [16, 1, 0, 0], [16, 8, 3, 2],
  ];
  for (const [batch, micro, free, degree] of cases) {
    assert.equal(dataParallelDegree(spec('auto', batch, micro), free), degree, `batch ${batch}, micro ${micro}, ${free} free`);
  }
});

test('a pinned degree starts only when that many agents are free', () => {
  assert.equal(dataParallelDegree(spec({ data: 3 }), 2), 0);
  assert.equal(dataParallelDegree(spec({ data: 3 }), 3), 3);
});

test('jobs start first in, first out, each on the fastest free agents', () => {
  const decisions = decideJobs(
    [job('b', 2, spec({ data: 2 })), job('a', 1, spec({ data: 1 }))],
    [agent('slow', 5), agent('fast', 20), agent('mid', 10)],
  );
  assert.deepEqual(decisions, [
    { action: 'start', jobId: 'a', nodeIds: ['fast'], reason: 'data-parallel on 1 agent' },
    { action: 'start', jobId: 'b', nodeIds: ['mid', 'slow'], reason: 'data-parallel on 2 agents' },
  ]);
});

test('a job that does not fit holds the jobs behind it and says what it waits for', () => {
  const decisions = decideJobs([job('big', 1, spec({ data: 4 })), job('small', 2, spec({ data: 1 }))], [agent('x'), agent('y')]);
  assert.deepEqual(decisions, [
    { action: 'wait', jobId: 'big', reason: 'waiting for 4 free agents (2 free)' },
    { action: 'wait', jobId: 'small', reason: 'queued behind big' },
  ]);
});

test('with no agents every job waits', () => {
  const decisions = decideJobs([job('a', 1, spec('auto'))], []);
  assert.deepEqual(decisions, [{ action: 'wait', jobId: 'a', reason: 'waiting for 1 free agent (0 free)' }]);
});
