/**
 * OpenTelemetry tracing for all three processes: the coordinator's span per job attempt, every agent's spans per
 * training step (built after the fact from the step's timeline, step-report.ts), and the gateway's request spans
 * (gateway/tracing.ts).
 *
 * Off unless the standard OTEL_* variables ask for it (`tracingRequested`): then `initTracing` starts the SDK,
 * which reads every other OTEL_* variable itself — exporter, protocol, endpoint, headers, sampler, service name,
 * resource attributes, batch processor settings. While it is off the API's no-op tracer answers every call.
 *
 * One training step is one trace across every agent: rank 0 draws the step's {traceId, spanId} and the world ring
 * carries it to every rank (node-agent/trainer/step.ts agreeStepTrace), so rank 0's `train.step` span must get exactly
 * those ids — the SDK draws its own, hence `ForcedIdGenerator` — and the other ranks' step spans are its children.
 */
import { context, diag, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, TraceFlags, type Attributes, type Context, type Span, type SpanContext, type Tracer } from '@opentelemetry/api';
import { millisToHrTime } from '@opentelemetry/core';
import type { IdGenerator, SpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { CheckpointReport, Phase, PhaseName, StepObserver, StepReport, TraceParent } from './step-report.ts';

/** The instrumentation scope of every span meshtrain makes. */
export const TRACER_NAME = 'meshtrain';

const tracer = (): Tracer => trace.getTracer(TRACER_NAME);

// ---------------------------------------------------------------------------------------------------------------
// Switching it on

/**
 * Whether the environment asks for traces: not OTEL_SDK_DISABLED=true, and an exporter named (OTEL_TRACES_EXPORTER
 * other than none) or an OTLP endpoint given. Anything less leaves tracing off, so an unconfigured cluster never
 * tries to reach a collector on localhost:4318.
 */
export function tracingRequested(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  const exporter = env.OTEL_TRACES_EXPORTER?.trim().toLowerCase();
  if (exporter) return exporter !== 'none';
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim());
}

export interface Tracing {
  readonly enabled: boolean;
  /** Flushes the spans not yet exported (waiting at most SHUTDOWN_FLUSH_MS) and stops the SDK. */
  shutdown(): Promise<void>;
}

export interface TracingOptions {
  /**
   * Tests: export through these processors (an InMemorySpanExporter's) instead of what the environment says;
   * tracing is then on whatever OTEL_* says.
   */
  spanProcessors?: SpanProcessor[];
}

/** A collector that is down must not hold a process's exit for the exporter's 10 s timeout. */
const SHUTDOWN_FLUSH_MS = 5_000;

const OFF: Tracing = Object.freeze({ enabled: false, shutdown: async () => {} });

/** The id generator of the running SDK (step spans on rank 0 force their ids through it); null while off. */
let forcedIds: ForcedIdGenerator | null = null;
/** Set from the first initTracing that starts the SDK until its shutdown: a process registers one SDK. */
let started = false;

/**
 * Starts the SDK when the environment asks for traces (`tracingRequested`); `serviceName` is the default
 * service.name (OTEL_SERVICE_NAME wins) and `attrs` further resource attributes (OTEL_RESOURCE_ATTRIBUTES wins).
 * Traces only: metrics are prom-client's and logs go to stderr, so the SDK starts no metric or log exporter, and
 * no auto-instrumentation (every span here is made on purpose). A second call while running shares the first's SDK.
 */
export async function initTracing(serviceName: string, attrs: Record<string, string | number> = {}, opts: TracingOptions = {}): Promise<Tracing> {
  if (!opts.spanProcessors && !tracingRequested()) return OFF;
  if (started) return { enabled: true, shutdown: async () => {} };
  started = true;
  // Loaded only when tracing is on: the SDK and its exporters take ~150 ms to import.
  const [{ NodeSDK, resources }, { RandomIdGenerator }] = await Promise.all([import('@opentelemetry/sdk-node'), import('@opentelemetry/sdk-trace-base')]);
  const ids = new ForcedIdGenerator(new RandomIdGenerator());
  const sdk = new NodeSDK({
    resource: resources.defaultResource().merge(resources.resourceFromAttributes({ 'service.name': serviceName, 'process.pid': process.pid, 'process.runtime.version': process.versions.node, ...attrs })),
    // Not the SDK's process detector: it records the command line, and ours carry --token and --api-key.
    ...(process.env.OTEL_NODE_RESOURCE_DETECTORS ? {} : { resourceDetectors: [resources.envDetector, resources.hostDetector] }),
    idGenerator: ids,
    instrumentations: [],
    metricReaders: [],
    logRecordProcessors: [],
    ...(opts.spanProcessors ? { spanProcessors: opts.spanProcessors } : {}),
  });
  sdk.start();
  forcedIds = ids;
  let stopped: Promise<void> | undefined;
  return {
    enabled: true,
    shutdown() {
      stopped ??= (async () => {
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, SHUTDOWN_FLUSH_MS).unref()));
        await Promise.race([sdk.shutdown().catch((err: unknown) => diag.warn(`tracing shutdown: ${String(err)}`)), timeout]);
        clearTimeout(timer);
        forcedIds = null;
        started = false;
        // Unregister, so that a later initTracing in this process (tests) can register again.
        trace.disable();
        context.disable();
        propagation.disable();
      })();
      return stopped;
    },
  };
}

