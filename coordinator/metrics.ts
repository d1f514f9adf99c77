/**
 * Prometheus metrics of the coordinator (GET /metrics). One registry per coordinator instance, so tests can run
 * several in one process. Names follow Prometheus conventions: `_total` for counters, units in the name,
 * histograms for durations.
 *
 * The cluster's own figures are set where things happen (coordinator/cluster/agent-hub.ts, coordinator/cluster/groups.ts); the training figures are
 * derived from the event bus (bindJobMetrics), from what rank 0 and every rank report each step.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { CHECKPOINT_BUCKETS, JobSeries, PHASE_BUCKETS, STEP_BUCKETS } from '../common/job-series.ts';
import type { EventBus } from './events.ts';

export interface CoordinatorMetrics {
  registry: Registry;
  nodes: Gauge<'status'>;
  agentConnections: Gauge;
  heartbeats: Counter;
  joins: Counter<'outcome'>;
  protocolRejections: Counter<'code'>;
  collectiveRuns: Counter<'op' | 'outcome'>;
  collectiveSeconds: Histogram<'op'>;
  /** Payload bytes the coordinator's relay passed on, by relayed node and direction (to_node, from_node). */
  relayBytes: Counter<'node' | 'direction'>;
  /** Relayed links asked for, by outcome (spliced, unauthorized, unavailable, timeout). */
  relayLinks: Counter<'outcome'>;
  /** Where the node gauge reads its counts at scrape time. */
  countNodesWith(fn: () => Record<string, number>): void;
}

