import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { AttemptTelemetry, findStraggler, meanBreakdown, STRAGGLER_MIN_STEPS, type StragglerInput } from '../../coordinator/jobs/telemetry.ts';
import type { JobRankReport } from '../../protocol/control.ts';

const rank = (r: number, stage: number, layers: number, computeMs: number[]): StragglerInput => ({ rank: r, nodeId: `n${r}`, nodeName: `agent-${r}`, stage, layers, computeMs });
const steady = (ms: number, n = STRAGGLER_MIN_STEPS) => Array.from({ length: n }, () => ms);

describe('findStraggler', () => {
  const cases: Array<{ name: string; ranks: StragglerInput[]; want: number | null }> = [
    { name: 'names the replica that computes twice as long as the others of its stage', ranks: [rank(0, 0, 2, steady(100)), rank(1, 0, 2, steady(210)), rank(2, 0, 2, steady(105))], want: 1 },
    { name: 'names nobody when replicas differ by less than the ratio', ranks: [rank(0, 0, 2, steady(100)), rank(1, 0, 2, steady(140))], want: null },
    { name: 'names nobody before enough steps were seen (a slow first step is warm-up)', ranks: [rank(0, 0, 2, steady(100)), rank(1, 0, 2, steady(400, STRAGGLER_MIN_STEPS - 1))], want: null },
    { name: 'names nobody with a single rank', ranks: [rank(0, 0, 2, steady(500))], want: null },
    { name: 'does not name a pipeline stage for being deeper than the others', ranks: [rank(0, 0, 1, steady(100)), rank(1, 1, 3, steady(290))], want: null },
    { name: 'does not name an unpaired stage that is only somewhat slower per layer', ranks: [rank(0, 0, 1, steady(100)), rank(1, 1, 1, steady(250))], want: null },
    { name: 'names an unpaired stage that is far slower per layer', ranks: [rank(0, 0, 1, steady(100)), rank(1, 1, 1, steady(350))], want: 1 },
    { name: 'compares ranks of a stage only with each other', ranks: [rank(0, 0, 1, steady(50)), rank(1, 1, 1, steady(200)), rank(2, 0, 1, steady(52)), rank(3, 1, 1, steady(410))], want: 3 },
    { name: 'names the most extreme of two slow ranks', ranks: [rank(0, 0, 1, steady(100)), rank(1, 0, 1, steady(200)), rank(2, 0, 1, steady(300)), rank(3, 0, 1, steady(100))], want: 2 },
  ];
  for (const c of cases) {
    test(c.name, () => {
      assert.equal(findStraggler(c.ranks)?.rank ?? null, c.want);
    });
  }

  test('says by how much and why, in its reason', () => {
    const s = findStraggler([rank(0, 0, 2, steady(100)), rank(1, 0, 2, steady(300))])!;
    assert.equal(s.nodeName, 'agent-1');
    assert.equal(Math.round(s.ratio * 10) / 10, 3);
    assert.match(s.reason, /rank 1 \(agent-1\) computes 300 ms per step, 3\.0× the 100 ms/);
  });
});

describe('meanBreakdown', () => {
  test('averages each rank over its window, then the ranks', () => {
    const b = (stepMs: number) => ({ stepMs, computeMs: stepMs / 2, allreduceMs: stepMs / 4, bubbleMs: 0, waitMs: stepMs / 4 });
    assert.deepEqual(meanBreakdown([[b(100), b(300)], [b(400)], []]), { stepMs: 300, computeMs: 150, allreduceMs: 75, bubbleMs: 0, waitMs: 75 });
    assert.equal(meanBreakdown([[], []]), null);
  });
});

describe('AttemptTelemetry', () => {
  const report = (r: number, step: number, computeMs: number, link?: JobRankReport['link']): JobRankReport => ({
    type: 'job.rank', jobId: 'job-1', attempt: 1, rank: r, step, stepMs: computeMs + 20, computeMs, allreduceMs: 15, bubbleMs: 0, waitMs: 5, ...(link ? { link } : {}),
  });

  test('lays out a 2×2×1 job: which agent holds which replica, stage and layers', () => {
    const t = new AttemptTelemetry({ data: 2, pipeline: 2, tensor: 1 }, [[0, 2], [2, 4]], ['a', 'b', 'c', 'd'], (id) => id.toUpperCase());
    assert.deepEqual(t.placement().map((c) => [c.rank, c.nodeName, c.dp, c.pp, c.layers.join('-')]), [
      [0, 'A', 0, 0, '0-2'], [1, 'B', 0, 1, '2-4'], [2, 'C', 1, 0, '0-2'], [3, 'D', 1, 1, '2-4'],
    ]);
  });

  test('turns each rank\'s last link report into a link from its agent to its successor\'s, in GB/s', () => {
    const t = new AttemptTelemetry({ data: 2, pipeline: 1, tensor: 1 }, [[0, 2]], ['a', 'b'], (id) => id);
    t.record(report(0, 1, 100, { toRank: 1, bytes: 2e6, ms: 4 }));
    t.record(report(1, 1, 100, { toRank: 0, bytes: 2e6, ms: 8 }));
    assert.deepEqual(t.links().map((l) => [l.fromName, l.toName, l.gbps]), [['a', 'b', 0.5], ['b', 'a', 0.25]]);
  });

  test('keeps the latest report per rank and names a straggler from the window', () => {
    const t = new AttemptTelemetry({ data: 2, pipeline: 1, tensor: 1 }, [[0, 2]], ['a', 'b'], (id) => id);
    for (let s = 1; s <= 4; s++) {
      t.record(report(0, s, 100));
      t.record(report(1, s, 320));
    }
    assert.deepEqual(t.ranks().map((r) => [r.rank, r.step]), [[0, 4], [1, 4]]);
    assert.equal(t.straggler()?.nodeId, 'b');
    assert.equal(t.breakdown()?.computeMs, 210);
  });
});
