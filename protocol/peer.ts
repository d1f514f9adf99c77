/**
 * The data plane: agent ⇄ agent links inside a group. A group has one or more rings (control.ts `group.assign`);
 * in each ring every member dials its successor in that ring, so there is one link per (ring, neighbour pair).
 * The dialing agent says `peer.hello` with the group's token (issued by the coordinator) and the ring; the
 * listener answers `peer.welcome` or closes with UNAUTHORIZED. After that, data messages carry their tensor bytes
 * as a raw attachment frame (never msgpack arrays): collective segments (`ring.data`), link probes
 * (`stream.data`) and point-to-point tensors between pipeline neighbours (`pipe.data`).
 */
import { Type } from '@sinclair/typebox';
import { Attach, Count, Id, Secret, Text, message, messageParser, type MessageOf } from './schema.ts';

/** The ring a group has when its assignment names none: every rank, in rank order. */
export const WORLD_RING = 'world';

/** A ring's id inside its group ('world', 'dp.0', 'pp.1', ...). */
export const RingId = Type.String({ pattern: '^[A-Za-z0-9._-]{1,64}$' });
/** What a point-to-point tensor is, so that sender and receiver agree (e.g. 'fwd:7' for micro-batch 7's activations). */
export const PipeTag = Type.String({ pattern: '^[A-Za-z0-9._:-]{1,64}$' });

/** Largest attachment on a peer link: one pipelined segment, or one point-to-point tensor. */
export const MAX_PEER_ATTACHMENT = 64 * 1024 * 1024;
export const MAX_PEER_FRAME = MAX_PEER_ATTACHMENT + 64 * 1024;

export const peerMessages = {
  /**
   * "I am rank `rank` of group `groupId` (my group rank, not my position in the ring), dialing you as my successor
   * in ring `ring` (absent: 'world'); here is the group's token." Dialer → listener, first.
   */
  'peer.hello': message('peer.hello', {
    protocol: Text(16),
    groupId: Id,
    token: Secret,
    rank: Count(65535),
    ring: Type.Optional(RingId),
  }),
  /** "Token accepted; I am rank `rank`." */
  'peer.welcome': message('peer.welcome', { rank: Count(65535) }),
  /**
   * "Prove that this port is the agent that said hello to me": the coordinator's reachability check, sent first
   * on a link of its own instead of a `peer.hello`. Answered by `peer.probed`, then the link is closed.
   */
  'peer.probe': message('peer.probe', { challenge: Secret }),
  /** "HMAC-SHA256(my hello's reachKey, your challenge), hex." */
  'peer.probed': message('peer.probed', { proof: Type.String({ pattern: '^[0-9a-f]{64}$' }) }),
  /**
   * One segment of a ring collective. `seq` numbers the collective on this group; `phase` 0 means "add these
   * values into yours" (reduce-scatter), 1 means "these are final values, copy them" (all-gather, broadcast);
   * `offset` and `count` are in float32 elements of the whole buffer. `wire` says how the `count` values are
   * encoded in the attachment (training.gradientWire, node-agent/collectives/wire.ts): absent, float32
   * (`count * 4` bytes, as before the field existed); 'bf16' or 'f16', 16-bit little-endian (`count * 2` bytes),
   * which the receiver widens to float32 before adding or copying. Every segment of one collective uses the same.
   */
  'ring.data': message('ring.data', {
    seq: Count(2 ** 52),
    phase: Type.Union([Type.Literal(0), Type.Literal(1)]),
    hop: Count(65535), // how many links this segment has crossed in this phase, 0 on the first send
    offset: Count(2 ** 32),
    count: Count(2 ** 28),
    wire: Type.Optional(Type.Union([Type.Literal('bf16'), Type.Literal('f16')])),
    attach: Attach(MAX_PEER_ATTACHMENT),
  }),
  /** Raw bytes for link-capacity measurements; the receiver counts and drops them. */
  'stream.data': message('stream.data', { seq: Count(2 ** 52), attach: Attach(MAX_PEER_ATTACHMENT) }),
  /**
   * "Here is the tensor you will ask for under `tag`": float32 values (little-endian, `attach / 4` of them) sent
   * to our successor on this link's ring, e.g. a pipeline stage's activations or their gradients. A tag is used
   * once until the receiver has taken it; a second message under a tag still unreceived is refused.
   */
  'pipe.data': message('pipe.data', { tag: PipeTag, attach: Attach(MAX_PEER_ATTACHMENT) }),
};

export const parsePeerMessage = messageParser('peer', peerMessages);
export type PeerMessage = MessageOf<typeof peerMessages>;
export type RingData = MessageOf<{ a: (typeof peerMessages)['ring.data'] }>;
export type PipeData = MessageOf<{ a: (typeof peerMessages)['pipe.data'] }>;
