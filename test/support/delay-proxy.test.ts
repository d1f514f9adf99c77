/** The delaying TCP proxy (test/support/delay-proxy.ts) against real servers on loopback. */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import { DelayProxy } from './delay-proxy.ts';

/** A server on loopback whose every connection is handed to `onSocket`; closed (with its sockets) by `close`. */
async function server(onSocket: (s: Socket) => void): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const srv: Server = createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('error', () => {});
    onSocket(s);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    port: (srv.address() as { port: number }).port,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => srv.close(r));
    },
  };
}

async function dial(port: number): Promise<Socket> {
  const s = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
  s.setNoDelay(true);
  await once(s, 'connect');
  return s;
}

/** Round trips of one small message through `port` to an echo server, in ms. */
async function pings(port: number, n: number): Promise<number[]> {
  const s = await dial(port);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    s.write('ping');
    let got = '';
    while (got.length < 4) got += ((await once(s, 'data')) as [Buffer])[0].toString();
    out.push(performance.now() - t0);
  }
  s.destroy();
  return out;
}

describe('a delaying TCP proxy', () => {
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  test('a round trip through it takes the direct round trip plus twice the one-way delay', async () => {
    const echo = await server((s) => s.pipe(s));
    cleanups.push(echo.close);
    const proxy = await DelayProxy.listen({ targetPort: echo.port, delayMs: 50 });
    cleanups.push(() => proxy.close());
    // The fastest of several: a busy machine only ever adds to a round trip (scheduling), never takes away.
    const direct = Math.min(...(await pings(echo.port, 5)));
    const delayed = Math.min(...(await pings(proxy.port, 9)));
    const gained = delayed - direct;
    assert.ok(gained >= 99, `a round trip gained ${gained.toFixed(1)} ms, want ≥ 100 ms (timer granularity aside)`);
    assert.ok(gained <= 150, `a round trip gained ${gained.toFixed(1)} ms, want ≈ 100 ms`);
  });

  test('throughput is not capped by the delay: it keeps reading while chunks wait, and delivers every byte in order', async () => {
    const total = 48 * 1024 * 1024;
    const hash = createHash('sha256');
    let received = 0;
    const done = new Promise<void>((resolve) => {
      void server((s) => {
        s.on('data', (b: Buffer) => {
          hash.update(b);
          received += b.length;
        });
        s.on('end', () => (s.end(), resolve()));
      }).then((sink) => {
        cleanups.push(sink.close);
        void start(sink.port);
      });
    });
    const sent = createHash('sha256');
    let t0 = 0;
    async function start(port: number): Promise<void> {
      const proxy = await DelayProxy.listen({ targetPort: port, delayMs: 50 });
      cleanups.push(() => proxy.close());
      const s = await dial(proxy.port);
      t0 = performance.now();
      const block = Buffer.alloc(1024 * 1024);
      for (let i = 0; i < total / block.length; i++) {
        block.fill(i & 0xff);
        block.writeUInt32LE(i, 0);
        sent.update(block);
        if (!s.write(Buffer.from(block))) await once(s, 'drain');
      }
      s.end();
    }
    await done;
    const seconds = (performance.now() - t0) / 1000;
    assert.equal(received, total);
    assert.equal(hash.digest('hex'), sent.digest('hex'), 'the bytes arrive intact and in order');
    // A relay that waited out the delay per chunk would need ≥ 48 MB / 64 KB × 50 ms = 37 s; the line needs the
    // 50 ms once, plus the copying (about a second on a busy 2-core machine; 10 s leaves room for a very busy one).
    assert.ok(seconds < 10, `48 MB took ${seconds.toFixed(2)} s through a 50 ms delay line`);
  });

  test('a receiver that stops reading pushes back on the sender: the proxy holds at most its buffer, then catches up', async () => {
    let far: Socket | undefined;
    let received = 0;
    const sink = await server((s) => {
      far = s;
      s.pause(); // reads nothing until told
      s.on('data', (b: Buffer) => (received += b.length));
    });
    cleanups.push(sink.close);
    const maxBufferedBytes = 1024 * 1024;
    const proxy = await DelayProxy.listen({ targetPort: sink.port, delayMs: 5, maxBufferedBytes });
    cleanups.push(() => proxy.close());
    const s = await dial(proxy.port);
    // Write until the sender's socket refuses more and stays refused for a while: backpressure reached it.
    let accepted = 0;
    const block = Buffer.alloc(256 * 1024, 7);
    for (;;) {
      if (s.write(block)) {
        accepted += block.length;
        continue;
      }
      accepted += block.length;
      const drained = await Promise.race([once(s, 'drain').then(() => true), new Promise((r) => setTimeout(r, 500, false))]);
      if (!drained) break;
      assert.ok(accepted < 256 * 1024 * 1024, 'the sender was never pushed back');
    }
    // What the sender got rid of sits in kernel buffers (both hops' send and receive queues) and the proxy's line.
    assert.ok(accepted < 64 * 1024 * 1024, `${accepted} bytes accepted with nobody reading`);
    assert.ok(proxy.bytes.upstream <= accepted);
    far!.resume();
    s.end();
    const deadline = Date.now() + 10_000;
    while (received < accepted && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.equal(received, accepted, 'every byte arrives once the receiver reads again');
    assert.equal(proxy.bytes.upstream, accepted, 'the proxy counts what it delivered');
  });

  test('a half-close travels behind the data, delayed like it, and the reply still comes back', async () => {
    const srv = await server((s) => {
      let got = '';
      s.on('data', (b: Buffer) => (got += b.toString()));
      s.on('end', () => s.end(`got ${got}`)); // answers only after the client's FIN
    });
    cleanups.push(srv.close);
    const proxy = await DelayProxy.listen({ targetPort: srv.port, delayMs: 20 });
    cleanups.push(() => proxy.close());
    const s = await dial(proxy.port);
    let reply = '';
    s.on('data', (b: Buffer) => (reply += b.toString()));
    const t0 = performance.now();
    s.end('hello');
    await once(s, 'end');
    const ms = performance.now() - t0;
    assert.equal(reply, 'got hello');
    assert.ok(ms >= 39, `FIN and reply took ${ms.toFixed(1)} ms, want ≥ 40 (two delayed legs)`);
    assert.deepEqual(proxy.bytes, { upstream: 5, downstream: 9 });
  });

  test('a reset on one end closes the other at once, and bad options are refused', async () => {
    const srv = await server((s) => s.resetAndDestroy());
    cleanups.push(srv.close);
    const proxy = await DelayProxy.listen({ targetPort: srv.port, delayMs: 1000 });
    cleanups.push(() => proxy.close());
    const t0 = performance.now();
    const s = connect({ host: '127.0.0.1', port: proxy.port });
    let error = '';
    s.on('error', (err: NodeJS.ErrnoException) => (error = err.code ?? err.message));
    await new Promise((r) => s.on('close', r));
    assert.ok(performance.now() - t0 < 900, 'the reset was not held for the delay');
    assert.equal(error, 'ECONNRESET', 'the client sees a reset, as it would from the server itself');
    await assert.rejects(DelayProxy.listen({ targetPort: srv.port, delayMs: -1 }), RangeError);
    await assert.rejects(DelayProxy.listen({ targetPort: srv.port, delayMs: 1, maxBufferedBytes: 0 }), RangeError);
  });
});
