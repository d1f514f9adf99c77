/**
 * Membership decisions as pure functions of (state, now): who may join, under which identity, and who is dead.
 * The agent hub (agent-hub.ts) carries them out. Tested with tables and an injected clock.
 */
import type { NodeRecord } from '../store/state-store.ts';

export type AdmitDecision =
  | { action: 'refuse'; reason: string }
  | { action: 'revoked'; reason: string } // the id's credential was revoked: refuse, and tell the agent to stop
  | { action: 'new' } // issue a fresh node id and secret
  | { action: 'reclaim'; id: string }; // the agent proved it holds this id's secret

/**
 * An agent that presents a node id must also present that node's secret; otherwise it could take over another
 * agent's identity. One that presents an unknown id (the coordinator lost its state) simply gets a new one. A
 * revoked id is refused whatever secret comes with it: revocation clears the stored hash, and the last secret
 * issued is exactly what a stolen credential would be.
 */
export function decideAdmission(
  claim: { nodeId?: string; secretHash?: string },
  existing: Pick<NodeRecord, 'id' | 'secretHash' | 'status'> | undefined,
): AdmitDecision {
  if (!claim.nodeId) return { action: 'new' };
  if (!existing) return { action: 'new' };
  if (existing.status === 'revoked') {
    return { action: 'revoked', reason: `node id ${claim.nodeId} was revoked by an operator; its secret is no longer accepted` };
  }
  if (!claim.secretHash || claim.secretHash !== existing.secretHash) {
    return { action: 'refuse', reason: `node id ${claim.nodeId} belongs to another agent (secret does not match)` };
  }
  return { action: 'reclaim', id: existing.id };
}

export interface SweepNode {
  id: string;
  status: NodeRecord['status'];
  lastSeenMs: number;
}

/** Alive nodes whose last heartbeat is older than the timeout, each with the reason to record. */
export function findDead(nodes: SweepNode[], nowMs: number, timeoutMs: number): Array<{ id: string; reason: string }> {
  return nodes
    .filter((n) => n.status === 'alive' && nowMs - n.lastSeenMs > timeoutMs)
    .map((n) => ({ id: n.id, reason: `no heartbeat for ${Math.round((nowMs - n.lastSeenMs) / 100) / 10} s (timeout ${timeoutMs / 1000} s)` }));
}
