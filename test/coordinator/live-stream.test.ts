import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import { EventBus } from '../../coordinator/events.ts';
import { FLUSH_MS, LiveStreams, MAX_BUFFERED_BYTES } from '../../coordinator/api/live-stream.ts';

/** Enough of a ServerResponse for the stream: records what is written, and how far behind the reader is. */
class FakeResponse extends EventEmitter {
  chunks: string[] = [];
  writableLength = 0;
  writableEnded = false;
  writeHead(): this {
    return this;
  }
  write(chunk: string): boolean {
    this.chunks.push(chunk);
    return true;
  }
  end(): void {
    this.writableEnded = true;
    this.emit('close');
  }
  events(): string[] {
    return this.chunks.flatMap((c) => /^event: (\S+)/.exec(c)?.[1] ?? []);
  }
}

const sources = { nodes: () => [], jobs: () => [{ id: 'job-1' }], live: (id: string) => ({ jobId: id }), models: () => [], gateways: () => [] };

describe('LiveStreams', () => {
  test('sends a snapshot on connect, metrics at once, and coalesces a burst of rank reports into one live event', async (t) => {
    t.mock.timers.enable({ apis: ['setInterval'] });
    const bus = new EventBus();
    const streams = new LiveStreams(bus, sources);
    const res = new FakeResponse();
    streams.serve(res as unknown as ServerResponse);
    assert.deepEqual(res.events(), ['hello', 'nodes', 'jobs', 'models', 'gateways']);
    res.chunks = [];
    bus.emit('progress', { jobId: 'job-1', attempt: 1, progress: {} as never, rows: [] });
    for (let rank = 0; rank < 8; rank++) bus.emit('rank', { jobId: 'job-1', attempt: 1, nodeId: `n${rank}`, report: {} as never });
    assert.deepEqual(res.events(), ['metrics']);
    t.mock.timers.tick(FLUSH_MS);
    assert.deepEqual(res.events(), ['metrics', 'jobs', 'live']);
    streams.close();
    assert.equal(streams.size, 0);
  });

  test('cuts off a reader that has fallen too far behind, and stops listening for it', (t) => {
    t.mock.timers.enable({ apis: ['setInterval'] });
    const bus = new EventBus();
    const streams = new LiveStreams(bus, sources);
    const res = new FakeResponse();
    streams.serve(res as unknown as ServerResponse);
    res.writableLength = MAX_BUFFERED_BYTES + 1;
    bus.emit('checkpoint', { jobId: 'job-1', checkpoint: { step: 1, attempt: 1, files: {}, createdMs: 0 }, bytes: 1, mergeMs: 0, shards: 1 });
    assert.equal(res.writableEnded, true);
    assert.equal(streams.size, 0);
    const before = res.chunks.length;
    bus.emit('progress', { jobId: 'job-1', attempt: 1, progress: {} as never, rows: [] });
    assert.equal(res.chunks.length, before);
  });
});
