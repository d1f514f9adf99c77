/**
 * The agent's metrics observer (node-agent/metrics.ts): hand-made step timelines go in, and the figures come out of
 * the registry's exposition, read back with an independent parser, in the families and series they belong to.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { AgentMetrics } from '../../node-agent/metrics.ts';
import type { StepReport } from '../../common/step-report.ts';
import { parseExposition, seriesOf, valueOf, type Family } from '../support/prometheus.ts';

const T0 = 1_700_000_000_000;

/** Rank `rank` of a 2-replica job: a 38 ms step with a 1000-byte gradient ring, a world sum, a tied ring and pipeline sends. */
function report(jobId: string, step: number, rank = 0): StepReport {
  return {
    jobId, attempt: 1, rank, world: 2, coords: { dp: rank, pp: 0, tp: 0 }, step,
    startMs: T0, endMs: T0 + 38, stepMs: 38, computeMs: 30, allreduceMs: 5, bubbleMs: 0, waitMs: 3,
    dataRing: { toRank: 1 - rank, sentBytes: 1000, ms: 2, bufferBytes: 1000, size: 2 },
    ...(rank === 0 ? { global: { loss: 2.5, evalLoss: 2.75, tokensPerS: 1234, tokens: 256, bubble: 0.125, lr: 1e-3 } } : {}),
    phases: [
      { name: 'allreduce', startMs: T0 + 30, endMs: T0 + 32, attrs: { ring: 'data', op: 'allreduce', bytes: 1000 } },
      { name: 'allreduce', startMs: T0 + 32, endMs: T0 + 33, attrs: { ring: 'tied', op: 'allreduce', bytes: 64 } },
      { name: 'allreduce', startMs: T0 + 33, endMs: T0 + 35, attrs: { ring: 'world', op: 'allreduce', bytes: 20 } },
      { name: 'send', startMs: T0 + 5, endMs: T0 + 6, attrs: { key: `a.${step}.0`, bytes: 512 } },
      { name: 'send', startMs: T0 + 20, endMs: T0 + 21, attrs: { key: `g.${step}.0`, bytes: 256 } },
    ],
  };
}

const read = async (m: AgentMetrics): Promise<Map<string, Family>> => parseExposition(await m.registry.metrics());

