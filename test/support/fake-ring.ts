/**
 * In-memory ring links for unit tests of the collectives: each send copies its payload (as the kernel would)
 * and delivers it to the successor's Ring on a later macrotask, in order. `faults` can drop a link.
 */
import { Ring, type RingInLink, type StreamData } from '../../node-agent/collectives/ring.ts';
import type { RingData } from '../../protocol/peer.ts';
import { ConnectionClosedError } from '../../protocol/connection.ts';

/** A one-way link delivering `M` messages to `target.receive` (a Ring, or a mailbox for pipe.data). */
export class FakeLink<M extends object = RingData | StreamData> implements RingInLink {
  target: { receive(msg: M, payload: Buffer): void } | null = null;
  queue: Array<{ msg: M; payload: Buffer }> = [];
  paused = false;
  scheduled = false;
  closed = false;
  onError: (err: Error) => void = () => {};
  readonly writable = true;

  send(msg: M, payload: Uint8Array): void {
    if (this.closed) throw new ConnectionClosedError(1006, 'fake link cut');
    this.queue.push({ msg: { ...msg }, payload: Buffer.from(payload) });
    this.#schedule();
  }
  whenWritable(): Promise<void> {
    return Promise.resolve();
  }
  flushed(): Promise<void> {
    return Promise.resolve();
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
    this.#schedule();
  }
  cut(): void {
    this.closed = true;
    this.queue = [];
  }
  #schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      while (!this.paused && this.queue.length > 0) {
        const { msg, payload } = this.queue.shift()!;
        try {
          this.target!.receive(msg, payload);
        } catch (err) {
          this.onError(err as Error);
          return;
        }
      }
    });
  }
}

export function fakeRing(size: number, segmentBytes: number, idleTimeoutMs = 5000): { rings: Ring[]; links: FakeLink[] } {
  // links[r] carries r → r+1; it is r's out link and (r+1)'s in link.
  const links = Array.from({ length: size }, () => new FakeLink());
  const rings = Array.from(
    { length: size },
    (_, r) => new Ring(r, size, size > 1 ? links[r]! : null, size > 1 ? links[(r - 1 + size) % size]! : null, { segmentBytes, idleTimeoutMs }),
  );
  links.forEach((l, r) => {
    l.target = rings[(r + 1) % size]!;
    l.onError = (err) => rings[(r + 1) % size]!.abort(err);
  });
  return { rings, links };
}
