/**
 * The data plane: agent ⇄ agent links inside a group (a ring). The dialing agent says `peer.hello` with the
 * group's token (issued by the coordinator); the listener answers `peer.welcome` or closes with UNAUTHORIZED.
 * After that, data messages carry their tensor bytes as a raw attachment frame (never msgpack arrays).
 */
import { Type } from '@sinclair/typebox';
import { Attach, Count, Id, Secret, Text, message, messageParser, type MessageOf } from './schema.ts';

/** Largest attachment on a peer link: one pipelined segment. */
export const MAX_PEER_ATTACHMENT = 64 * 1024 * 1024;
export const MAX_PEER_FRAME = MAX_PEER_ATTACHMENT + 64 * 1024;

export const peerMessages = {
  /** "I am rank `rank` of group `groupId`; here is the group's token." Dialer → listener, first. */
  'peer.hello': message('peer.hello', { protocol: Text(16), groupId: Id, token: Secret, rank: Count(65535) }),
  /** "Token accepted; I am rank `rank`." */
  'peer.welcome': message('peer.welcome', { rank: Count(65535) }),
  /**
   * One segment of a ring collective. `seq` numbers the collective on this group; `phase` 0 means "add these
   * values into yours" (reduce-scatter), 1 means "these are final values, copy them" (all-gather, broadcast);
   * `offset` and `count` are in float32 elements of the whole buffer.
   */
  'ring.data': message('ring.data', {
    seq: Count(2 ** 52),
    phase: Type.Union([Type.Literal(0), Type.Literal(1)]),
    hop: Count(65535), // how many links this segment has crossed in this phase, 0 on the first send
    offset: Count(2 ** 32),
    count: Count(2 ** 28),
    attach: Attach(MAX_PEER_ATTACHMENT),
  }),
  /** Raw bytes for link-capacity measurements; the receiver counts and drops them. */
  'stream.data': message('stream.data', { seq: Count(2 ** 52), attach: Attach(MAX_PEER_ATTACHMENT) }),
};

export const parsePeerMessage = messageParser('peer', peerMessages);
export type PeerMessage = MessageOf<typeof peerMessages>;
export type RingData = MessageOf<{ a: (typeof peerMessages)['ring.data'] }>;
