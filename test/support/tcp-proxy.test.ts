/** The fault tests' TCP proxy (test/support/tcp-proxy.ts) against a real echo server on loopback. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import { TcpProxy } from './tcp-proxy.ts';

/** A client socket with everything it has received so far, and whether (and how) it closed. */
async function dial(port: number): Promise<{ socket: Socket; received: () => string; closed: () => boolean; error: () => string | undefined }> {
  const socket = connect({ host: '127.0.0.1', port });
  let data = '', closed = false, error: string | undefined;
  socket.on('data', (b) => (data += b.toString()));
  socket.on('error', (err) => (error = (err as NodeJS.ErrnoException).code ?? err.message));
  socket.on('close', () => (closed = true));
  await once(socket, 'connect');
  return { socket, received: () => data, closed: () => closed, error: () => error };
}

async function until(cond: () => boolean, what = 'the condition', ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('a TCP proxy in front of an echo server', () => {
  let echo: Server;
  let proxy: TcpProxy;
  const sockets: Socket[] = [];
  before(async () => {
    echo = createServer((s) => {
      sockets.push(s);
      s.on('error', () => {});
      s.pipe(s);
    });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    proxy = await TcpProxy.listen({ targetPort: (echo.address() as { port: number }).port });
  });
  after(async () => {
    await proxy.close();
    for (const s of sockets) s.destroy();
    await new Promise((r) => echo.close(r));
  });

  test('passes bytes both ways, then blackholes open and new connections without closing them, then resets, then heals', async () => {
    const a = await dial(proxy.port);
    a.socket.write('hello');
    await until(() => a.received() === 'hello');

    const droppedBefore = proxy.droppedBytes;
    proxy.setMode('blackhole');
    a.socket.write(' lost');
    const b = await dial(proxy.port); // accepted, but it goes nowhere
    b.socket.write('also lost');
    // Both writes reached the proxy and vanished there: seen in its count, not slept for.
    await until(() => proxy.droppedBytes - droppedBefore >= ' lost'.length + 'also lost'.length, 'the proxy to drop both writes');
    assert.equal(a.received(), 'hello', 'nothing comes back through the partition');
    assert.equal(b.received(), '');
    assert.ok(!a.closed() && !b.closed() && !a.error() && !b.error(), 'no close and no error: a partition, not a reset');

    proxy.setMode('reset');
    await until(() => a.closed() && b.closed());
    const c = connect({ host: '127.0.0.1', port: proxy.port });
    let refused = '';
    c.on('error', (err) => (refused = (err as NodeJS.ErrnoException).code ?? err.message));
    await new Promise((r) => c.on('close', r)); // accepted and reset at once: a refused link
    assert.equal(refused, 'ECONNRESET');
    assert.equal(proxy.connections, 0);

    proxy.setMode('pass');
    const d = await dial(proxy.port);
    d.socket.write('healed');
    await until(() => d.received() === 'healed');
    d.socket.destroy();
  });

  test('a connection that lost bytes to the blackhole stays silent after the network heals', async () => {
    proxy.setMode('pass');
    const a = await dial(proxy.port);
    const droppedBefore = proxy.droppedBytes;
    proxy.setMode('blackhole');
    a.socket.write('gap');
    await until(() => proxy.droppedBytes - droppedBefore >= 'gap'.length, 'the proxy to drop the write into the partition');
    proxy.setMode('pass');
    a.socket.write('after');
    // The proxy read the bytes sent after the heal and dropped them too, so the echo server never saw them.
    await until(() => proxy.droppedBytes - droppedBefore >= 'gap'.length + 'after'.length, 'the proxy to drop the write after the heal');
    assert.equal(a.received(), '', 'a stream with a gap in it is not resumed');
    assert.ok(!a.closed());
    a.socket.destroy();
  });
});
