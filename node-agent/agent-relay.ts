/**
 * This agent as a group's relay: when the coordinator picks it (coordinator/cluster/groups.ts: a reachable member,
 * or an idle reachable agent, for a group with members nobody can dial), its assignment carries `relayFor` (or,
 * not a member, it gets `relay.grant`: the group's relay ticket and the relayed members), and its peer port's /ws/relay then runs the same endpoint as the coordinator's relay
 * (common/relay-endpoint.ts): a dialer with the ticket for one of those targets is held, the coordinator is asked
 * (`relay.request`, over our control channel: the target has no connection to us) to send the target `relay.open`
 * naming our relay URL with a one-time session key, the target dials back with it, and the two are spliced. 401 for
 * a missing or wrong ticket or key, as on the coordinator; we never see the group token of a link we relay (though
 * as a member we hold it: relaying for our own group adds no one who could not link already).
 *
 * What it carried is sent to the coordinator (`relay.stats`, with heartbeats while it relays) for the nodes API,
 * and counted in meshtrain_agent_relay_served_bytes_total.
 */
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { RelayEndpoint, sha256 } from '../common/relay-endpoint.ts';
import type { Logger } from '../common/log.ts';
import type { AgentMessage, GroupAssign } from '../protocol/control.ts';
import type { RelayMetrics } from './relay-metrics.ts';

type RelayStatsMessage = Extract<AgentMessage, { type: 'relay.stats' }>;

/** The agent's control channel to the coordinator, as far as the relay needs it. */
interface Control {
  readonly isOpen: boolean;
  send(msg: AgentMessage): void;
}

export interface AgentRelayOptions {
  log: Logger;
  /** The control channel now (null between connections). */
  control(): Control | null;
  /** Where relayed payload bytes are counted (meshtrain_agent_relay_served_bytes_total). */
  metrics?: Pick<RelayMetrics, 'served'> | undefined;
}

export class AgentRelay {
  readonly #endpoint: RelayEndpoint;
  /** Per group this agent relays for: the sha256 of its ticket and the members it lets dialers through to. */
  readonly #grants = new Map<string, { hash: Buffer; targets: ReadonlySet<string> }>();
  readonly #opts: AgentRelayOptions;

  constructor(opts: AgentRelayOptions) {
    this.#opts = opts;
    this.#endpoint = new RelayEndpoint({
      via: 'agent',
      codes: { unauthorized: 'AGT_ERR_RELAY_REFUSED', unavailable: 'AGT_ERR_RELAY_UNAVAILABLE' },
      authorize: (ticket, to) => this.#authorize(ticket, to),
      canReach: () => true, // the coordinator knows; a target it cannot reach never calls back (503 in time)
      open: (to, s) => {
        const c = opts.control();
        if (!c?.isOpen) throw new Error('this relay has lost its control connection');
        c.send({ type: 'relay.request', to, ...s });
      },
      log: opts.log,
      onBytes: (node, direction, n) => opts.metrics?.served(node, direction, n),
    });
  }

  /** Takes up (or, without `relayFor`, leaves alone) the relaying an assignment asks of us. */
  assign(assign: Pick<GroupAssign, 'groupId' | 'relayFor'>): void {
    this.#grants.delete(assign.groupId);
    if (!assign.relayFor) return;
    this.#grants.set(assign.groupId, { hash: sha256(assign.relayFor.ticket), targets: new Set(assign.relayFor.targets) });
    this.#opts.log.info(`relaying group ${assign.groupId}'s links to ${assign.relayFor.targets.join(', ')}`);
  }

  /** The group is over: its ticket no longer lets anyone through (open links end with the group's own links). */
  release(groupId: string): void {
    this.#grants.delete(groupId);
  }

  /** Drops every grant (the control connection is gone: the coordinator re-forms groups anyway). */
  /** The last report sent and on which control connection (a new connection gets the figures again). */
  #lastSent: { control: Control; text: string } | null = null;

  releaseAll(): void {
    this.#grants.clear();
  }

  /** Cumulative figures per node relayed, for `relay.stats`; null when this agent never relayed. */
  report(): RelayStatsMessage | null {
    const links = this.#endpoint.allStats().map(({ via: _via, dialerLegRttMs, nodeLegRttMs, relayedRttMs, ...s }) => ({
      ...s,
      ...(dialerLegRttMs !== null ? { dialerLegRttMs } : {}),
      ...(nodeLegRttMs !== null ? { nodeLegRttMs } : {}),
      ...(relayedRttMs !== null ? { relayedRttMs } : {}),
    }));
    return links.length ? { type: 'relay.stats', links } : null;
  }

  /**
   * Sends `report()` on `control` (with every heartbeat) when there is anything to report and it differs from what
   * this connection was last sent: figures are cumulative, so an unchanged report says nothing new.
   */
  reportTo(control: Control): void {
    const r = this.report();
    if (!r) return;
    const text = JSON.stringify(r.links);
    if (control === this.#lastSent?.control && text === this.#lastSent.text) return;
    this.#lastSent = { control, text };
    control.send(r);
  }

  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.#endpoint.handleUpgrade(req, socket, head);
  }

  close(): void {
    this.#endpoint.close('agent shutting down');
  }

  #authorize(ticket: string, to: string): string | undefined {
    const hash = sha256(ticket);
    for (const [groupId, g] of this.#grants) if (timingSafeEqual(hash, g.hash) && g.targets.has(to)) return groupId;
    return undefined;
  }
}

