/**
 * MessageConnection's keepalive over real sockets: a peer that stops reading (a frozen or partitioned host: no FIN,
 * no RST, no pong) is dropped within the timeout with HEARTBEAT_TIMEOUT, while a link we hold paused ourselves, or
 * a live peer that is merely quiet, is not.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { AddressInfo, Socket } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import type { Envelope } from '../../protocol/codec.ts';
import { CloseCode } from '../../protocol/codes.ts';
import { MessageConnection } from '../../protocol/connection.ts';
import { parsePeerMessage, type PeerMessage } from '../../protocol/peer.ts';
import { clientOptions, serverOptions } from '../../protocol/ws-options.ts';
import { silentLogger } from '../../common/log.ts';

let wss: WebSocketServer;
let url = '';
/** The server side's raw sockets, newest last: a test freezes one by no longer reading from it. */
const serverSockets: Socket[] = [];

before(async () => {
  wss = new WebSocketServer({ host: '127.0.0.1', port: 0, ...serverOptions(1 << 20) });
  wss.on('connection', (_ws, req) => serverSockets.push(req.socket));
  await once(wss, 'listening');
  url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`;
});

after(async () => {
  for (const ws of wss.clients) ws.terminate();
  await new Promise((r) => wss.close(r));
});

/** A client MessageConnection with a keepalive; resolves its close code and when it came. */
async function dial(keepalive: { intervalMs: number; timeoutMs: number }) {
  const ws = new WebSocket(url, clientOptions(1 << 20));
  let closed!: (v: { code: number; reason: string; atMs: number }) => void;
  const done = new Promise<{ code: number; reason: string; atMs: number }>((r) => (closed = r));
  const conn = new MessageConnection<PeerMessage, Envelope>(ws, {
    parse: parsePeerMessage,
    onMessage: () => {},
    onClose: (code, reason) => closed({ code, reason, atMs: Date.now() }),
    label: 'client',
    log: silentLogger,
    maxAttachmentBytes: 1024,
    keepalive,
  });
  await once(ws, 'open');
  return { ws, conn, done };
}

const settled = <T>(p: Promise<T>, ms: number) => Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

test('a peer that stops answering is dropped with HEARTBEAT_TIMEOUT within the keepalive timeout', { timeout: 5000 }, async () => {
  const { conn, done } = await dial({ intervalMs: 50, timeoutMs: 400 });
  serverSockets.at(-1)!.pause(); // frozen: the server's ws reads nothing more, so it answers no ping
  const t0 = Date.now();
  const { code, reason, atMs } = await done;
  assert.equal(code, CloseCode.HEARTBEAT_TIMEOUT);
  assert.match(reason, /nothing heard for 400 ms \(keepalive\)/);
  assert.ok(atMs - t0 >= 350 && atMs - t0 < 2000, `dropped after ${atMs - t0} ms`);
  assert.equal(conn.isOpen, false);
});

test('a quiet but live peer is kept: its pongs count', async () => {
  const { conn, done } = await dial({ intervalMs: 50, timeoutMs: 300 });
  assert.equal(await settled(done, 1200), false, 'still open after four timeouts of silence');
  assert.ok(conn.isOpen);
  conn.close();
  assert.equal((await done).code, CloseCode.NORMAL);
});

test('a link we hold paused is not dropped for the silence we cause', async () => {
  const { conn, done } = await dial({ intervalMs: 50, timeoutMs: 300 });
  conn.pause(); // our own backpressure: the pongs wait unread
  assert.equal(await settled(done, 1200), false, 'still open while paused');
  conn.resume();
  assert.equal(await settled(done, 600), false, 'and after resuming, the pongs flow again');
  conn.close();
  await done;
});