/**
 * The SDK's random ids, except for the one span started inside `withIds`: that span gets the given trace and span
 * id. The SDK asks for a span id (and, for a root span, a trace id) synchronously inside startSpan, so forcing
 * "the next span's ids" around one synchronous startSpan call is exact.
 */
export class ForcedIdGenerator implements IdGenerator {
  readonly #random: IdGenerator;
  #traceId: string | undefined;
  #spanId: string | undefined;

  constructor(random: IdGenerator) {
    this.#random = random;
  }

  /** Runs `start` (which must start exactly one root span, synchronously) with the ids that span gets. */
  withIds<T>(ids: { traceId: string; spanId: string }, start: () => T): T {
    this.#traceId = ids.traceId;
    this.#spanId = ids.spanId;
    try {
      return start();
    } finally {
      this.#traceId = this.#spanId = undefined;
    }
  }

  generateTraceId(): string {
    const id = this.#traceId ?? this.#random.generateTraceId();
    this.#traceId = undefined;
    return id;
  }

  generateSpanId(): string {
    const id = this.#spanId ?? this.#random.generateSpanId();
    this.#spanId = undefined;
    return id;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// W3C trace context

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** `00-<trace id>-<span id>-<flags>`: the W3C traceparent of a span context. */
export function formatTraceparent(ctx: Pick<SpanContext, 'traceId' | 'spanId' | 'traceFlags'>): string {
  return `00-${ctx.traceId}-${ctx.spanId}-${(ctx.traceFlags & 0xff).toString(16).padStart(2, '0')}`;
}

/** A version-00 traceparent's ids, or undefined when it is malformed or names the all-zero (invalid) ids. */
export function parseTraceparent(header: string): TraceParent | undefined {
  const m = TRACEPARENT.exec(header.trim());
  if (!m || /^0+$/.test(m[1]!) || /^0+$/.test(m[2]!)) return undefined;
  return { traceId: m[1]!, spanId: m[2]!, sampled: (parseInt(m[3]!, 16) & TraceFlags.SAMPLED) !== 0 };
}

/** A context whose (remote) parent span is `tp`: spans started in it join tp's trace. */
function contextOf(tp: TraceParent, parent: Context = ROOT_CONTEXT): Context {
  return trace.setSpan(parent, trace.wrapSpanContext(remoteSpanContext(tp)));
}

const remoteSpanContext = (tp: TraceParent): SpanContext => ({ traceId: tp.traceId, spanId: tp.spanId, traceFlags: tp.sampled ? TraceFlags.SAMPLED : TraceFlags.NONE, isRemote: true });

/** Epoch milliseconds (fractional) → the SDK's [seconds, nanoseconds]; explicit, rather than the API guessing the unit. */
const hr = (epochMs: number) => millisToHrTime(epochMs);

// ---------------------------------------------------------------------------------------------------------------
// Coordinator: one span per job attempt

/** The coordinator's span for one job attempt; `traceparent` is undefined when tracing is off. */
export interface AttemptSpan {
  traceparent: string | undefined;
  end(outcome: 'succeeded' | 'failed' | 'queued' | 'cancelled' | string, reason?: string): void;
}

/**
 * Starts `job.attempt` (meshtrain.job.id, meshtrain.job.attempt, and `attrs`: a key without a dot becomes
 * meshtrain.job.<key>). Its traceparent goes into job.start so the agents trace the attempt's steps; it is
 * undefined when tracing is off or the sampler dropped the attempt — the agents then skip the per-step exchange
 * of trace ids altogether. end() is idempotent.
 */
export function startAttemptSpan(jobId: string, attempt: number, attrs: Record<string, string | number> = {}): AttemptSpan {
  const extra = Object.fromEntries(Object.entries(attrs).map(([k, v]) => [k.includes('.') ? k : `meshtrain.job.${k}`, v]));
  const span = tracer().startSpan('job.attempt', { root: true, kind: SpanKind.INTERNAL, attributes: { 'meshtrain.job.id': jobId, 'meshtrain.job.attempt': attempt, ...extra } });
  const ctx = span.spanContext();
  const sampled = span.isRecording() && (ctx.traceFlags & TraceFlags.SAMPLED) !== 0;
  let ended = false;
  return {
    traceparent: sampled ? formatTraceparent(ctx) : undefined,
    end(outcome, reason) {
      if (ended) return;
      ended = true;
      span.setAttribute('meshtrain.job.outcome', outcome);
      if (reason !== undefined) span.setAttribute('meshtrain.job.reason', reason);
      if (outcome === 'failed') span.setStatus({ code: SpanStatusCode.ERROR, ...(reason !== undefined ? { message: reason } : {}) });
      span.end();
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Agents: a step's timeline → spans

/** Span name of each phase of a step (step-report.ts). */
const PHASE_SPAN: Readonly<Record<PhaseName, string>> = Object.freeze({
  begin: 'data.batch',
  fwd: 'compute.fwd',
  bwd: 'compute.bwd',
  recv: 'pipeline.recv',
  send: 'pipeline.send',
  allreduce: 'allreduce',
  update: 'optimizer.update',
  eval: 'eval',
  checkpoint: 'checkpoint',
});

/**
 * The agent's step observer for traces. For each step of a traced job, a `train.step` span per rank with the
 * step's times and its breakdown, and a child span per phase (PHASE_SPAN). On world rank 0 the step span IS the
 * step's context from report.trace.step — the root of the step's trace, linked to the coordinator's attempt span;
 * on the other ranks it is that span's child, so one step on every agent is one trace. Untraced jobs, and steps
 * whose trace the coordinator did not sample, make no spans.
 */
export function createStepTracer(): StepObserver {
  let warned = false;
  return {
    onStep(report: StepReport): void {
      const t = report.trace;
      if (!t || !t.step.sampled) return;
      try {
        const attributes = stepAttributes(report);
        const options = { kind: SpanKind.INTERNAL, startTime: hr(report.startMs), attributes };
        let span: Span;
        if (report.rank === 0) {
          const root = () => tracer().startSpan('train.step', { ...options, root: true, links: [{ context: remoteSpanContext(t.attemptParent), attributes: { 'meshtrain.link': 'job.attempt' } }] }, ROOT_CONTEXT);
          span = forcedIds ? forcedIds.withIds(t.step, root) : root();
          if (!warned && span.isRecording() && span.spanContext().spanId !== t.step.spanId) {
            warned = true; // another tracer provider than initTracing's: the other ranks' spans will have no parent
            diag.warn('train.step on rank 0 did not get the step\'s ids: start tracing with initTracing');
          }
        } else {
          span = tracer().startSpan('train.step', options, contextOf(t.step));
        }
        const inStep = trace.setSpan(ROOT_CONTEXT, span);
        for (const phase of report.phases) phaseSpan(phase, inStep);
        span.end(hr(report.endMs));
      } catch (err) {
        diag.warn(`step tracer: ${String(err)}`); // an observer must not throw into the training loop
      }
    },
    onCheckpoint(report: CheckpointReport): void {
      if (!report.trace?.sampled) return;
      try {
        tracer()
          .startSpan('checkpoint.upload', {
            startTime: hr(report.startMs),
            attributes: { 'meshtrain.job.id': report.jobId, 'meshtrain.job.attempt': report.attempt, 'meshtrain.rank': report.rank, 'meshtrain.step': report.step, 'meshtrain.bytes': report.bytes },
          }, contextOf(report.trace))
          .end(hr(report.endMs));
      } catch (err) {
        diag.warn(`step tracer: ${String(err)}`);
      }
    },
  };
}

function stepAttributes(r: StepReport): Attributes {
  const a: Attributes = {
    'meshtrain.job.id': r.jobId,
    'meshtrain.job.attempt': r.attempt,
    'meshtrain.rank': r.rank,
    'meshtrain.world': r.world,
    'meshtrain.dp': r.coords.dp,
    'meshtrain.pp': r.coords.pp,
    'meshtrain.tp': r.coords.tp,
    'meshtrain.step': r.step,
    'meshtrain.step_ms': r.stepMs,
    'meshtrain.compute_ms': r.computeMs,
    'meshtrain.allreduce_ms': r.allreduceMs,
    'meshtrain.bubble_ms': r.bubbleMs,
    'meshtrain.wait_ms': r.waitMs,
  };
  if (r.dataRing) {
    a['meshtrain.data_ring.to_rank'] = r.dataRing.toRank;
    a['meshtrain.data_ring.sent_bytes'] = r.dataRing.sentBytes;
    a['meshtrain.data_ring.ms'] = r.dataRing.ms;
  }
  if (r.global) {
    a['meshtrain.loss'] = r.global.loss;
    if (r.global.evalLoss !== undefined) a['meshtrain.eval_loss'] = r.global.evalLoss;
    a['meshtrain.tokens'] = r.global.tokens;
    a['meshtrain.tokens_per_s'] = r.global.tokensPerS;
    a['meshtrain.lr'] = r.global.lr;
  }
  return a;
}

/** One phase as a child of its step's span; its attrs (ring, op, bytes, key, mb) become meshtrain.<name>. */
function phaseSpan(phase: Phase, parent: Context): void {
  const attributes: Attributes = {};
  for (const [k, v] of Object.entries(phase.attrs ?? {})) attributes[`meshtrain.${k}`] = v;
  tracer().startSpan(PHASE_SPAN[phase.name] ?? phase.name, { startTime: hr(phase.startMs), attributes }, parent).end(hr(phase.endMs));
}
