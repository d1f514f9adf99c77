/**
 * What the API shows of nodes and jobs, defined once: GET /api/nodes and GET /api/jobs (routes/) and the live
 * stream's snapshots (live-stream.ts) call the same functions, so a dashboard that loads a page and then follows
 * the stream never sees two shapes of one thing.
 */
import type { AgentHub, NodeView } from '../cluster/agent-hub.ts';
import type { CoordinatorRelay, RelayStats } from '../cluster/relay.ts';
import type { JobRunner, NodeRole } from '../jobs/runner.ts';
import type { JobRecord, JobStore } from '../store/job-store.ts';

/**
 * An agent with what it does now: its part in a running job (null when idle), whether it holds that job back, and
 * what relaying its links has cost (null when none ever was: `reach` says whether it is dialled or relayed).
 */
export interface NodeWithRole extends NodeView {
  role: NodeRole | null;
  straggler: boolean;
  relayStats: RelayStats | null;
}

/**
 * `reach.relay` of a relayed node names who carried its links last (relayStats.via: 'coordinator' or the relay
 * agent's name, groups.ts picks per group); before any relayed link, the reachability check's 'coordinator'.
 */
export function nodeViews(hub: AgentHub, runner: JobRunner, relay?: Pick<CoordinatorRelay, 'stats'>): NodeWithRole[] {
  const roles = runner.roles(), slow = runner.stragglers();
  return hub.views().map((n) => {
    const relayStats = relay?.stats(n.id) ?? null;
    const reach = n.reach?.state === 'relayed' && relayStats ? { ...n.reach, relay: relayStats.via } : n.reach;
    return { ...n, ...(reach ? { reach } : {}), role: roles.get(n.id) ?? null, straggler: slow.has(n.id), relayStats };
  });
}

/** A job in a list: without its spec (long) and plan (its own endpoint), with the step count the spec asks for. */
export type JobSummary = Omit<JobRecord, 'spec' | 'plan'> & { totalSteps: number };

export function jobSummaries(jobs: JobStore): JobSummary[] {
  return jobs.list().map(({ spec, plan: _plan, ...summary }) => ({ ...summary, totalSteps: spec.training.steps }));
}
