/**
 * The agent's peer port answers plain HTTP as well as peer links: GET /metrics and GET /healthz
 * (node-agent/http-endpoints.ts), 404 and 405 for anything else, while WebSocket upgrades still reach the peer
 * listener. One real PeerServer on loopback.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { silentLogger } from '../../common/log.ts';
import { CloseCode } from '../../protocol/codes.ts';
import { httpEndpoints } from '../../node-agent/http-endpoints.ts';
import { AgentMetrics } from '../../node-agent/metrics.ts';
import { PeerServer } from '../../node-agent/peer-server.ts';
import { parseExposition, valueOf } from '../support/prometheus.ts';

describe("the agent's peer port over plain HTTP", () => {
  let server: PeerServer;
  let base: string;
  const metrics = new AgentMetrics({ processMetrics: false });
  before(async () => {
    server = await PeerServer.listen({
      host: '127.0.0.1',
      port: 0,
      log: silentLogger,
      helloTimeoutMs: 300,
      findGroup: async () => undefined,
      onRequest: httpEndpoints({ registry: metrics.registry, health: () => ({ name: 'agent-x' }) }),
    });
    base = `http://127.0.0.1:${server.port}`;
  });
  after(() => server?.close());

  test('GET /metrics serves the registry as text exposition', async () => {
    metrics.heartbeatSent();
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.equal(valueOf(parseExposition(await res.text()), 'meshtrain_agent_heartbeats_sent_total'), 1);
  });

  test('HEAD /metrics answers without a body', async () => {
    const res = await fetch(`${base}/metrics`, { method: 'HEAD' });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.ok(Number(res.headers.get('content-length')) > 0, 'the length GET would send');
    assert.equal(await res.text(), '');
  });

  test('GET /healthz says ok with what the agent adds', async () => {
    const res = await fetch(`${base}/healthz?verbose=1`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: 'ok', name: 'agent-x' });
  });

  test('other paths are 404 and other methods 405', async () => {
    assert.equal((await fetch(`${base}/`)).status, 404);
    assert.equal((await fetch(`${base}/metrics/x`)).status, 404);
    const post = await fetch(`${base}/metrics`, { method: 'POST', body: 'x' });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD');
  });

  test('without a registry /metrics is 404', async () => {
    const bare = await PeerServer.listen({
      host: '127.0.0.1', port: 0, log: silentLogger, helloTimeoutMs: 300, findGroup: async () => undefined,
      onRequest: httpEndpoints({ health: () => ({}) }),
    });
    try {
      assert.equal((await fetch(`http://127.0.0.1:${bare.port}/metrics`)).status, 404);
      assert.equal((await fetch(`http://127.0.0.1:${bare.port}/healthz`)).status, 200);
    } finally {
      await bare.close();
    }
  });

  test('a WebSocket on the same port still reaches the peer listener (closed for sending no hello)', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}`);
    const code = await new Promise<number>((resolve, reject) => {
      ws.once('close', (c) => resolve(c));
      ws.once('error', reject);
    });
    assert.equal(code, CloseCode.HELLO_TIMEOUT);
  });

  test('close() is prompt although a scraper keeps its connection alive', async () => {
    const other = await PeerServer.listen({
      host: '127.0.0.1', port: 0, log: silentLogger, helloTimeoutMs: 300, findGroup: async () => undefined,
      onRequest: httpEndpoints({ registry: metrics.registry, health: () => ({}) }),
    });
    const res = await fetch(`http://127.0.0.1:${other.port}/metrics`); // undici keeps the socket for reuse
    await res.text();
    const t0 = Date.now();
    await other.close();
    assert.ok(Date.now() - t0 < 1000, `close took ${Date.now() - t0} ms`);
  });
});
