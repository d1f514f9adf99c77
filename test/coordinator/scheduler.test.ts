/**
 * scheduler.ts's pure decisions beyond first-in-first-out (test/coordinator/job-scheduler.test.ts): how many agents
 * a spec wants, what the planner is asked, and how measured slowness and agents taken by an earlier job shape the
 * next start. Run: npx tsx --test test/coordinator/scheduler.test.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { agentsWanted, decideJobs, planFor, planRequest, type FreeAgent } from '../../coordinator/jobs/scheduler.ts';
import { validateJobSpec, type ResolvedJobSpec } from '../../protocol/job-spec.ts';

function spec(parallel: unknown, batchSize = 12, microBatches = 1): ResolvedJobSpec {
  const res = validateJobSpec({
    name: 'j',
    model: { vocabSize: 300, nCtx: 16, nLayer: 2, nHead: 2, nEmbd: 16 },
    data: { corpus: 'demo' },
    training: { steps: 5, batchSize, microBatches, seqLen: 16 },
    parallel,
  });
  assert.ok(res.ok, JSON.stringify(!res.ok && res.errors));
  return res.spec;
}
const agent = (id: string, extra: Partial<FreeAgent> = {}): FreeAgent => ({ id, matmulGflops: 10, firstSeenMs: 0, host: id, cores: 1, memoryBytes: 8e9, ...extra });

test('a spec wants one agent for auto, else its fewest replicas times pipeline times tensor', () => {
  const cases: Array<[string, ResolvedJobSpec, number]> = [
    ['auto fits itself to what there is', spec('auto'), 1],
    ['an elastic job starts on its fewest replicas', spec({ data: 3, minData: 2 }), 2],
    ['a pipeline of two stages needs both', spec({ data: 2, pipeline: 2 }, 4, 2), 4],
  ];
  for (const [what, s, want] of cases) assert.equal(agentsWanted(s), want, what);
});

test('the planner request pins the layout it is given and carries the calibration', () => {
  const req = planRequest(spec({ data: 4, minData: 1 }), [agent('a')], { linkBytesPerS: 5e8 }, { data: 1, pipeline: 1, tensor: 1 });
  assert.deepEqual(req.parallel, { data: 1, pipeline: 1, tensor: 1 });
  assert.deepEqual(req.training, { batchSize: 12, microBatches: 1, seqLen: 16, zero: 0, wholeLogits: false });
  assert.deepEqual(req.calibration, { linkBytesPerS: 5e8 });
  assert.equal(planRequest(spec('auto'), []).parallel, 'auto');
});

test('there is no plan when the agents are fewer than the fewest replicas an elastic job runs with', () => {
  assert.equal(planFor(spec({ data: 3, minData: 2 }), [agent('a')]), null);
  assert.equal(planFor(spec({ data: 3, minData: 2 }), [agent('a'), agent('b')])?.chosen?.layout.data, 2);
});

test('an agent measured four times slower than its peers is left out when a faster one is free', () => {
  const placed = (slowdown?: number) => {
    const [d] = decideJobs([{ id: 'x', createdMs: 1, spec: spec({ data: 2 }) }], [agent('a'), agent('b', slowdown ? { slowdown } : {}), agent('c')]);
    return d!.action === 'start' ? [...d!.chosen.placement].sort() : d!.reason;
  };
  assert.deepEqual(placed(), ['a', 'b'], 'alike agents: the first two');
  assert.deepEqual(placed(4), ['a', 'c']);
});

test('an auto job runs on the fast agent alone rather than beside one measured eight times slower', () => {
  const chosen = (slowdown?: number) => {
    const [d] = decideJobs([{ id: 'x', createdMs: 1, spec: spec('auto') }], [agent('a'), agent('b', slowdown ? { slowdown } : {})]);
    return d!.action === 'start' ? [d!.chosen.placement, d!.chosen.layout.data] : d!.reason;
  };
  assert.deepEqual(chosen(), [['a', 'b'], 2], 'alike agents: both, data-parallel');
  assert.deepEqual(chosen(8), [['a'], 1]);
});

test('a job that starts takes its agents, and the job after it waits for free ones', () => {
  const decisions = decideJobs(
    [{ id: 'first', createdMs: 1, spec: spec({ data: 2 }) }, { id: 'second', createdMs: 2, spec: spec({ data: 1 }) }],
    [agent('a'), agent('b')],
  );
  assert.deepEqual(decisions.map((d) => [d.action, d.jobId, d.reason]), [
    ['start', 'first', '2×1×1 (data × pipeline × tensor) on 2 agents'],
    ['wait', 'second', 'waiting for 1 free agent (0 free)'],
  ]);
});
