/**
 * The coordinator's training metrics (bindJobMetrics in coordinator/metrics.ts): events published on a bus by hand,
 * as the job runner publishes them, and the families they feed, read back with an independent parser.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bindJobMetrics, createMetrics } from '../../coordinator/metrics.ts';
import { EventBus } from '../../coordinator/events.ts';
import type { JobProgress, JobRankReport } from '../../protocol/control.ts';
import { parseExposition, seriesOf, valueOf, type Family } from '../support/prometheus.ts';

const progress = (jobId: string, step: number, extra: Partial<JobProgress> = {}): JobProgress => ({
  type: 'job.progress', jobId, attempt: 1, rank: 0, step, loss: 3 - step / 10, lr: 1e-3, tokensPerS: 1000 + step, stepMs: 250,
  computeMs: 200, allreduceMs: 40, bubble: 0.25, ...extra,
});

const rank = (jobId: string, step: number, r: number, link?: JobRankReport['link']): JobRankReport => ({
  type: 'job.rank', jobId, attempt: 1, rank: r, step, stepMs: 250, computeMs: 200, allreduceMs: 40, bubbleMs: 0, waitMs: 10, ...(link ? { link } : {}),
});

function setUp(keepJobs?: number): { bus: EventBus; read(): Promise<Map<string, Family>> } {
  const metrics = createMetrics();
  const bus = new EventBus((err) => assert.fail(err as Error));
  bindJobMetrics(metrics, bus, keepJobs);
  return { bus, read: async () => parseExposition(await metrics.registry.metrics()) };
}

test('progress events count steps, time them, and set throughput, loss and bubble', async () => {
  const { bus, read } = setUp();
  bus.emit('progress', { jobId: 'j1', attempt: 1, progress: progress('j1', 1), rows: [] });
  bus.emit('progress', { jobId: 'j1', attempt: 1, progress: progress('j1', 2, { evalLoss: 3.5 }), rows: [] });
  const f = await read();
  assert.equal(valueOf(f, 'meshtrain_job_steps_total', { job: 'j1' }), 2);
  const steps = seriesOf(f, 'meshtrain_job_step_duration_seconds', { job: 'j1' })[0]!;
  assert.equal(steps.count, 2);
  assert.equal(steps.sum, 0.5);
  assert.equal(valueOf(f, 'meshtrain_job_tokens_per_second', { job: 'j1' }), 1002);
  assert.equal(valueOf(f, 'meshtrain_job_loss', { job: 'j1', split: 'train' }), 2.8);
  assert.equal(valueOf(f, 'meshtrain_job_loss', { job: 'j1', split: 'eval' }), 3.5);
  assert.equal(valueOf(f, 'meshtrain_job_pipeline_bubble_ratio', { job: 'j1' }), 0.25);
});

test('rank events feed the phase histograms, and their links the byte count and per-link bandwidth', async () => {
  const { bus, read } = setUp();
  bus.emit('rank', { jobId: 'j1', attempt: 1, nodeId: 'n0', report: rank('j1', 1, 0, { toRank: 1, bytes: 4000, ms: 2 }) });
  bus.emit('rank', { jobId: 'j1', attempt: 1, nodeId: 'n1', report: rank('j1', 1, 1, { toRank: 0, bytes: 4000, ms: 4 }) });
  bus.emit('rank', { jobId: 'j1', attempt: 1, nodeId: 'n2', report: rank('j1', 1, 2) }); // no data-parallel ring
  const f = await read();
  for (const [phase, seconds] of [['compute', 0.6], ['allreduce', 0.12], ['bubble', 0], ['wait', 0.03]] as const) {
    const s = seriesOf(f, 'meshtrain_job_step_phase_seconds', { job: 'j1', phase })[0]!;
    assert.equal(s.count, 3, phase);
    assert.ok(Math.abs(s.sum! - seconds) < 1e-9, `${phase}: ${s.sum}`);
  }
  assert.equal(valueOf(f, 'meshtrain_job_allreduce_bytes_total', { job: 'j1' }), 8000);
  assert.equal(valueOf(f, 'meshtrain_job_link_busbw_bytes_per_second', { job: 'j1', from_rank: '0', to_rank: '1' }), 2_000_000);
  assert.equal(valueOf(f, 'meshtrain_job_link_busbw_bytes_per_second', { job: 'j1', from_rank: '1', to_rank: '0' }), 1_000_000);
  assert.equal(seriesOf(f, 'meshtrain_job_link_busbw_bytes_per_second').length, 2);
});

test('checkpoints time their merge and record their size; started attempts are counted', async () => {
  const { bus, read } = setUp();
  const checkpoint = { step: 3, attempt: 1, files: {}, createdMs: 0 };
  bus.emit('checkpoint', { jobId: 'j1', checkpoint, bytes: 10_000, mergeMs: 120, shards: 1 });
  bus.emit('checkpoint', { jobId: 'j1', checkpoint: { ...checkpoint, step: 6 }, bytes: 12_000, mergeMs: 80, shards: 1 });
  bus.emit('attempt', { jobId: 'j1', attempt: 1, phase: 'started', nodeIds: ['n0'] });
  bus.emit('attempt', { jobId: 'j1', attempt: 1, phase: 'ended', nodeIds: ['n0'], state: 'queued' });
  bus.emit('attempt', { jobId: 'j1', attempt: 2, phase: 'started', nodeIds: ['n0'] });
  const f = await read();
  const merge = seriesOf(f, 'meshtrain_checkpoint_merge_duration_seconds')[0]!;
  assert.equal(merge.count, 2);
  assert.ok(Math.abs(merge.sum! - 0.2) < 1e-9);
  assert.equal(valueOf(f, 'meshtrain_checkpoint_size_bytes', { job: 'j1' }), 12_000);
  assert.equal(valueOf(f, 'meshtrain_job_attempts_total', { job: 'j1' }), 2);
});

test('a job that is no longer among the most recent loses its series', async () => {
  const { bus, read } = setUp(2);
  for (const job of ['a', 'b', 'c']) bus.emit('progress', { jobId: job, attempt: 1, progress: progress(job, 1), rows: [] });
  const f = await read();
  assert.deepEqual(seriesOf(f, 'meshtrain_job_steps_total').map((s) => s.labels.job).sort(), ['b', 'c']);
  assert.deepEqual(new Set(seriesOf(f, 'meshtrain_job_step_duration_seconds').map((s) => s.labels.job)), new Set(['b', 'c']));
});
