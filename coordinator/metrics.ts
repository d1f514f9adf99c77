/**
 * Prometheus metrics of the coordinator (GET /metrics). One registry per coordinator instance, so tests can run
 * several in one process. Names follow Prometheus conventions: `_total` for counters, units in the name.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface CoordinatorMetrics {
  registry: Registry;
  nodes: Gauge<'status'>;
  agentConnections: Gauge;
  heartbeats: Counter;
  joins: Counter<'outcome'>;
  protocolRejections: Counter<'code'>;
  collectiveRuns: Counter<'op' | 'outcome'>;
  collectiveSeconds: Histogram<'op'>;
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
      help: 'Known agents by status (alive, dead, left).',
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
      help: 'Agent hellos by outcome (new, reclaimed, unauthorized, version_mismatch, refused).',
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
  };
}
