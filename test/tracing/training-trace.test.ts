/**
 * node scripts/run-tests.mjs tracing/training-trace
 *
 * A real coordinator and two real agents traced over OTLP/HTTP JSON into a receiver the test runs: one training
 * step's spans from both agents are one trace, rooted at rank 0's step span, which links to the coordinator's
 * job.attempt span; all-reduces, pipeline sends and receives and checkpoints are children of their rank's step.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, type LocalCluster } from '../../scripts/local-cluster.ts';
import { runToEnd, writeCorpus } from '../support/jobs.ts';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from './otlp-receiver.ts';

const MODEL = { vocabSize: 300, nCtx: 16, nLayer: 2, nHead: 2, nEmbd: 16 };
const STEPS = 4;

describe('tracing a two-agent cluster over OTLP', () => {
  let receiver: OtlpReceiver;
  let cluster: LocalCluster;
  let dir: string;
  let corpus: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'training-trace-'));
    corpus = writeCorpus(dir, 20, 24);
    receiver = await startOtlpReceiver();
    cluster = await startCluster({
      agents: 2,
      env: {
        OTEL_TRACES_EXPORTER: 'otlp',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY: '100',
      },
    });
  });
  after(async () => {
    await cluster?.stop();
    await receiver?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const spec = (name: string, parallel: object) => ({
    name,
    model: MODEL,
    data: { corpus, heldOutFraction: 0.2 },
    training: { steps: STEPS, batchSize: 4, microBatches: 2, seqLen: 16, lr: 3e-3, warmupSteps: 1, evalEvery: 4, evalBatches: 1, checkpointEvery: 2 },
    parallel,
  });

  /** Waits until every rank's train.step of every step of `jobId` (and the attempt span) has arrived. */
  async function spansOf(jobId: string, ranks: number): Promise<ReceivedSpan[]> {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const steps = receiver.spans.filter((s) => s.name === 'train.step' && s.attributes['meshtrain.job.id'] === jobId);
      const attempt = receiver.spans.some((s) => s.name === 'job.attempt' && s.attributes['meshtrain.job.id'] === jobId);
      if (attempt && steps.length >= STEPS * ranks) return receiver.spans;
      if (Date.now() > deadline) assert.fail(`spans of ${jobId} never all arrived: ${steps.length} train.step, job.attempt ${attempt}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Step `step` of `jobId`: its trace's spans, the step span of each rank, and the attempt span. */
  function step(spans: ReceivedSpan[], jobId: string, step: number) {
    const stepSpans = spans.filter((s) => s.name === 'train.step' && s.attributes['meshtrain.job.id'] === jobId && s.attributes['meshtrain.step'] === step);
    const byRank = new Map(stepSpans.map((s) => [s.attributes['meshtrain.rank'] as number, s]));
    const traceId = byRank.get(0)?.traceId;
    const attempt = spans.find((s) => s.name === 'job.attempt' && s.attributes['meshtrain.job.id'] === jobId);
    return { stepSpans, byRank, trace: spans.filter((s) => s.traceId === traceId), attempt };
  }

  const childrenOf = (trace: ReceivedSpan[], parent: ReceivedSpan, name: string) => trace.filter((s) => s.name === name && s.parentSpanId === parent.spanId);

  test("a pipeline step's spans on both agents share one trace, rooted at rank 0's step span linked to the attempt", async () => {
    const view = await runToEnd(cluster, spec('traced-pipeline', { data: 1, pipeline: 2, tensor: 1 }));
    const spans = await spansOf(view.job.id, 2);
    const { stepSpans, byRank, trace, attempt } = step(spans, view.job.id, 2);
    assert.equal(stepSpans.length, 2, 'one train.step span per rank');
    const [r0, r1] = [byRank.get(0)!, byRank.get(1)!];
    assert.ok(r0 && r1, 'ranks 0 and 1');
    assert.notEqual(r0.resource['service.instance.id'], r1.resource['service.instance.id'], 'from two agents');
    assert.deepEqual([r0.resource['service.name'], r1.resource['service.name']], ['node-agent', 'node-agent']);
    assert.equal(r1.traceId, r0.traceId, 'one trace for the step');
    assert.equal(r0.parentSpanId, undefined, "rank 0's step span is the trace's root");
    assert.equal(r1.parentSpanId, r0.spanId, "rank 1's step span is rank 0's child");

    assert.ok(attempt, 'the coordinator exported its job.attempt span');
    assert.equal(attempt.resource['service.name'], 'coordinator');
    assert.equal(attempt.attributes['meshtrain.job.outcome'], 'succeeded');
    assert.deepEqual(r0.links, [{ traceId: attempt.traceId, spanId: attempt.spanId }], 'rank 0 links to the attempt');
    assert.notEqual(attempt.traceId, r0.traceId, 'each step is a trace of its own');

    // Stage 0 (pp 0) sends activations that stage 1 receives: the same key on both sides, in the step's trace.
    const [stage0, stage1] = [r0, r1].sort((a, b) => Number(a.attributes['meshtrain.pp']) - Number(b.attributes['meshtrain.pp']));
    const sent = childrenOf(trace, stage0!, 'pipeline.send').filter((s) => String(s.attributes['meshtrain.key']).startsWith('a.'));
    const received = childrenOf(trace, stage1!, 'pipeline.recv').map((s) => s.attributes['meshtrain.key']);
    assert.ok(sent.length >= 2, 'stage 0 sends the activations of each micro-batch');
    for (const s of sent) assert.ok(received.includes(s.attributes['meshtrain.key']!), `stage 1 received ${s.attributes['meshtrain.key']}`);
    assert.ok(Number(sent[0]!.attributes['meshtrain.bytes']) > 0);

    // All-reduces (the tied embedding's gradients between the stages, the world's loss sums) hang under their rank's step.
    for (const r of [r0, r1]) {
      const reduces = childrenOf(trace, r, 'allreduce');
      assert.ok(reduces.some((s) => s.attributes['meshtrain.ring'] === 'tied'), `rank ${r.attributes['meshtrain.rank']}: the tied ring's all-reduce`);
      assert.ok(reduces.some((s) => s.attributes['meshtrain.ring'] === 'world'), `rank ${r.attributes['meshtrain.rank']}: the world's all-reduce`);
      for (const s of reduces) assert.ok(s.startMs >= r.startMs - 1 && s.endMs <= r.endMs + 1, 'inside its step');
      assert.ok(childrenOf(trace, r, 'compute.fwd').length >= 2, 'a forward per micro-batch');
    }
    assert.ok(trace.some((s) => s.name === 'checkpoint'), 'step 2 checkpoints');
    assert.equal(typeof r0.attributes['meshtrain.loss'], 'number', 'rank 0 carries the loss');
  });

  test('a data-parallel step traces the gradient all-reduce on the data ring on both agents', async () => {
    const view = await runToEnd(cluster, spec('traced-data', { data: 2, pipeline: 1, tensor: 1 }));
    const spans = await spansOf(view.job.id, 2);
    const { byRank, trace } = step(spans, view.job.id, 3);
    for (const rank of [0, 1]) {
      const r = byRank.get(rank)!;
      const reduce = childrenOf(trace, r, 'allreduce').find((s) => s.attributes['meshtrain.ring'] === 'data');
      assert.ok(reduce, `rank ${rank}: the data ring's gradient all-reduce`);
      assert.ok(Number(reduce.attributes['meshtrain.bytes']) > 0);
      assert.equal(r.attributes['meshtrain.dp'], rank);
    }
    assert.equal(byRank.get(1)!.parentSpanId, byRank.get(0)!.spanId);
  });

  test('the cluster token is in no span attribute nor resource attribute', () => {
    assert.ok(receiver.spans.length > 0);
    for (const s of receiver.spans) {
      for (const v of [...Object.values(s.attributes), ...Object.values(s.resource)]) assert.ok(!String(v).includes(cluster.token), `${s.name}: ${String(v)}`);
    }
  });
});
