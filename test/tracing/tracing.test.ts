/**
 * node scripts/run-tests.mjs tracing/tracing
 *
 * common/tracing.ts without processes: when tracing is on, traceparent formatting and parsing, the forced id
 * generator, the attempt span, and a step report turned into spans (exported in memory).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { SpanStatusCode } from '@opentelemetry/api';
import { InMemorySpanExporter, RandomIdGenerator, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { createStepTracer, ForcedIdGenerator, formatTraceparent, initTracing, parseTraceparent, startAttemptSpan, tracingRequested, type Tracing } from '../../common/tracing.ts';
import type { StepReport } from '../../common/step-report.ts';

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN = '00f067aa0ba902b7';

test('tracing is requested only by an exporter or an OTLP endpoint, and OTEL_SDK_DISABLED wins', () => {
  const cases: Array<[NodeJS.ProcessEnv, boolean]> = [
    [{}, false],
    [{ OTEL_SERVICE_NAME: 'x', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_TRACES_SAMPLER: 'always_on' }, false],
    [{ OTEL_TRACES_EXPORTER: 'otlp' }, true],
    [{ OTEL_TRACES_EXPORTER: 'console' }, true],
    [{ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }, false],
    [{ OTEL_TRACES_EXPORTER: ' ', OTEL_EXPORTER_OTLP_ENDPOINT: '' }, false],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }, true],
    [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' }, true],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_SDK_DISABLED: 'true' }, false],
    [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_SDK_DISABLED: 'TRUE' }, false],
    [{ OTEL_TRACES_EXPORTER: 'otlp', OTEL_SDK_DISABLED: 'false' }, true],
  ];
  for (const [env, want] of cases) assert.equal(tracingRequested(env), want, JSON.stringify(env));
});

test('without OTEL_* settings initTracing starts nothing and attempt spans carry no traceparent', async () => {
  const saved = Object.entries(process.env).filter(([k]) => k.startsWith('OTEL_'));
  for (const [k] of saved) delete process.env[k];
  try {
    const tracing = await initTracing('test');
    assert.equal(tracing.enabled, false);
    const attempt = startAttemptSpan('job-1', 1);
    assert.equal(attempt.traceparent, undefined);
    attempt.end('succeeded'); // a no-op
    await tracing.shutdown();
  } finally {
    for (const [k, v] of saved) process.env[k] = v;
  }
});

test('a traceparent is formatted from a span context and parsed back; malformed or all-zero ones are refused', () => {
  assert.equal(formatTraceparent({ traceId: TRACE, spanId: SPAN, traceFlags: 1 }), `00-${TRACE}-${SPAN}-01`);
  assert.equal(formatTraceparent({ traceId: TRACE, spanId: SPAN, traceFlags: 0 }), `00-${TRACE}-${SPAN}-00`);
  assert.deepEqual(parseTraceparent(`00-${TRACE}-${SPAN}-01`), { traceId: TRACE, spanId: SPAN, sampled: true });
  assert.deepEqual(parseTraceparent(`00-${TRACE}-${SPAN}-00`), { traceId: TRACE, spanId: SPAN, sampled: false });
  assert.deepEqual(parseTraceparent(`00-${TRACE}-${SPAN}-03`), { traceId: TRACE, spanId: SPAN, sampled: true }, 'other flag bits are ignored');
  for (const bad of ['', `01-${TRACE}-${SPAN}-01`, `00-${TRACE.toUpperCase()}-${SPAN}-01`, `00-${TRACE}-${SPAN}`, `00-${TRACE.slice(1)}-${SPAN}-01`, `00-${'0'.repeat(32)}-${SPAN}-01`, `00-${TRACE}-${'0'.repeat(16)}-01`, `00-${TRACE}-${SPAN}-01-extra`]) {
    assert.equal(parseTraceparent(bad), undefined, bad);
  }
});

test('the forced id generator gives the forced ids to exactly one span, and random ids otherwise', () => {
  const ids = new ForcedIdGenerator(new RandomIdGenerator());
  const random = [ids.generateTraceId(), ids.generateSpanId()];
  assert.match(random[0]!, /^[0-9a-f]{32}$/);
  assert.match(random[1]!, /^[0-9a-f]{16}$/);
  // The SDK asks for the span id first, then (for a root) the trace id; each forced id is used once.
  const got = ids.withIds({ traceId: TRACE, spanId: SPAN }, () => [ids.generateSpanId(), ids.generateTraceId(), ids.generateSpanId()]);
  assert.deepEqual(got.slice(0, 2), [SPAN, TRACE]);
  assert.notEqual(got[2], SPAN, 'a second span in the same call gets a random id');
  assert.throws(() => ids.withIds({ traceId: TRACE, spanId: SPAN }, () => {
    throw new Error('boom');
  }));
  assert.notEqual(ids.generateSpanId(), SPAN, 'ids forced for a start that threw are not left for the next span');
  assert.notEqual(ids.generateTraceId(), TRACE);
});

describe('with tracing on (in-memory exporter)', () => {
  const exporter = new InMemorySpanExporter();
  const processor = new SimpleSpanProcessor(exporter);
  let tracing: Tracing;
  before(async () => {
    tracing = await initTracing('test', { 'service.instance.id': 'agent-x' }, { spanProcessors: [processor] });
  });
  after(() => tracing.shutdown());
  const finished = async (): Promise<ReadableSpan[]> => {
    await processor.forceFlush();
    const spans = exporter.getFinishedSpans();
    exporter.reset();
    return spans;
  };

  test("the attempt span's traceparent names it, and its end records the outcome once", async () => {
    assert.equal(tracing.enabled, true);
    const attempt = startAttemptSpan('job-1', 2, { name: 'tiny', 'meshtrain.layout': '2×1×1' });
    assert.ok(attempt.traceparent);
    attempt.end('failed', 'agent lost');
    attempt.end('succeeded');
    const [span] = await finished();
    assert.equal(span!.name, 'job.attempt');
    assert.equal(attempt.traceparent, formatTraceparent(span!.spanContext()));
    assert.deepEqual(span!.attributes, {
      'meshtrain.job.id': 'job-1',
      'meshtrain.job.attempt': 2,
      'meshtrain.job.name': 'tiny',
      'meshtrain.layout': '2×1×1',
      'meshtrain.job.outcome': 'failed',
      'meshtrain.job.reason': 'agent lost',
    });
    assert.equal(span!.status.code, SpanStatusCode.ERROR);
    assert.equal(span!.resource.attributes['service.instance.id'], 'agent-x');
  });

  const t0 = 1_700_000_000_000.25;
  const attemptParent = { traceId: 'ab'.repeat(16), spanId: 'cd'.repeat(8), sampled: true };
  const report = (rank: number, over: Partial<StepReport> = {}): StepReport => ({
    jobId: 'job-1', attempt: 1, rank, world: 2, coords: { dp: rank, pp: 0, tp: 0 }, step: 7,
    startMs: t0, endMs: t0 + 100, stepMs: 100, computeMs: 60, allreduceMs: 30, bubbleMs: 0, waitMs: 10,
    dataRing: { toRank: 1 - rank, sentBytes: 1000, ms: 30, bufferBytes: 1000, size: 2 },
    ...(rank === 0 ? { global: { loss: 2.5, tokensPerS: 1000, tokens: 100, bubble: 0, lr: 1e-3 } } : {}),
    phases: [
      { name: 'fwd', startMs: t0 + 1, endMs: t0 + 30, attrs: { mb: 0 } },
      { name: 'allreduce', startMs: t0 + 60, endMs: t0 + 90, attrs: { ring: 'data', op: 'allreduce', bytes: 1000 } },
    ],
    trace: { step: { traceId: TRACE, spanId: SPAN, sampled: true }, attemptParent },
    ...over,
  });

  test("rank 0's step span gets the step's ids and links to the attempt; rank 1's is its child; phases are children", async () => {
    const tracer = createStepTracer();
    tracer.onStep(report(0));
    tracer.onStep(report(1));
    const spans = await finished();
    const steps = spans.filter((s) => s.name === 'train.step');
    const [r0, r1] = [steps.find((s) => s.attributes['meshtrain.rank'] === 0)!, steps.find((s) => s.attributes['meshtrain.rank'] === 1)!];
    assert.deepEqual([r0.spanContext().traceId, r0.spanContext().spanId], [TRACE, SPAN]);
    assert.equal(r0.parentSpanContext, undefined);
    assert.deepEqual(r0.links.map((l) => [l.context.traceId, l.context.spanId]), [[attemptParent.traceId, attemptParent.spanId]]);
    assert.equal(r1.spanContext().traceId, TRACE);
    assert.equal(r1.parentSpanContext?.spanId, SPAN);
    assert.notEqual(r1.spanContext().spanId, SPAN);
    assert.deepEqual(r0.startTime, [1_700_000_000, 250_000], 'epoch ms → [s, ns]');
    assert.deepEqual(r0.endTime, [1_700_000_000, 100_250_000]);
    assert.equal(r0.attributes['meshtrain.loss'], 2.5);
    assert.equal(r1.attributes['meshtrain.loss'], undefined, 'the global loss is rank 0\'s');
    assert.equal(r1.attributes['meshtrain.step'], 7);
    assert.equal(r1.attributes['meshtrain.allreduce_ms'], 30);
    for (const step of [r0, r1]) {
      const children = spans.filter((s) => s.name !== 'train.step' && s.parentSpanContext?.spanId === step.spanContext().spanId);
      assert.deepEqual(children.map((s) => s.name).sort(), ['allreduce', 'compute.fwd']);
      const reduce = children.find((s) => s.name === 'allreduce')!;
      assert.deepEqual(reduce.attributes, { 'meshtrain.ring': 'data', 'meshtrain.op': 'allreduce', 'meshtrain.bytes': 1000 });
      assert.equal(reduce.spanContext().traceId, TRACE);
    }
  });

  test('a checkpoint upload is a span in its step\'s trace; untraced and unsampled steps make no spans', async () => {
    const tracer = createStepTracer();
    tracer.onCheckpoint!({ jobId: 'job-1', attempt: 1, rank: 1, step: 7, startMs: t0, endMs: t0 + 5, bytes: 1234, trace: { traceId: TRACE, spanId: SPAN, sampled: true } });
    const [upload] = await finished();
    assert.equal(upload!.name, 'checkpoint.upload');
    assert.equal(upload!.spanContext().traceId, TRACE);
    assert.equal(upload!.parentSpanContext?.spanId, SPAN);
    assert.equal(upload!.attributes['meshtrain.bytes'], 1234);

    const { trace: _, ...untraced } = report(0);
    tracer.onStep(untraced);
    tracer.onStep(report(1, { trace: { step: { traceId: TRACE, spanId: SPAN, sampled: false }, attemptParent } }));
    tracer.onCheckpoint!({ jobId: 'job-1', attempt: 1, rank: 0, step: 7, startMs: t0, endMs: t0 + 5, bytes: 1 });
    assert.deepEqual(await finished(), []);
  });
});
