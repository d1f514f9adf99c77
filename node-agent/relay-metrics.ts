/**
 * What relaying costs, seen from one agent (AgentMetrics registers these on its registry): the TCP bytes of the
 * relayed links it opens, framing included, both ways, and whether peers can dial it.
 *
 *   meshtrain_agent_relay_bytes_total{side, direction}  side: 'dialer' (we dialled a relayed successor through the
 *                                                        relay) or 'relayed' (a connection we opened back to the
 *                                                        relay for a predecessor that cannot dial us);
 *                                                        direction: sent or received
 *   meshtrain_agent_relay_served_bytes_total{node, direction}
 *                                                        payload bytes this agent passed on as a group's relay
 *                                                        (agent-relay.ts), by relayed node and direction (to_node,
 *                                                        from_node)
 *   meshtrain_agent_reachable                            1 when the coordinator could dial our peer address, 0 when
 *                                                        our links are relayed, absent until it has checked
 *
 * Bytes are read off the sockets at scrape time (net.Socket's bytesWritten / bytesRead), so counting costs nothing
 * per message; a socket's last bytes are taken when it closes.
 */
import type { Socket } from 'node:net';
import { Counter, Gauge, type Registry } from 'prom-client';

export type RelaySide = 'dialer' | 'relayed';

export class RelayMetrics {
  readonly #bytes: Counter<'side' | 'direction'>;
  readonly #reachable: Gauge;
  readonly #served: Counter<'node' | 'direction'>;
  /** Open relayed sockets and the bytes of each already counted. */
  readonly #open = new Map<Socket, { side: RelaySide; sent: number; received: number }>();

  constructor(registry: Registry) {
    const open = this.#open;
    const take = (socket: Socket) => this.#take(socket);
    this.#bytes = new Counter({
      name: 'meshtrain_agent_relay_bytes_total',
      help: "TCP bytes of this agent's peer links that go through a relay (framing included), by side (dialer: links we dialled to a relayed successor; relayed: links we opened back to the relay for a predecessor that cannot dial us) and direction (sent, received).",
      labelNames: ['side', 'direction'],
      registers: [registry],
      collect() {
        for (const socket of open.keys()) take(socket);
      },
    });
    this.#served = new Counter({
      name: 'meshtrain_agent_relay_served_bytes_total',
      help: 'Payload bytes this agent passed on as the relay of a group (to agents nobody can dial), by relayed node and direction (to_node, from_node).',
      labelNames: ['node', 'direction'],
      registers: [registry],
    });
    this.#reachable = new Gauge({
      name: 'meshtrain_agent_reachable',
      help: "1 when the coordinator could dial this agent's peer address (links to it are direct), 0 when they are relayed.",
      registers: [registry],
    });
  }

  /** Counts the bytes of a relayed link's socket until it closes. */
  track(socket: Socket, side: RelaySide): void {
    if (this.#open.has(socket)) return;
    this.#open.set(socket, { side, sent: 0, received: 0 });
    socket.once('close', () => {
      this.#take(socket);
      this.#open.delete(socket);
    });
  }

  /** Payload bytes passed on by this agent's relay endpoint (agent-relay.ts). */
  served(node: string, direction: 'to_node' | 'from_node', bytes: number): void {
    this.#served.inc({ node, direction }, bytes);
  }

  /** What the coordinator's reachability check found. */
  setReachable(reachable: boolean): void {
    this.#reachable.set(reachable ? 1 : 0);
  }

  #take(socket: Socket): void {
    const s = this.#open.get(socket);
    if (!s) return;
    const sent = socket.bytesWritten, received = socket.bytesRead;
    if (sent > s.sent) this.#bytes.inc({ side: s.side, direction: 'sent' }, sent - s.sent);
    if (received > s.received) this.#bytes.inc({ side: s.side, direction: 'received' }, received - s.received);
    s.sent = sent;
    s.received = received;
  }
}
