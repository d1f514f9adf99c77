/**
 * Prometheus metrics of one node agent, served at GET /metrics on its peer port (peer-server.ts). Training figures
 * come from the step timelines node-agent/trainer/step.ts records and job-runner.ts hands its observers after each step (common/step-report.ts), so recording
 * them adds nothing to the step itself; the control connection's figures come from hooks in agent.ts.
 *
 * Names follow Prometheus conventions: units in the name, `_total` for counters, histograms for durations. Labels
 * are only job, phase, ring, split and direction, each with a small fixed set of values except job, and a job's
 * series are dropped once it is not among the most recent jobs (common/job-series.ts).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { CHECKPOINT_BUCKETS, JobSeries, PHASE_BUCKETS, STEP_BUCKETS } from '../common/job-series.ts';
import { ringAllReduceSentBytes, type CheckpointReport, type StepObserver, type StepReport } from '../common/step-report.ts';
import { RelayMetrics } from './relay-metrics.ts';

/** Jobs whose series are kept (an agent runs one job at a time; a few finished ones stay visible to a scraper). */
const KEEP_JOBS = 8;

/** The rings whose all-reduces a step's timeline names (tensor-parallel all-reduces run inside the worker's phases). */
const RINGS = ['data', 'tied', 'world'] as const;
type RingName = (typeof RINGS)[number];

export interface AgentMetricsOptions {
  /** Process metrics (CPU, memory, event loop, GC) with the `meshtrain_agent_` prefix; off in unit tests. Default on. */
  processMetrics?: boolean;
  /** How many jobs' series to keep (default 8). */
  keepJobs?: number;
}

export class AgentMetrics implements StepObserver {
  readonly registry = new Registry();
  /** Bytes of relayed peer links and whether peers can dial us (relay-metrics.ts). */
  readonly relay = new RelayMetrics(this.registry);
  readonly #series: JobSeries;
  readonly #stepSeconds: Histogram<'job'>;
  readonly #phaseSeconds: Histogram<'job' | 'phase'>;
  readonly #steps: Counter<'job'>;
  readonly #allreduceBytes: Counter<'job' | 'ring'>;
  readonly #busbw: Gauge<'job'>;
  readonly #tokensPerSecond: Gauge<'job'>;
  readonly #loss: Gauge<'job' | 'split'>;
  readonly #bubble: Gauge<'job'>;
  readonly #pipelineBytes: Counter<'job' | 'direction'>;
  readonly #checkpointSeconds: Histogram<'job'>;
  readonly #checkpointBytes: Gauge<'job'>;
  readonly #outerSteps: Counter<'job'>;
  readonly #outerSyncSeconds: Histogram<'job'>;
  readonly #heartbeats: Counter;
  readonly #reconnects: Counter;
  readonly #connected: Gauge;

