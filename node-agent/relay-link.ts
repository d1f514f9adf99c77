/**
 * This agent's side of a relay (the coordinator's, coordinator/cluster/relay.ts, or an agent relay's,
 * agent-relay.ts, when `relay.open` names its URL) when nobody can dial it: on
 * `relay.open` it opens the link itself, outbound (so NAT lets it through), and hands the socket to the peer
 * server's accept path, where the dialer's `peer.hello` is checked as on a direct link.
 */
import WebSocket from 'ws';
import type { Socket } from 'node:net';
import type { Logger } from '../common/log.ts';
import { MAX_PEER_FRAME } from '../protocol/peer.ts';
import { clientOptions } from '../protocol/ws-options.ts';
import type { PeerServer } from './peer-server.ts';
import { relayUrlOn } from '../common/relay-endpoint.ts';


/** Opens our side of relay session `session` with its one-time `key` and accepts it as an inbound peer link. */
export function openRelayedLink(opts: {
  controlUrl: string;
  session: string;
  key: string;
  groupId: string;
  /** The relay's URL when it is an agent relay; absent: the coordinator's, on `controlUrl`. */
  relayUrl?: string | undefined;
  peers: PeerServer;
  log: Logger;
  ca?: readonly string[] | undefined;
  onSocket?(socket: Socket): void;
}): void {
  const url = new URL(opts.relayUrl ?? relayUrlOn(opts.controlUrl));
  url.searchParams.set('session', opts.session);
  const ws = new WebSocket(url, {
    ...clientOptions(MAX_PEER_FRAME),
    handshakeTimeout: 10_000,
    headers: { authorization: `Bearer ${opts.key}` },
    ...(opts.ca ? { ca: [...opts.ca] } : {}),
  });
  ws.on('error', (err) => opts.log.warn(`relayed link for group ${opts.groupId} (session ${opts.session}): ${err.message}`));
  ws.once('upgrade', (res) => opts.onSocket?.(res.socket));
  ws.once('open', () => opts.peers.acceptRelayed(ws, `relay session ${opts.session} (group ${opts.groupId})`));
}
