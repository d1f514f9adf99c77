/**
 * The coordinator's relay (/ws/relay): links to agents that nobody can dial (reachability.ts found them so, or they
 * said --relay-only) go through here when no agent of their group can relay them (groups.ts picks an agent relay
 * when it can: common/relay-endpoint.ts runs on both). The endpoint itself, its admission (a group's relay ticket
 * for dialers, a one-time session key for the target's callback; 401 otherwise), pairing and splice, is
 * common/relay-endpoint.ts; here the coordinator tells the target to call back (`relay.open` on its control
 * channel) and counts in its Prometheus metrics.
 *
 * It also keeps what agent relays report (`relay.stats`, every heartbeat while they relay), so that the nodes API
 * shows a relayed node's figures whoever relays it: `stats(nodeId)` is the coordinator's own figures for a node it
 * relayed last, or the agent relay's when an agent reported later.
 */
import { RelayEndpoint, RELAY_PATH, type RelayStats } from '../../common/relay-endpoint.ts';
import type { Logger } from '../../common/log.ts';
import type { AgentMessage, CoordinatorMessage } from '../../protocol/control.ts';
import type { CoordinatorMetrics } from '../metrics.ts';

export { RELAY_PATH, type RelayStats };

/** What the relay needs of the agent hub: is a node attached, and a way to tell it something. */
export interface RelayTargets {
  isConnected(nodeId: string): boolean;
  send(nodeId: string, msg: CoordinatorMessage): void;
}

export interface RelayOptions {
  targets: RelayTargets;
  /** The group a relay ticket belongs to, when it lets its holder through to node `to`; undefined otherwise. */
  ticketGroup(ticket: string, to: string): string | undefined;
  log: Logger;
  metrics?: Pick<CoordinatorMetrics, 'relayBytes' | 'relayLinks'>;
  /** How long a dialer waits for the target to open its side (default 5 s). */
  callbackTimeoutMs?: number;
  /** How often each open link's legs are pinged (default 5 s). */
  rttEveryMs?: number;
  /** Dialers waiting for their target at once beyond which new ones get 503 (default 256). */
  maxPending?: number;
}

type AgentRelayed = Extract<AgentMessage, { type: 'relay.stats' }>['links'][number];

export class CoordinatorRelay {
  readonly #endpoint: RelayEndpoint;
  /** Per relayed node: the figures its latest agent relay reported, that relay's name, and when. */
  readonly #agentStats = new Map<string, { stats: RelayStats; atMs: number }>();
  /** Per relayed node: when the coordinator last spliced a link to it. */
  readonly #ownAtMs = new Map<string, number>();

  constructor(opts: RelayOptions) {
    const { metrics } = opts;
    this.#endpoint = new RelayEndpoint({
      via: 'coordinator',
      codes: { unauthorized: 'CRD_ERR_UNAUTHORIZED', unavailable: 'CRD_ERR_RELAY_UNAVAILABLE' },
      authorize: opts.ticketGroup,
      canReach: (to) => opts.targets.isConnected(to),
      open: (to, s) => opts.targets.send(to, { type: 'relay.open', ...s }),
      log: opts.log,
      onLink: (outcome) => metrics?.relayLinks.inc({ outcome }),
      onBytes: (node, direction, n) => {
        this.#ownAtMs.set(node, Date.now());
        metrics?.relayBytes.inc({ node, direction }, n);
      },
      ...(opts.callbackTimeoutMs !== undefined ? { callbackTimeoutMs: opts.callbackTimeoutMs } : {}),
      ...(opts.rttEveryMs !== undefined ? { rttEveryMs: opts.rttEveryMs } : {}),
      ...(opts.maxPending !== undefined ? { maxPending: opts.maxPending } : {}),
    });
  }

  /** A relayed node's figures from whichever relay carried its links last; null for one never relayed. */
  stats(nodeId: string): RelayStats | null {
    const own = this.#endpoint.stats(nodeId);
    const agent = this.#agentStats.get(nodeId);
    if (agent && (!own || agent.atMs >= (this.#ownAtMs.get(nodeId) ?? 0))) return { ...agent.stats };
    return own;
  }

  /** What agent relay `relayName` reported (`relay.stats`): cumulative figures per node it relays. */
  reportAgentRelay(relayName: string, links: readonly AgentRelayed[]): void {
    const now = Date.now();
    for (const { nodeId, dialerLegRttMs, nodeLegRttMs, relayedRttMs, ...counts } of links) {
      const figures = { ...counts, dialerLegRttMs: dialerLegRttMs ?? null, nodeLegRttMs: nodeLegRttMs ?? null, relayedRttMs: relayedRttMs ?? null };
      const prev = this.#agentStats.get(nodeId);
      // A report that carried nothing new keeps the older time, so a busier relay elsewhere is not hidden by it.
      const changed = !prev || prev.stats.via !== relayName || prev.stats.bytesToNode !== figures.bytesToNode || prev.stats.bytesFromNode !== figures.bytesFromNode;
      this.#agentStats.set(nodeId, { stats: { via: relayName, ...figures }, atMs: changed ? now : prev.atMs });
    }
  }

  /** An upgrade request for RELAY_PATH: a dialer (`?to=NODE`) or a target calling back (`?session=S`). */
  handleUpgrade(...args: Parameters<RelayEndpoint['handleUpgrade']>): void {
    this.#endpoint.handleUpgrade(...args);
  }

  close(): void {
    this.#endpoint.close('coordinator shutting down');
  }
}