  constructor(opts: AgentMetricsOptions = {}) {
    const registers = [this.registry];
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'meshtrain_agent_' });
    this.#series = new JobSeries(opts.keepJobs ?? KEEP_JOBS);
    this.#stepSeconds = new Histogram({
      name: 'meshtrain_agent_step_duration_seconds',
      help: "Wall time of one training step on this agent's rank, by job.",
      labelNames: ['job'],
      buckets: STEP_BUCKETS,
      registers,
    });
    this.#phaseSeconds = new Histogram({
      name: 'meshtrain_agent_step_phase_seconds',
      help: 'Time of each step spent per phase on this rank, by job and phase (compute: forward, backward, optimizer; allreduce: gradient rings and world sums, waiting included; bubble: idle inside the 1F1B pipeline section; wait: the rest). The phases of a step add up to its duration.',
      labelNames: ['job', 'phase'],
      buckets: PHASE_BUCKETS,
      registers,
    });
    this.#steps = new Counter({ name: 'meshtrain_agent_steps_total', help: 'Training steps this agent finished, by job.', labelNames: ['job'], registers });
    this.#allreduceBytes = new Counter({
      name: 'meshtrain_agent_allreduce_bytes_total',
      help: 'Bytes this rank sent its ring successor in all-reduces, as they crossed the link, by job and ring (data: gradients across replicas, in training.gradientWire: bf16/f16 send half of f32; tied: the tied embedding between first and last stage; world: the per-step sums).',
      labelNames: ['job', 'ring'],
      registers,
    });
    this.#busbw = new Gauge({
      name: 'meshtrain_agent_allreduce_busbw_bytes_per_second',
      help: "Bus bandwidth of the last step's gradient all-reduce on the data-parallel ring (bytes sent to the successor / time; equals NCCL's busbw), by job. Counts bytes on the wire: with training.gradientWire bf16/f16 the float32 data moved is twice this.",
      labelNames: ['job'],
      registers,
    });
    this.#tokensPerSecond = new Gauge({
      name: 'meshtrain_agent_tokens_per_second',
      help: "Global training throughput of the job's last step (world rank 0 only), by job.",
      labelNames: ['job'],
      registers,
    });
    this.#loss = new Gauge({
      name: 'meshtrain_agent_loss',
      help: 'Last mean loss over the global batch (split="train"; with DiLoCo over world rank 0\'s own replica\'s batch, as replicas exchange nothing between synchronisations) and last held-out loss (split="eval"), world rank 0 only, by job.',
      labelNames: ['job', 'split'],
      registers,
    });
    this.#bubble = new Gauge({
      name: 'meshtrain_agent_pipeline_bubble_ratio',
      help: "Idle share of the last step's pipeline section across stages (1 − mean stage busy time / slowest stage's section), world rank 0 only, by job.",
      labelNames: ['job'],
      registers,
    });
    this.#pipelineBytes = new Counter({
      name: 'meshtrain_agent_pipeline_bytes_total',
      help: 'Bytes this rank sent to neighbouring pipeline stages, by job and direction (forward: activations to the next stage; backward: gradients to the previous one).',
      labelNames: ['job', 'direction'],
      registers,
    });
    this.#checkpointSeconds = new Histogram({
      name: 'meshtrain_agent_checkpoint_duration_seconds',
      help: "Time from a shard checkpoint's snapshot to the end of its upload, on the data-parallel rank 0 that saves it, by job.",
      labelNames: ['job'],
      buckets: CHECKPOINT_BUCKETS,
      registers,
    });
    this.#checkpointBytes = new Gauge({
      name: 'meshtrain_agent_checkpoint_size_bytes',
      help: 'Size of the last shard checkpoint this agent uploaded (every file of it), by job.',
      labelNames: ['job'],
      registers,
    });
    this.#outerSteps = new Counter({
      name: 'meshtrain_agent_diloco_outer_steps_total',
      help: 'DiLoCo synchronisations (outer steps) this rank took part in, by job. Between them a replica trains alone and sends nothing; the pseudo-gradient all-reduce is counted in meshtrain_agent_allreduce_bytes_total{ring="data"}.',
      labelNames: ['job'],
      registers,
    });
    this.#outerSyncSeconds = new Histogram({
      name: 'meshtrain_agent_diloco_sync_seconds',
      help: 'Time of each DiLoCo pseudo-gradient all-reduce over the data-parallel ring on this rank, waiting for slower replicas included, by job.',
      labelNames: ['job'],
      buckets: STEP_BUCKETS,
      registers,
    });
    this.#heartbeats = new Counter({ name: 'meshtrain_agent_heartbeats_sent_total', help: 'Heartbeats sent to the coordinator.', registers });
    this.#reconnects = new Counter({
      name: 'meshtrain_agent_reconnects_total',
      help: 'Times the agent joined the coordinator again after losing its control connection.',
      registers,
    });
    this.#connected = new Gauge({
      name: 'meshtrain_agent_coordinator_connected',
      help: '1 while the agent is joined to the coordinator (welcomed, control connection open), else 0.',
      registers,
    });
  }

  onStep(r: StepReport): void {
    const job = r.jobId;
    const at = this.#series;
    this.#steps.inc(at.labels(this.#steps, { job }));
    this.#stepSeconds.observe(at.labels(this.#stepSeconds, { job }), r.stepMs / 1000);
    const phases = { compute: r.computeMs, allreduce: r.allreduceMs, bubble: r.bubbleMs, wait: r.waitMs };
    for (const [phase, ms] of Object.entries(phases)) this.#phaseSeconds.observe(at.labels(this.#phaseSeconds, { job, phase }), ms / 1000);

    const sent: Record<RingName, number> = { data: r.dataRing?.sentBytes ?? 0, tied: 0, world: 0 };
    for (const p of r.phases) {
      const bytes = typeof p.attrs?.bytes === 'number' ? p.attrs.bytes : 0;
      if (p.name === 'allreduce' && p.attrs?.ring === 'tied') sent.tied += ringAllReduceSentBytes(bytes, 2); // first ↔ last stage
      else if (p.name === 'allreduce' && p.attrs?.ring === 'world') sent.world += ringAllReduceSentBytes(bytes, r.world);
      else if (p.name === 'send') {
        // Keys say what travels: a.STEP.MB activations go forward, g.STEP.MB gradients go back.
        const direction = String(p.attrs?.key ?? '').startsWith('g.') ? 'backward' : 'forward';
        this.#pipelineBytes.inc(at.labels(this.#pipelineBytes, { job, direction }), bytes);
      }
    }
    for (const ring of RINGS) if (sent[ring] > 0) this.#allreduceBytes.inc(at.labels(this.#allreduceBytes, { job, ring }), sent[ring]);
    // The data ring's bytes include ZeRO-1's parameter all-gather, which its `ms` covers too.
    if (r.dataRing && r.dataRing.ms > 0) this.#busbw.set(at.labels(this.#busbw, { job }), r.dataRing.sentBytes / (r.dataRing.ms / 1000));

    if (r.outer) {
      this.#outerSteps.inc(at.labels(this.#outerSteps, { job }));
      this.#outerSyncSeconds.observe(at.labels(this.#outerSyncSeconds, { job }), r.outer.ms / 1000);
    }
    const g = r.global;
    if (g) {
      this.#tokensPerSecond.set(at.labels(this.#tokensPerSecond, { job }), g.tokensPerS);
      this.#loss.set(at.labels(this.#loss, { job, split: 'train' }), g.loss);
      if (g.evalLoss !== undefined) this.#loss.set(at.labels(this.#loss, { job, split: 'eval' }), g.evalLoss);
      this.#bubble.set(at.labels(this.#bubble, { job }), g.bubble);
    }
  }

  onCheckpoint(r: CheckpointReport): void {
    const job = r.jobId;
    this.#checkpointSeconds.observe(this.#series.labels(this.#checkpointSeconds, { job }), Math.max(0, r.endMs - r.startMs) / 1000);
    this.#checkpointBytes.set(this.#series.labels(this.#checkpointBytes, { job }), r.bytes);
  }

  /** The coordinator welcomed us; `again` when this is not the agent's first join. */
  joined(again: boolean): void {
    this.#connected.set(1);
    if (again) this.#reconnects.inc();
  }

  /** The control connection closed (or never got welcomed). */
  disconnected(): void {
    this.#connected.set(0);
  }

  heartbeatSent(): void {
    this.#heartbeats.inc();
  }
}