export function createMetrics(): CoordinatorMetrics {
  const registry = new Registry();
  let countNodes: () => Record<string, number> = () => ({});
  collectDefaultMetrics({ register: registry, prefix: 'meshtrain_coordinator_' });
  return {
    registry,
    nodes: new Gauge({
      name: 'meshtrain_nodes',
      help: 'Known agents by status (alive, dead, left, revoked).',
      labelNames: ['status'],
      registers: [registry],
      collect() {
        for (const [status, count] of Object.entries(countNodes())) this.set({ status }, count);
      },
    }),
    countNodesWith: (fn) => (countNodes = fn),
    agentConnections: new Gauge({ name: 'meshtrain_agent_connections', help: 'Open agent control connections.', registers: [registry] }),
    heartbeats: new Counter({ name: 'meshtrain_heartbeats_received_total', help: 'Heartbeats received from agents.', registers: [registry] }),
    joins: new Counter({
      name: 'meshtrain_agent_joins_total',
      help: 'Agent hellos by outcome (new, reclaimed, unauthorized, version_mismatch, refused, revoked).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    protocolRejections: new Counter({
      name: 'meshtrain_protocol_rejections_total',
      help: 'Frames rejected on agent connections, by error code; each closed its connection.',
      labelNames: ['code'],
      registers: [registry],
    }),
    collectiveRuns: new Counter({
      name: 'meshtrain_collective_runs_total',
      help: 'Collective runs by op and outcome (ok, failed).',
      labelNames: ['op', 'outcome'],
      registers: [registry],
    }),
    collectiveSeconds: new Histogram({
      name: 'meshtrain_collective_duration_seconds',
      help: 'Wall time of one collective (slowest rank), by op.',
      labelNames: ['op'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60],
      registers: [registry],
    }),
    relayBytes: new Counter({
      name: 'meshtrain_relay_bytes_total',
      help: 'Payload bytes the relay passed between agents that cannot be dialled and their peers, by relayed node and direction (to_node: from its dialer; from_node: back).',
      labelNames: ['node', 'direction'],
      registers: [registry],
    }),
    relayLinks: new Counter({
      name: 'meshtrain_relay_links_total',
      help: 'Relayed peer links asked of the relay, by outcome (spliced, unauthorized, unavailable: target not attached or silent).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
  };
}

/** Jobs whose per-job series are kept; older jobs' series are dropped (common/job-series.ts). */
const KEEP_JOBS = 20;

/**
 * Training metrics from the coordinator's event bus: rank 0's global figures per step (progress), every rank's
 * breakdown of it (rank), merged checkpoints and attempts. Per-rank figures are aggregated over the job's ranks
 * (histograms), except the data-parallel link bandwidth, which is per link so the slow one can be named.
 */
export function bindJobMetrics(metrics: CoordinatorMetrics, bus: EventBus, keepJobs = KEEP_JOBS): void {
  const registers = [metrics.registry];
  const at = new JobSeries(keepJobs);
  const steps = new Counter({
    name: 'meshtrain_job_steps_total',
    help: 'Training steps completed, by job (steps re-run after a resume from a checkpoint count again).',
    labelNames: ['job'],
    registers,
  });
  const stepSeconds = new Histogram({
    name: 'meshtrain_job_step_duration_seconds',
    help: "Wall time of one training step as world rank 0 saw it, by job.",
    labelNames: ['job'],
    buckets: STEP_BUCKETS,
    registers,
  });
  const phaseSeconds = new Histogram({
    name: 'meshtrain_job_step_phase_seconds',
    help: 'Time of each step spent per phase, one observation per rank and step, by job and phase (compute: forward, backward, optimizer; allreduce: gradient rings and world sums, waiting included; bubble: idle inside the 1F1B pipeline section; wait: the rest).',
    labelNames: ['job', 'phase'],
    buckets: PHASE_BUCKETS,
    registers,
  });
  const tokensPerSecond = new Gauge({ name: 'meshtrain_job_tokens_per_second', help: "Global training throughput of the job's last step, by job.", labelNames: ['job'], registers });
  const loss = new Gauge({
    name: 'meshtrain_job_loss',
    help: 'Last mean training loss over the global batch (split="train"; with DiLoCo over world rank 0\'s own replica\'s batch) and last held-out loss (split="eval"), by job.',
    labelNames: ['job', 'split'],
    registers,
  });
  const bubble = new Gauge({
    name: 'meshtrain_job_pipeline_bubble_ratio',
    help: "Idle share of the last step's pipeline section across stages (1 − mean stage busy time / slowest stage's section), by job.",
    labelNames: ['job'],
    registers,
  });
  const allreduceBytes = new Counter({
    name: 'meshtrain_job_allreduce_bytes_total',
    help: "Bytes sent over the job's data-parallel ring links by gradient all-reduces, summed over ranks, by job.",
    labelNames: ['job'],
    registers,
  });
  const linkBusbw = new Gauge({
    name: 'meshtrain_job_link_busbw_bytes_per_second',
    help: "Bandwidth of each data-parallel ring link in the job's last step (bytes rank from_rank sent to_rank / its all-reduce time; equals NCCL's busbw), by job and link.",
    labelNames: ['job', 'from_rank', 'to_rank'],
    registers,
  });
  const attempts = new Counter({ name: 'meshtrain_job_attempts_total', help: 'Attempts started, by job (more than 1: the job was re-planned or resumed).', labelNames: ['job'], registers });
  const checkpointSeconds = new Histogram({
    name: 'meshtrain_checkpoint_merge_duration_seconds',
    help: "Time the coordinator took to merge a step's shard checkpoints into the canonical, layout-free checkpoint.",
    buckets: CHECKPOINT_BUCKETS,
    registers,
  });
  const checkpointBytes = new Gauge({
    name: 'meshtrain_checkpoint_size_bytes',
    help: "Size of the job's latest canonical checkpoint (every file of it), by job.",
    labelNames: ['job'],
    registers,
  });

  bus.on('progress', ({ jobId: job, progress: p }) => {
    steps.inc(at.labels(steps, { job }));
    stepSeconds.observe(at.labels(stepSeconds, { job }), p.stepMs / 1000);
    tokensPerSecond.set(at.labels(tokensPerSecond, { job }), p.tokensPerS);
    loss.set(at.labels(loss, { job, split: 'train' }), p.loss);
    if (p.evalLoss !== undefined) loss.set(at.labels(loss, { job, split: 'eval' }), p.evalLoss);
    if (p.bubble !== undefined) bubble.set(at.labels(bubble, { job }), p.bubble);
  });
  bus.on('rank', ({ jobId: job, report: r }) => {
    const phases = { compute: r.computeMs, allreduce: r.allreduceMs, bubble: r.bubbleMs, wait: r.waitMs };
    for (const [phase, ms] of Object.entries(phases)) phaseSeconds.observe(at.labels(phaseSeconds, { job, phase }), ms / 1000);
    if (!r.link) return;
    allreduceBytes.inc(at.labels(allreduceBytes, { job }), r.link.bytes);
    if (r.link.ms > 0) linkBusbw.set(at.labels(linkBusbw, { job, from_rank: String(r.rank), to_rank: String(r.link.toRank) }), r.link.bytes / (r.link.ms / 1000));
  });
  bus.on('checkpoint', ({ jobId: job, bytes, mergeMs }) => {
    checkpointSeconds.observe(mergeMs / 1000);
    checkpointBytes.set(at.labels(checkpointBytes, { job }), bytes);
  });
  bus.on('attempt', ({ jobId: job, phase }) => {
    if (phase === 'started') attempts.inc(at.labels(attempts, { job }));
  });
}
