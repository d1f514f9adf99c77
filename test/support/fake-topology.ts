/**
 * Every ring and pipeline mailbox of a data × pipeline × tensor layout (protocol/layout.ts), in memory: each ring
 * is a fake-ring.ts ring, each ring of two also carries a mailbox pair whose messages are delivered on a later
 * macrotask, in order, as a socket would. `sourceOf(rank)` is what agent.ts's Group offers a job (ringOf,
 * mailbox), so trainer tests run every rank of any layout in one process, each rank with its own compute worker.
 */
import { LinkMailbox } from '../../node-agent/collectives/mailbox.ts';
import type { Ring } from '../../node-agent/collectives/ring.ts';
import type { RingSource } from '../../node-agent/trainer/job-runner.ts';
import { jobRings, worldSize, type ParallelLayout } from '../../protocol/layout.ts';
import type { PipeData } from '../../protocol/peer.ts';
import { FakeLink, fakeRing } from './fake-ring.ts';

export interface FakeTopology {
  sourceOf(rank: number): RingSource;
  /** Aborts every ring and mailbox (as a released group does). */
  abortAll(err: Error): void;
}

export function fakeTopology(layout: ParallelLayout, idleTimeoutMs = 20_000, segmentBytes = 4096): FakeTopology {
  const rings = new Map<string, Map<number, Ring>>(); // ring id → world rank → its Ring
  const mailboxes = new Map<string, Map<number, LinkMailbox>>();
  for (const spec of jobRings(layout)) {
    const made = fakeRing(spec.members.length, segmentBytes, idleTimeoutMs).rings;
    rings.set(spec.id, new Map(spec.members.map((rank, i) => [rank, made[i]!])));
    if (spec.members.length === 2) {
      const [a, b] = spec.members as [number, number];
      const ab = new FakeLink<PipeData>(), ba = new FakeLink<PipeData>();
      const ma = new LinkMailbox(ab, ba, { label: spec.id }), mb = new LinkMailbox(ba, ab, { label: spec.id });
      ab.target = mb;
      ba.target = ma;
      mailboxes.set(spec.id, new Map([[a, ma], [b, mb]]));
    }
  }
  const pick = <T>(m: Map<string, Map<number, T>>, id: string, rank: number, what: string): T => {
    const v = m.get(id)?.get(rank);
    if (!v) throw new Error(`rank ${rank} has no ${what} '${id}'`);
    return v;
  };
  return {
    sourceOf(rank) {
      if (rank < 0 || rank >= worldSize(layout)) throw new RangeError(`rank ${rank} is outside the layout`);
      return { ringOf: (id) => pick(rings, id, rank, 'ring'), mailbox: (id) => pick(mailboxes, id, rank, 'mailbox') };
    },
    abortAll(err) {
      for (const m of rings.values()) for (const r of m.values()) r.abort(err);
      for (const m of mailboxes.values()) for (const b of m.values()) b.abort(err);
    },
  };
}
