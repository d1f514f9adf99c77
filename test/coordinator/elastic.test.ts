import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decideReshape, decideRestart, RESHAPE_MARGIN, type ReshapeInput } from '../../coordinator/jobs/elastic.ts';
import { planFor } from '../../coordinator/jobs/scheduler.ts';
import type { PlannerAgent } from '../../coordinator/jobs/planner.ts';
import { validateJobSpec, type ResolvedJobSpec } from '../../protocol/job-spec.ts';

function spec(parallel: object | 'auto', nLayer = 4): ResolvedJobSpec {
  const res = validateJobSpec({
    name: 'j',
    model: { vocabSize: 300, nCtx: 64, nLayer, nHead: 4, nEmbd: 128 },
    data: { corpus: 'demo' },
    training: { steps: 100, batchSize: 24, seqLen: 64 },
    parallel,
  });
  assert.ok(res.ok, JSON.stringify(!res.ok && res.errors));
  return res.spec;
}
const agent = (id: string, slowdown?: number): PlannerAgent => ({ id, host: id, cores: 1, memoryBytes: 8e9, matmulGflops: 20, ...(slowdown ? { slowdown } : {}) });

/** The input for a job running as the planner would place it on `members`. */
function running(s: ResolvedJobSpec, members: PlannerAgent[], more: Partial<ReshapeInput> = {}): ReshapeInput {
  const chosen = planFor(s, members)!.chosen!;
  const byId = new Map(members.map((m) => [m.id, m]));
  return {
    spec: s, layout: chosen.layout, stages: chosen.stages, members: chosen.placement.map((id) => byId.get(id)!), free: [],
    straggler: null, step: 10, steps: 100, ...more,
  };
}

describe('decideReshape', () => {
  test('keeps a job with no free agent and no straggler', () => {
    const d = decideReshape(running(spec({ data: 2 }), [agent('a'), agent('b')]));
    assert.deepEqual(d, { action: 'keep', reason: 'no free agent and no straggler' });
  });

  test('keeps a job at its last step, whatever is free', () => {
    const d = decideReshape(running(spec({ data: 3, minData: 1 }), [agent('a')], { free: [agent('b'), agent('c')], step: 100 }));
    assert.equal(d.action, 'keep');
  });

  test('grows an elastic job running short-handed back to its data replicas when agents are free', () => {
    const s = spec({ data: 3, minData: 1 });
    const one = decideReshape(running(s, [agent('a')], { free: [agent('b')] }));
    assert.equal(one.action, 'reshape');
    assert.match(one.reason, /growing from 1 to 2 data-parallel replicas \(1 agent free\)/);
    const two = decideReshape(running(s, [agent('a')], { free: [agent('b'), agent('c')] }));
    assert.equal(two.action === 'reshape' && two.layout.data, 3);
  });

  test('does not grow a pinned job past its data replicas, nor a full elastic one', () => {
    assert.equal(decideReshape(running(spec({ data: 2 }), [agent('a'), agent('b')], { free: [agent('c')] })).action, 'keep');
    assert.equal(decideReshape(running(spec({ data: 2, minData: 1 }), [agent('a'), agent('b')], { free: [agent('c')] })).action, 'keep');
  });

  test('replaces a straggler with a free agent when that is predicted faster by the margin', () => {
    const members = [agent('a'), agent('b', 3)];
    const d = decideReshape(running(spec({ data: 2 }), [agent('a'), agent('b')], { members, free: [agent('c')], straggler: 'b' }));
    assert.equal(d.action, 'reshape');
    assert.match(d.reason, /leaving out straggler b: predicted \d+ ms per step instead of \d+ ms/);
  });

  test('keeps a job whose best shape is the running one, though a free agent on its host benchmarked faster', () => {
    // Three agents of one host, as on a developer's machine: the free one's self-benchmark came out 40% higher.
    const local = (id: string, gflops: number): PlannerAgent => ({ id, host: 'h', cores: 8, memoryBytes: 8e9, matmulGflops: gflops });
    for (const parallel of [{ data: 2 }, { data: 1, pipeline: 2 }]) {
      const d = decideReshape(running(spec(parallel), [local('a', 10), local('b', 10)], { free: [local('c', 14)] }));
      assert.equal(d.action, 'keep', d.reason);
    }
  });

  test('keeps a straggler whose measured slowdown is too small to pay for a restart', () => {
    const members = [agent('a'), agent('b', 1 + RESHAPE_MARGIN / 4)];
    const d = decideReshape(running(spec({ data: 2 }), [agent('a'), agent('b')], { members, free: [agent('c')], straggler: 'b' }));
    assert.equal(d.action, 'keep');
    assert.match(d.reason, /below the 15% a restart needs/);
  });

  test('gives a straggling pipeline stage fewer blocks when no agent can replace it', () => {
    const s = spec({ data: 1, pipeline: 2 }, 8);
    const base = running(s, [agent('a'), agent('b')]);
    const slow = base.members[1]!.id;
    const members = base.members.map((m) => (m.id === slow ? { ...m, slowdown: 3 } : m));
    const d = decideReshape({ ...base, members, straggler: slow });
    assert.equal(d.action, 'reshape', d.reason);
    const stages = planFor(s, members)!.chosen!.stages;
    const bounds = (st: ReadonlyArray<readonly [number, number]>) => st.map(([a, b]) => `[${a}, ${b})`).join(' ');
    assert.equal(d.reason, `giving straggler ${slow} less work: stages ${bounds(base.stages)} → ${bounds(stages)}`);
    const blocks = (st: ReadonlyArray<readonly [number, number]>) => st[1]![1] - st[1]![0];
    assert.ok(blocks(stages) < blocks(base.stages), `the slow stage holds fewer blocks: ${bounds(base.stages)} → ${bounds(stages)}`);
  });

  test('leaves a straggling stage alone once its blocks are already balanced for its slowdown', () => {
    const s = spec({ data: 1, pipeline: 2 }, 8);
    const plain = running(s, [agent('a'), agent('b')]);
    const slow = plain.members[1]!.id;
    const members = plain.members.map((m) => (m.id === slow ? { ...m, slowdown: 3 } : m));
    const balanced = planFor(s, members)!.chosen!;
    const d = decideReshape({ ...plain, members, stages: balanced.stages, straggler: slow });
    assert.equal(d.action, 'keep', d.reason);
  });
});

describe('decideRestart', () => {
  const table: Array<[string, Parameters<typeof decideRestart>, ReturnType<typeof decideRestart>]> = [
    ['retries the first failure', [undefined, 0, 3], { action: 'retry', run: { failures: 1, checkpointStep: 0 } }],
    ['counts failures without a new checkpoint', [{ failures: 2, checkpointStep: 20 }, 20, 3], { action: 'retry', run: { failures: 3, checkpointStep: 20 } }],
    ['fails once the failures in a row exceed maxRestarts', [{ failures: 3, checkpointStep: 20 }, 20, 3], { action: 'fail', run: { failures: 4, checkpointStep: 20 } }],
    ['starts counting again after a new checkpoint', [{ failures: 3, checkpointStep: 20 }, 30, 3], { action: 'retry', run: { failures: 1, checkpointStep: 30 } }],
    ['fails at once with maxRestarts 0', [undefined, 0, 0], { action: 'fail', run: { failures: 1, checkpointStep: 0 } }],
  ];
  for (const [name, args, want] of table) test(name, () => assert.deepEqual(decideRestart(...args), want));
});