describe('the agent metrics observer', () => {
  test('a step lands in the step, phase, byte, bandwidth and global families under its job', async () => {
    const m = new AgentMetrics({ processMetrics: false });
    m.onStep(report('job-a', 1));
    m.onStep(report('job-a', 2));
    const f = await read(m);
    const job = { job: 'job-a' };
    assert.equal(valueOf(f, 'meshtrain_agent_steps_total', job), 2);
    const steps = seriesOf(f, 'meshtrain_agent_step_duration_seconds', job)[0]!;
    assert.equal(steps.count, 2);
    assert.ok(Math.abs(steps.sum! - 0.076) < 1e-9);
    for (const [phase, ms] of [['compute', 30], ['allreduce', 5], ['bubble', 0], ['wait', 3]] as const) {
      const s = seriesOf(f, 'meshtrain_agent_step_phase_seconds', { ...job, phase })[0]!;
      assert.equal(s.count, 2, phase);
      assert.ok(Math.abs(s.sum! - (2 * ms) / 1000) < 1e-9, `${phase}: ${s.sum}`);
    }
    // Bytes sent to the successor: the data ring's own count; a ring all-reduce of n bytes over 2 ranks sends n.
    assert.equal(valueOf(f, 'meshtrain_agent_allreduce_bytes_total', { ...job, ring: 'data' }), 2000);
    assert.equal(valueOf(f, 'meshtrain_agent_allreduce_bytes_total', { ...job, ring: 'tied' }), 128);
    assert.equal(valueOf(f, 'meshtrain_agent_allreduce_bytes_total', { ...job, ring: 'world' }), 40);
    assert.equal(valueOf(f, 'meshtrain_agent_allreduce_busbw_bytes_per_second', job), 500_000); // 1000 B in 2 ms
    assert.equal(valueOf(f, 'meshtrain_agent_pipeline_bytes_total', { ...job, direction: 'forward' }), 1024);
    assert.equal(valueOf(f, 'meshtrain_agent_pipeline_bytes_total', { ...job, direction: 'backward' }), 512);
    assert.equal(valueOf(f, 'meshtrain_agent_tokens_per_second', job), 1234);
    assert.equal(valueOf(f, 'meshtrain_agent_loss', { ...job, split: 'train' }), 2.5);
    assert.equal(valueOf(f, 'meshtrain_agent_loss', { ...job, split: 'eval' }), 2.75);
    assert.equal(valueOf(f, 'meshtrain_agent_pipeline_bubble_ratio', job), 0.125);
  });

  test('a rank other than 0 records its own step but no global figures', async () => {
    const m = new AgentMetrics({ processMetrics: false });
    m.onStep(report('job-b', 1, 1));
    const f = await read(m);
    assert.equal(valueOf(f, 'meshtrain_agent_steps_total', { job: 'job-b' }), 1);
    for (const name of ['meshtrain_agent_tokens_per_second', 'meshtrain_agent_loss', 'meshtrain_agent_pipeline_bubble_ratio']) {
      assert.deepEqual(seriesOf(f, name), [], name);
    }
  });

  test('a step without a data-parallel ring records no data-ring bytes or bandwidth', async () => {
    const m = new AgentMetrics({ processMetrics: false });
    m.onStep({ ...report('job-c', 1), dataRing: null, phases: [] });
    const f = await read(m);
    assert.deepEqual(seriesOf(f, 'meshtrain_agent_allreduce_bytes_total'), []);
    assert.deepEqual(seriesOf(f, 'meshtrain_agent_allreduce_busbw_bytes_per_second'), []);
  });

  test('DiLoCo: a step that ends a round counts an outer step and its pseudo-gradient all-reduce; an inner step neither', async () => {
    const m = new AgentMetrics({ processMetrics: false });
    m.onStep({ ...report('job-d', 1), dataRing: null, phases: [] }); // an inner step sends nothing
    m.onStep({ ...report('job-d', 2), outer: { steps: 1, ms: 250 } });
    const f = await read(m);
    assert.equal(valueOf(f, 'meshtrain_agent_diloco_outer_steps_total', { job: 'job-d' }), 1);
    const sync = seriesOf(f, 'meshtrain_agent_diloco_sync_seconds', { job: 'job-d' })[0]!;
    assert.equal(sync.count, 1);
    assert.equal(sync.sum, 0.25);
    assert.equal(valueOf(f, 'meshtrain_agent_allreduce_bytes_total', { job: 'job-d', ring: 'data' }), 1000, 'the round\'s one data-ring all-reduce');
  });

  test('a checkpoint records its duration and size', async () => {
    const m = new AgentMetrics({ processMetrics: false });
    m.onCheckpoint({ jobId: 'job-a', attempt: 1, rank: 0, step: 3, startMs: T0, endMs: T0 + 1500, bytes: 123_456 });
    const f = await read(m);
    const s = seriesOf(f, 'meshtrain_agent_checkpoint_duration_seconds', { job: 'job-a' })[0]!;
    assert.equal(s.count, 1);
    assert.equal(s.sum, 1.5);
    assert.equal(valueOf(f, 'meshtrain_agent_checkpoint_size_bytes', { job: 'job-a' }), 123_456);
  });

  test('joins, heartbeats and lost connections drive the connection families', async () => {
    const m = new AgentMetrics({ processMetrics: false });
    let f = await read(m);
    assert.equal(valueOf(f, 'meshtrain_agent_coordinator_connected'), 0);
    assert.equal(valueOf(f, 'meshtrain_agent_heartbeats_sent_total'), 0);
    m.joined(false);
    m.heartbeatSent();
    m.heartbeatSent();
    f = await read(m);
    assert.equal(valueOf(f, 'meshtrain_agent_coordinator_connected'), 1);
    assert.equal(valueOf(f, 'meshtrain_agent_reconnects_total'), 0, 'the first join is not a reconnect');
    m.disconnected();
    assert.equal(valueOf(await read(m), 'meshtrain_agent_coordinator_connected'), 0);
    m.joined(true);
    m.heartbeatSent();
    f = await read(m);
    assert.equal(valueOf(f, 'meshtrain_agent_reconnects_total'), 1);
    assert.equal(valueOf(f, 'meshtrain_agent_heartbeats_sent_total'), 3);
    assert.equal(valueOf(f, 'meshtrain_agent_coordinator_connected'), 1);
  });

  test('only the most recent jobs keep their series', async () => {
    const m = new AgentMetrics({ processMetrics: false, keepJobs: 2 });
    m.onStep(report('old', 1));
    m.onCheckpoint({ jobId: 'old', attempt: 1, rank: 0, step: 1, startMs: T0, endMs: T0 + 10, bytes: 1 });
    m.onStep(report('mid', 1));
    m.onStep(report('old', 2)); // 'old' is active again, so 'mid' is now the least recent
    m.onStep(report('new', 1));
    const f = await read(m);
    const jobs = (name: string) => new Set(seriesOf(f, name).map((s) => s.labels.job));
    for (const name of ['meshtrain_agent_steps_total', 'meshtrain_agent_step_phase_seconds', 'meshtrain_agent_loss', 'meshtrain_agent_allreduce_bytes_total']) {
      assert.deepEqual(jobs(name), new Set(['old', 'new']), name);
    }
    assert.deepEqual(jobs('meshtrain_agent_checkpoint_size_bytes'), new Set(['old']));
  });

  test('process metrics are collected with the agent prefix', async () => {
    const f = await read(new AgentMetrics());
    assert.equal(f.get('meshtrain_agent_process_cpu_seconds_total')?.type, 'COUNTER');
    assert.equal(f.get('meshtrain_agent_process_resident_memory_bytes')?.type, 'GAUGE');
  });
});
