/**
 * coordinator/jobs/scheduler.ts's pure decisions, as tables: first in, first out on the fastest free agents; how many
 * agents a spec wants; what the planner is asked; how measured slowness and agents taken by an earlier job shape the
 * next start. Run: npx tsx --test test/coordinator/scheduler.test.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { agentsWanted, dataDegrees, decideJobs, planFor, planRequest, type FreeAgent, type QueuedJob } from '../../coordinator/jobs/scheduler.ts';
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
const job = (id: string, createdMs: number, s: ResolvedJobSpec): QueuedJob => ({ id, createdMs, spec: s });
const agent = (id: string, matmulGflops = 10, host = id): FreeAgent => ({ id, matmulGflops, firstSeenMs: 0, host, cores: 1, memoryBytes: 8e9 });
const freeAgent = (id: string, extra: Partial<FreeAgent> = {}): FreeAgent => ({ ...agent(id), ...extra });

test('jobs start first in, first out, each on the fastest free agents in its pinned layout', () => {
  const decisions = decideJobs(
    [job('b', 2, spec({ data: 2 })), job('a', 1, spec({ data: 1 }))],
    [agent('slow', 5), agent('fast', 20), agent('mid', 10)],
  );
  assert.deepEqual(decisions.map((d) => [d.action, d.jobId, d.action === 'start' ? [...d.chosen.placement].sort() : null, d.reason]), [
    ['start', 'a', ['fast'], '1×1×1 (data × pipeline × tensor) on 1 agent'],
    ['start', 'b', ['mid', 'slow'], '2×1×1 (data × pipeline × tensor) on 2 agents'],
  ]);
});

test('a pinned pipeline × tensor layout gets its stage bounds and placement from the planner', () => {
  const [d] = decideJobs([job('pp', 1, spec({ data: 1, pipeline: 2, tensor: 2 }, 4, 2))], ['a', 'b', 'c', 'd'].map((id) => agent(id)));
  assert.equal(d!.action, 'start');
  if (d?.action !== 'start') return;
  assert.deepEqual(d.chosen.layout, { data: 1, pipeline: 2, tensor: 2 });
  assert.deepEqual(d.chosen.stages, [[0, 1], [1, 2]]);
  assert.equal(new Set(d.chosen.placement).size, 4);
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

test('a job too big for the agents waits with the planner saying why, and keeps its plan', () => {
  const big = spec('auto');
  big.model = { vocabSize: 50_000, nCtx: 1024, nLayer: 24, nHead: 16, nEmbd: 2048 };
  const [d] = decideJobs([job('big', 1, big)], [{ ...agent('tiny'), memoryBytes: 1e8 }]);
  assert.equal(d!.action, 'wait');
  assert.match(d!.reason, /GB/);
  assert.ok(d!.action === 'wait' && d!.plan && d!.plan.chosen === null);
});

test('an elastic job starts short-handed on the agents there are, down to minData replicas', () => {
  const elastic = spec({ data: 3, minData: 1 }, 12);
  assert.deepEqual(dataDegrees(elastic), [3, 2, 1]);
  const cases: Array<[number, string, number | null]> = [
    [4, 'all three replicas when four agents are free', 3],
    [2, 'two replicas on two agents', 2],
    [1, 'one replica on one agent', 1],
    [0, 'nothing without agents', null],
  ];
  for (const [n, what, want] of cases) {
    const d = decideJobs([job('e', 1, elastic)], ['a', 'b', 'c', 'd'].slice(0, n).map((id) => agent(id)))[0]!;
    assert.equal(d.action === 'start' ? d.chosen.layout.data : null, want, what);
  }
});

test('an elastic job only takes degrees its global batch divides over, and a pinned one waits for all its agents', () => {
  const elastic = spec({ data: 4, minData: 2 }, 8, 2); // 8 rows: d·m must divide 8
  assert.deepEqual(dataDegrees(elastic), [4, 2], '3 replicas × 2 micro-batches do not divide 8 rows');
  const three = decideJobs([job('e', 1, elastic)], ['a', 'b', 'c'].map((id) => agent(id)))[0]!;
  assert.equal(three.action === 'start' && three.chosen.layout.data, 2);
  const [pinned] = decideJobs([job('p', 1, spec({ data: 3 }))], ['a', 'b'].map((id) => agent(id)));
  assert.equal(pinned!.action, 'wait');
  assert.match(pinned!.reason, /waiting for 3 free agents \(2 free\)/);
});

test('a straggler measured slow is the agent a pinned layout leaves out when a spare is free', () => {
  const d = decideJobs([job('p', 1, spec({ data: 2 }))], [{ ...agent('a'), slowdown: 4 }, agent('b'), agent('c')])[0]!;
  assert.ok(d.action === 'start');
  assert.deepEqual([...d.chosen.placement].sort(), ['b', 'c']);
  const control = decideJobs([job('p', 1, spec({ data: 2 }))], [agent('a'), agent('b'), agent('c')])[0]!;
  assert.ok(control.action === 'start');
  assert.ok(control.chosen.placement.includes('a'), 'without the slowdown, a (first by id) is taken');
});

test('a spec wants one agent for auto, else its fewest replicas times pipeline times tensor', () => {
  const cases: Array<[string, ResolvedJobSpec, number]> = [
    ['auto fits itself to what there is', spec('auto'), 1],
    ['an elastic job starts on its fewest replicas', spec({ data: 3, minData: 2 }), 2],
    ['a pipeline of two stages needs both', spec({ data: 2, pipeline: 2 }, 4, 2), 4],
  ];
  for (const [what, s, want] of cases) assert.equal(agentsWanted(s), want, what);
});

test('the planner request pins the layout it is given and carries the calibration', () => {
  const req = planRequest(spec({ data: 4, minData: 1 }), [freeAgent('a')], { linkBytesPerS: 5e8 }, { data: 1, pipeline: 1, tensor: 1 });
  assert.deepEqual(req.parallel, { data: 1, pipeline: 1, tensor: 1 });
  assert.deepEqual(req.training, { batchSize: 12, microBatches: 1, seqLen: 16, zero: 0, wholeLogits: false });
  assert.deepEqual(req.calibration, { linkBytesPerS: 5e8 });
  assert.equal(planRequest(spec('auto'), []).parallel, 'auto');
});

test('there is no plan when the agents are fewer than the fewest replicas an elastic job runs with', () => {
  assert.equal(planFor(spec({ data: 3, minData: 2 }), [freeAgent('a')]), null);
  assert.equal(planFor(spec({ data: 3, minData: 2 }), [freeAgent('a'), freeAgent('b')])?.chosen?.layout.data, 2);
});

test('an auto job runs on the fast agent alone rather than beside one measured eight times slower', () => {
  const chosen = (slowdown?: number) => {
    const [d] = decideJobs([{ id: 'x', createdMs: 1, spec: spec('auto') }], [freeAgent('a'), freeAgent('b', slowdown ? { slowdown } : {})]);
    return d!.action === 'start' ? [d!.chosen.placement, d!.chosen.layout.data] : d!.reason;
  };
  assert.deepEqual(chosen(), [['a', 'b'], 2], 'alike agents: both, data-parallel');
  assert.deepEqual(chosen(8), [['a'], 1]);
});

test('a job that starts takes its agents, and the job after it waits for free ones', () => {
  const decisions = decideJobs(
    [{ id: 'first', createdMs: 1, spec: spec({ data: 2 }) }, { id: 'second', createdMs: 2, spec: spec({ data: 1 }) }],
    [freeAgent('a'), freeAgent('b')],
  );
  assert.deepEqual(decisions.map((d) => [d.action, d.jobId, d.reason]), [
    ['start', 'first', '2×1×1 (data × pipeline × tensor) on 2 agents'],
    ['wait', 'second', 'waiting for 1 free agent (0 free)'],
  ]);
});
