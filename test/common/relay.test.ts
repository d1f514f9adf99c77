/**
 * npx tsx --test test/common/relay.test.ts
 *
 * The relay's splice (common/relay.ts) on real WebSockets over loopback: a "dialer" and a "target" both connect to
 * a server, and the server's two sockets are spliced, as the coordinator's relay does.
 */
import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { pingRttMs, splice, type Splice } from '../../common/relay.ts';

interface Pair {
  dialer: WebSocket;
  target: WebSocket;
  /** The relay's sides: toward the dialer, toward the target. */
  relayA: WebSocket;
  relayB: WebSocket;
  link: Splice;
  bytes: { ab: number; ba: number };
}

const servers: WebSocketServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    for (const c of s.clients) c.terminate();
    await new Promise((r) => s.close(r));
  }
});

async function spliced(highWaterBytes?: number): Promise<Pair> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
  servers.push(wss);
  await new Promise((r) => wss.once('listening', r));
  const url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`;
  const accepted: WebSocket[] = [];
  wss.on('connection', (ws) => accepted.push(ws));
  const open = (ws: WebSocket) => new Promise((r) => ws.once('open', r));
  const dialer = new WebSocket(url, { perMessageDeflate: false });
  await open(dialer);
  while (accepted.length < 1) await new Promise((r) => setTimeout(r, 5));
  const target = new WebSocket(url, { perMessageDeflate: false });
  await open(target);
  while (accepted.length < 2) await new Promise((r) => setTimeout(r, 5));
  const bytes = { ab: 0, ba: 0 };
  const link = splice(accepted[0]!, accepted[1]!, { ...(highWaterBytes ? { highWaterBytes } : {}), onBytes: (d, n) => (bytes[d] += n) });
  return { dialer, target, relayA: accepted[0]!, relayB: accepted[1]!, link, bytes };
}

const closeOf = (ws: WebSocket) => new Promise<[number, string]>((r) => ws.once('close', (code, reason) => r([code, reason.toString()])));

describe('splicing two WebSockets', () => {
  test('passes binary and text messages on unchanged and in order, both ways, and counts their bytes', async () => {
    const { dialer, target, bytes, link } = await spliced();
    const atTarget: Array<[string, boolean]> = [];
    const atDialer: Array<[string, boolean]> = [];
    target.on('message', (d: Buffer, binary) => atTarget.push([d.toString('hex'), binary]));
    dialer.on('message', (d: Buffer, binary) => atDialer.push([d.toString('hex'), binary]));
    dialer.send(Buffer.from([1, 2, 3]));
    dialer.send('hello', { binary: false });
    dialer.send(Buffer.alloc(0));
    target.send(Buffer.from([9]));
    while (atTarget.length < 3 || atDialer.length < 1) await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(atTarget, [['010203', true], [Buffer.from('hello').toString('hex'), false], ['', true]]);
    assert.deepEqual(atDialer, [['09', true]]);
    assert.deepEqual(bytes, { ab: 8, ba: 1 });
    assert.deepEqual(link.bytes, { ab: 8, ba: 1 });
  });

  test('pauses the reading side while the writing side is backed up, and resumes it once it drains, losing nothing', async () => {
    const high = 1024 * 1024;
    const { dialer, target, relayA, relayB, bytes } = await spliced(high);
    target.pause(); // a receiver that stops reading: its TCP window fills, then the relay's buffer toward it
    const message = (i: number) => Buffer.alloc(1024 * 1024, i);
    const count = 64;
    for (let i = 0; i < count; i++) dialer.send(message(i));
    // The relay stops reading from the dialer once its buffer toward the stalled target passes the high-water mark.
    for (let i = 0; i < 500 && !relayA.isPaused; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(relayA.isPaused, true, "the relay paused the dialer's side");
    await new Promise((r) => setTimeout(r, 200)); // and stays paused: nothing more is read meanwhile
    assert.equal(relayA.isPaused, true, 'still paused while the target reads nothing');
    assert.ok(dialer.bufferedAmount > 0, 'backpressure reached the sender: it holds unsent bytes');
    // What the relay holds toward the target stays near its high-water mark (plus one message in flight).
    assert.ok(relayB.bufferedAmount <= high + 1024 * 1024, `relay buffers ${relayB.bufferedAmount} B toward the stalled target`);
    assert.ok(bytes.ab < count * 1024 * 1024, `the relay has not read everything yet (${bytes.ab} B)`);

    const got: number[] = [];
    target.on('message', (d: Buffer) => {
      assert.equal(d.length, 1024 * 1024);
      got.push(d[0]!);
      assert.ok(d.every((b) => b === d[0]), 'a message arrives intact');
    });
    target.resume();
    while (got.length < count) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(got, Array.from({ length: count }, (_, i) => i % 256), 'every message, in order');
    assert.equal(relayA.isPaused, false, 'reading again once drained');
    assert.equal(bytes.ab, count * 1024 * 1024);
  });

  test("closes the other side with the closing side's code and reason, either way", async () => {
    const a = await spliced();
    const atTarget = closeOf(a.target);
    a.dialer.close(4005, 'unknown group or wrong group token');
    assert.deepEqual(await atTarget, [4005, 'unknown group or wrong group token']);
    assert.deepEqual(await a.link.closed, { code: 4005, reason: 'unknown group or wrong group token', by: 'a' });

    const b = await spliced();
    const atDialer = closeOf(b.dialer);
    b.target.close(1000, 'group released');
    assert.deepEqual(await atDialer, [1000, 'group released']);
  });

  test('a side that drops without a close frame closes the other with 1001 GOING_AWAY', async () => {
    const { dialer, target } = await spliced();
    const atDialer = closeOf(dialer);
    target.terminate();
    const [code, reason] = await atDialer;
    assert.equal(code, 1001);
    assert.match(reason, /dropped/);
  });

  test('measures a round trip with a ping on one leg', async () => {
    const { relayA } = await spliced();
    const ms = await pingRttMs(relayA);
    assert.ok(ms >= 0 && ms < 1000, `${ms} ms`);
  });
});
