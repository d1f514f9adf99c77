/**
 * Which agent relays a group's links to its members nobody can dial (groups.ts asks, with `--relay agent`, the
 * default). Why an agent rather than the coordinator: a coordinator relay sends every relayed byte of every group
 * through the coordinator's one link, which also carries the API, heartbeats and artifacts, and adds a round trip to
 * wherever the coordinator runs; an agent relay keeps training traffic among the training machines (its own links
 * are the group's anyway), spreads relaying per group, and leaves the coordinator's link free of training traffic.
 * groups.ts asks among the members first (a member relay adds no machine to the group's traffic), then among idle
 * agents (in no live group, relaying for none); the coordinator stays the fallback: every agent reaches it by
 * construction.
 */

/** A member as `pickRelayAgent` sees it. */
export interface RelayCandidate {
  nodeId: string;
  reach?: { state: string; probeRttMs?: number } | undefined;
  cores: number;
}

/**
 * The member that should relay for the group's unreachable members: one the coordinator's probe reached (so it can
 * be dialled, and was measured), with the lowest probe round trip, the most cores on a tie; undefined when none.
 * Agents report no link bandwidth of their own (the planner's link figure is cluster-wide, planner-feedback.ts), so
 * the probe's round trip is the per-agent link measurement there is.
 */
export function pickRelayAgent<C extends RelayCandidate>(candidates: readonly C[]): C | undefined {
  const dialable = candidates.filter((c) => c.reach?.state === 'direct' && c.reach.probeRttMs !== undefined);
  dialable.sort((a, b) => a.reach!.probeRttMs! - b.reach!.probeRttMs! || b.cores - a.cores);
  return dialable[0];
}

