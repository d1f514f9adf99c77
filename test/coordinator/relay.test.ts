/**
 * npx tsx --test test/coordinator/relay.test.ts
 *
 * The coordinator's relay endpoint (coordinator/cluster/relay.ts) on a real HTTP server over loopback, with a fake
 * agent hub: who gets through (a dialer with its group's ticket, the target with its one-time session key), who is
 * refused before any upgrade (401), and that a target that is not attached or never calls back fails fast (503)
 * instead of leaving the dialer hanging.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import WebSocket from 'ws';
import { silentLogger } from '../../common/log.ts';
import { CoordinatorRelay, RELAY_PATH } from '../../coordinator/cluster/relay.ts';
import type { CoordinatorMessage } from '../../protocol/control.ts';

const TICKET = 'group-relay-ticket-0123456789';
const CALLBACK_MS = 300;

/** How the fake target behaves when asked to open its side. */
let answer: 'callback' | 'silent' = 'callback';
const attached = new Set(['node-hidden', 'node-silent']);
const sent: Array<{ to: string; msg: CoordinatorMessage }> = [];
let port = 0;
let server: Server;
let relay: CoordinatorRelay;
const targets: WebSocket[] = [];

/** The answer to an upgrade request: 101 and the open socket, or the HTTP status and error body. */
function dial(query: string, authorization?: string): Promise<{ status: number; ws?: WebSocket; body?: { error: { code: string; message: string } } }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${RELAY_PATH}${query}`, { headers: authorization ? { authorization } : {}, perMessageDeflate: false });
    ws.on('error', () => {});
    ws.once('open', () => resolve({ status: 101, ws }));
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()) });
        ws.terminate();
      });
    });
  });
}

describe('the coordinator relay endpoint', () => {
  before(async () => {
    relay = new CoordinatorRelay({
      targets: {
        isConnected: (id) => attached.has(id),
        send: (to, msg) => {
          sent.push({ to, msg });
          if (answer === 'silent' || msg.type !== 'relay.open') return;
          // The target opens its side, as node-agent/agent.ts does, with the session key it was sent.
          const ws = new WebSocket(`ws://127.0.0.1:${port}${RELAY_PATH}?session=${msg.session}`, { headers: { authorization: `Bearer ${msg.key}` }, perMessageDeflate: false });
          ws.on('error', () => {});
          ws.on('message', (d: Buffer) => ws.send(Buffer.concat([Buffer.from('echo:'), d]))); // an echoing target
          targets.push(ws);
        },
      },
      ticketGroup: (ticket, to) => (ticket === TICKET && (to === 'node-hidden' || to === 'node-silent' || to === 'node-gone') ? 'g-1' : undefined),
      log: silentLogger,
      callbackTimeoutMs: CALLBACK_MS,
    });
    server = createServer((_req, res) => res.writeHead(404).end());
    server.on('upgrade', (req, socket, head) => relay.handleUpgrade(req, socket, head));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  after(async () => {
    for (const ws of targets) ws.terminate();
    relay.close();
    await new Promise((r) => server.close(r));
  });

  test('refuses a dialer without a ticket, with a wrong one, or one that does not cover the node: 401, and never bothers the node', async () => {
    const before = sent.length;
    for (const [query, auth] of [
      ['?to=node-hidden', undefined],
      ['?to=node-hidden', 'Bearer not-the-ticket'],
      ['?to=node-hidden', `Basic ${TICKET}`],
      ['?to=node-other', `Bearer ${TICKET}`],
      ['', `Bearer ${TICKET}`],
      ['?to=node-hidden&session=x', `Bearer ${TICKET}`],
    ] as const) {
      const r = await dial(query, auth);
      assert.equal(r.status, 401, `${query} ${auth}`);
      assert.equal(r.body?.error.code, 'CRD_ERR_UNAUTHORIZED');
    }
    assert.equal(sent.length, before, 'no relay.open went out');
  });

  test('refuses a callback with an unknown session or a wrong key: 401', async () => {
    assert.equal((await dial('?session=rs-0000', 'Bearer anything')).status, 401);
    answer = 'silent';
    const pending = dial('?to=node-silent', `Bearer ${TICKET}`);
    while (!sent.some((s) => s.to === 'node-silent')) await new Promise((r) => setTimeout(r, 5));
    const open = sent.findLast((s) => s.to === 'node-silent')!.msg as Extract<CoordinatorMessage, { type: 'relay.open' }>;
    const wrongKey = await dial(`?session=${open.session}`, 'Bearer not-the-session-key');
    assert.equal(wrongKey.status, 401);
    assert.equal(wrongKey.body?.error.code, 'CRD_ERR_UNAUTHORIZED');
    await pending;
    answer = 'callback';
  });

  test('fails at once, with an error naming the node, when the node is not attached', async () => {
    const started = Date.now();
    const r = await dial('?to=node-gone', `Bearer ${TICKET}`);
    assert.equal(r.status, 503);
    assert.equal(r.body?.error.code, 'CRD_ERR_RELAY_UNAVAILABLE');
    assert.match(r.body!.error.message, /node node-gone is not attached to the relay/);
    assert.ok(Date.now() - started < 1000, `answered in ${Date.now() - started} ms`);
  });

  test('fails within its callback timeout when an attached node does not open its side', async () => {
    answer = 'silent';
    const started = Date.now();
    const r = await dial('?to=node-silent', `Bearer ${TICKET}`);
    answer = 'callback';
    assert.equal(r.status, 503);
    assert.match(r.body!.error.message, new RegExp(`node node-silent did not open its side of the relay within ${CALLBACK_MS} ms`));
    assert.ok(Date.now() - started < CALLBACK_MS + 1000);
  });

  test('splices a dialer with its ticket to the node that calls back, counts the bytes, and the session key works once', async () => {
    const r = await dial('?to=node-hidden', `Bearer ${TICKET}`);
    assert.equal(r.status, 101);
    const reply = new Promise<string>((resolve) => r.ws!.once('message', (d: Buffer) => resolve(d.toString())));
    r.ws!.send(Buffer.from('peer.hello'));
    assert.equal(await reply, 'echo:peer.hello');
    const open = sent.findLast((s) => s.to === 'node-hidden')!.msg as Extract<CoordinatorMessage, { type: 'relay.open' }>;
    assert.equal(open.groupId, 'g-1');
    const again = await dial(`?session=${open.session}`, `Bearer ${open.key}`);
    assert.equal(again.status, 401, 'a used session key opens nothing');
    const stats = relay.stats('node-hidden')!;
    assert.deepEqual([stats.bytesToNode, stats.bytesFromNode, stats.linksOpen], [10, 15, 1]);
    const closed = new Promise<number>((resolve) => targets.at(-1)!.once('close', (code) => resolve(code)));
    r.ws!.close(4005, 'bye');
    assert.equal(await closed, 4005, "the dialer's close reaches the node");
  });
});
