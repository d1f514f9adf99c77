/**
 * The connection limits of common/conn-limits.ts on REAL processes — a coordinator, an agent and a gateway, each
 * started with short limits on its command line:
 *
 * - slow-loris: an HTTP client sending its request head one byte at a time is answered 408 and cut within the
 *   headers timeout on the coordinator's port, the agent's peer port and the gateway's port; a WebSocket that
 *   upgrades and then says nothing on the peer port is cut by the peer hello timeout (4007);
 * - floods: hundreds of WebSockets that never say hello, against the coordinator's agent endpoint and the agent's
 *   peer listener, are refused beyond the pending-hello cap with 1013 TRY_AGAIN (or, beyond the socket cap, at
 *   the TCP level) within moments; meanwhile the real agent stays connected, the API answers, and the
 *   coordinator's resident memory stays bounded;
 * - idle sockets beyond the coordinator's socket cap are dropped at once.
 *
 * Run: npx tsx --test test/integration/limits.test.ts
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { spawnProc, waitForLine, type Proc } from '../../scripts/local-cluster.ts';
import { encodeMessage } from '../../protocol/codec.ts';
import { CloseCode } from '../../protocol/codes.ts';
import { until } from '../support/until.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const TOKEN = 'limits-test-cluster-token';
const HEADERS_TIMEOUT_MS = 1500;
const PEER_HELLO_TIMEOUT_MS = 3000;
const COORDINATOR_MAX_CONNECTIONS = 300;
const COORDINATOR_MAX_PENDING = 16;
const AGENT_MAX_CONNECTIONS = 150;
const AGENT_MAX_PENDING = 8;
/**
 * Slack on top of a server-side timeout before a cut counts as late. Generous (a loaded machine delays the server's
 * deadline check and our own clock), yet each bound stays below the process's default timeout (10 s), so a limit
 * that was not applied still fails.
 */
const LATE_MS = 5000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Cut {
  ms: number;
  received: string;
}

/** Sends an HTTP request head one byte every `everyMs` and resolves when the server cuts the connection. */
function slowLoris(port: number, everyMs: number, giveUpMs: number): Promise<Cut> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const head = `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ${'z'.repeat(200)}`;
    let received = '';
    const socket = connect(port, '127.0.0.1');
    let i = 0;
    const drip = setInterval(() => socket.writable && socket.write(head[i++ % head.length]!), everyMs);
    const giveUp = setTimeout(() => socket.destroy(), giveUpMs);
    socket.on('data', (d) => (received += d.toString()));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearInterval(drip);
      clearTimeout(giveUp);
      resolve({ ms: Date.now() - t0, received });
    });
  });
}

interface WsOutcome {
  code: number;
  ms: number;
  gaveUp: boolean; // we cut it ourselves after giveUpMs: the server never closed it
}

/** Opens a WebSocket that never says anything; resolves with its close code (1006: dropped without a close frame). */
function silentWs(url: string, giveUpMs: number, sockets: Set<WebSocket>): Promise<WsOutcome> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const ws = new WebSocket(url, { perMessageDeflate: false });
    sockets.add(ws);
    let gaveUp = false;
    const giveUp = setTimeout(() => ((gaveUp = true), ws.terminate()), giveUpMs);
    ws.on('error', () => {});
    ws.on('close', (code) => {
      clearTimeout(giveUp);
      sockets.delete(ws);
      resolve({ code, ms: Date.now() - t0, gaveUp });
    });
  });
}

/** Refused by the server: told 1013 TRY_AGAIN, or dropped (1006) by the server rather than by our own give-up. */
const refusedByServer = (o: WsOutcome) => o.code === CloseCode.TRY_AGAIN || (o.code === 1006 && !o.gaveUp);

/** The flood's outcomes in the order they settle. */
function settling(flood: Array<Promise<WsOutcome>>): WsOutcome[] {
  const settled: WsOutcome[] = [];
  for (const o of flood) void o.then((r) => settled.push(r));
  return settled;
}

const tally = (outcomes: WsOutcome[]) => {
  const byCode = new Map<number, number>();
  for (const o of outcomes) byCode.set(o.code, (byCode.get(o.code) ?? 0) + 1);
  return [...byCode].map(([c, n]) => `${c}×${n}`).join(' ');
};

function residentBytes(metrics: string, prefix: string): number {
  const m = new RegExp(`^${prefix}process_resident_memory_bytes (\\d+(?:\\.\\d+)?(?:e\\+?\\d+)?)$`, 'm').exec(metrics);
  assert.ok(m, `${prefix}process_resident_memory_bytes in /metrics`);
  return Number(m[1]);
}

describe('connection limits on real processes', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'meshtrain-limits-'));
  const procs: Proc[] = [];
  const sockets = new Set<WebSocket>();
  let api = '';
  let coordinatorPort = 0;
  let peerPort = 0;
  let gatewayPort = 0;

  const nodes = async () =>
    ((await (await fetch(`${api}/api/nodes`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { nodes: Array<{ id: string; status: string; connected: boolean; peerAddress: string }> }).nodes;

  before(async () => {
    const env = { LOG_LEVEL: 'error' };
    const coordinator = spawnProc(
      [join(ROOT, 'bin/coordinator.js'), 'start', '--host', '127.0.0.1', '--port', '0', '--data', dataDir, '--token', TOKEN,
        '--headers-timeout', String(HEADERS_TIMEOUT_MS), '--max-connections', String(COORDINATOR_MAX_CONNECTIONS), '--max-pending-hellos', String(COORDINATOR_MAX_PENDING)],
      { env, stderr: 'capture' },
    );
    procs.push(coordinator);
    const gateway = spawnProc([join(ROOT, 'bin/gateway.js'), 'serve', '--fake', '--port', '0', '--headers-timeout-ms', String(HEADERS_TIMEOUT_MS)], { env, stderr: 'capture' });
    procs.push(gateway);
    coordinatorPort = Number((await waitForLine(coordinator, /coordinator listening on https?:\/\/127\.0\.0\.1:(\d+)/, 30_000))[1]);
    api = `http://127.0.0.1:${coordinatorPort}`;
    const agent = spawnProc(
      [join(ROOT, 'bin/node-agent.js'), 'join', `ws://127.0.0.1:${coordinatorPort}`, '--token', TOKEN, '--name', 'limits-agent', '--peer-listen', '127.0.0.1', '--backend', 'wasm',
        '--headers-timeout', String(HEADERS_TIMEOUT_MS), '--max-connections', String(AGENT_MAX_CONNECTIONS), '--max-pending-hellos', String(AGENT_MAX_PENDING), '--peer-hello-timeout', String(PEER_HELLO_TIMEOUT_MS)],
      { env, stderr: 'capture' },
    );
    procs.push(agent);
    gatewayPort = Number((await waitForLine(gateway, /gateway listening on http:\/\/127\.0\.0\.1:(\d+)/, 30_000))[1]);
    for (const deadline = Date.now() + 60_000; ; await sleep(100)) {
      const list = await nodes();
      if (list.length === 1 && list[0]!.connected) {
        peerPort = Number(new URL(list[0]!.peerAddress).port);
        break;
      }
      if (Date.now() > deadline) throw new Error(`the agent did not join:\n${agent.output.join('\n')}`);
    }
  });

  after(async () => {
    for (const ws of sockets) ws.terminate();
    for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGTERM');
    await Promise.race([Promise.all(procs.map((p) => p.exited)), sleep(5000)]);
    for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  });

  test(`a slow-loris client is answered 408 and cut within the ${HEADERS_TIMEOUT_MS} ms headers timeout on the coordinator, agent peer and gateway ports; a silent WebSocket on the peer port gets 4007 after the peer hello timeout`, async () => {
    const silentPeer = silentWs(`ws://127.0.0.1:${peerPort}`, 10_000, sockets);
    const cuts = await Promise.all([coordinatorPort, peerPort, gatewayPort].map((port) => slowLoris(port, 400, 10_000)));
    for (const [i, name] of ['coordinator', 'agent peer port', 'gateway'].entries()) {
      const c = cuts[i]!;
      assert.ok(c.ms >= HEADERS_TIMEOUT_MS - 100 && c.ms < HEADERS_TIMEOUT_MS + LATE_MS, `${name}: cut after ${c.ms} ms`);
      assert.match(c.received, /^HTTP\/1\.1 408/, `${name}: answered 408`);
    }
    const s = await silentPeer;
    assert.equal(s.code, CloseCode.HELLO_TIMEOUT);
    assert.ok(s.ms >= PEER_HELLO_TIMEOUT_MS - 100 && s.ms < PEER_HELLO_TIMEOUT_MS + LATE_MS, `cut after ${s.ms} ms`);
  });

  test(`a flood of 400 silent WebSockets on the coordinator's agent endpoint: all beyond ${COORDINATOR_MAX_PENDING} pending are refused at once (1013, or dropped past ${COORDINATOR_MAX_CONNECTIONS} sockets); the agent stays connected, the API answers, memory stays bounded`, async (t) => {
    const rssBefore = residentBytes(await (await fetch(`${api}/metrics`)).text(), 'meshtrain_coordinator_');
    const t0 = Date.now();
    const flood = Array.from({ length: 400 }, () => silentWs(`ws://127.0.0.1:${coordinatorPort}/ws/agent`, 15_000, sockets));
    const settled = settling(flood);
    // Refused at once means refused rather than left to the hello timeout (5 s): wait for the refusals themselves,
    // not for a wall-clock window, and judge them by how they ended.
    await until(`all but the ${COORDINATOR_MAX_PENDING} pending of 400 to be refused`, async () => settled.filter(refusedByServer).length >= 400 - COORDINATOR_MAX_PENDING - 4, 60_000, 50)
      .catch((err: Error) => assert.fail(`${err.message}; settled so far: ${tally(settled)}`));
    t.diagnostic(`after ${Date.now() - t0} ms: ${tally(settled)}, ${400 - settled.length} still open`);
    assert.ok(settled.filter((o) => o.code === CloseCode.TRY_AGAIN).length >= 100, 'most were told 1013 TRY_AGAIN');
    // While the pending ones (at most the cap) wait for their hello timeout:
    const health = await fetch(`${api}/healthz`);
    assert.equal(health.status, 200, 'the API answers during the flood');
    const [node] = await nodes();
    assert.ok(node?.connected && node.status === 'alive', 'the real agent stays connected');
    const outcomes = await Promise.all(flood);
    assert.ok(outcomes.every((o) => refusedByServer(o) || o.code === CloseCode.HELLO_TIMEOUT), `each was refused or cut at its hello timeout by the coordinator: ${tally(outcomes)}, ${outcomes.filter((o) => o.gaveUp).length} outlived our 15 s give-up`);
    assert.equal(outcomes.filter((o) => o.code === CloseCode.HELLO_TIMEOUT).length <= COORDINATOR_MAX_PENDING, true, 'at most the cap waited for the hello timeout');
    const rssAfter = residentBytes(await (await fetch(`${api}/metrics`)).text(), 'meshtrain_coordinator_');
    t.diagnostic(`coordinator RSS ${(rssBefore / 2 ** 20).toFixed(0)} → ${(rssAfter / 2 ** 20).toFixed(0)} MiB`);
    assert.ok(rssAfter - rssBefore < 100 * 2 ** 20, `RSS grew by ${((rssAfter - rssBefore) / 2 ** 20).toFixed(0)} MiB`);
  });

  test(`a flood of 200 silent WebSockets on the agent's peer listener is refused beyond ${AGENT_MAX_PENDING} pending; the agent stays connected and its /healthz answers`, async () => {
    const flood = Array.from({ length: 200 }, () => silentWs(`ws://127.0.0.1:${peerPort}`, 15_000, sockets));
    const settled = settling(flood);
    // Once all but the pending ones are refused, the flood holds no more than the pending cap's sockets (before
    // that, a request could find the port's socket cap full and be dropped like any flooder).
    await until(`all but the ${AGENT_MAX_PENDING} pending of 200 to be refused`, async () => settled.filter(refusedByServer).length >= 200 - AGENT_MAX_PENDING, 60_000, 50)
      .catch((err: Error) => assert.fail(`${err.message}; settled so far: ${tally(settled)}`));
    const health = await fetch(`http://127.0.0.1:${peerPort}/healthz`);
    assert.equal(health.status, 200, 'the peer port still answers HTTP');
    const outcomes = await Promise.all(flood);
    const tryAgain = outcomes.filter((o) => o.code === CloseCode.TRY_AGAIN);
    const timedOut = outcomes.filter((o) => o.code === CloseCode.HELLO_TIMEOUT);
    assert.ok(tryAgain.length >= 200 - AGENT_MAX_CONNECTIONS, `${tryAgain.length} told 1013`);
    assert.ok(timedOut.length <= AGENT_MAX_PENDING, `${timedOut.length} waited for the hello timeout`);
    assert.equal(tryAgain.length + timedOut.length + outcomes.filter((o) => o.code === 1006 && !o.gaveUp).length, 200, `every one ended in 1013, 4007 or a drop by the agent: ${tally(outcomes)}, ${outcomes.filter((o) => o.gaveUp).length} outlived our 15 s give-up`);
    const [node] = await nodes();
    assert.ok(node?.connected && node.status === 'alive', 'the agent stays connected to the coordinator');
  });

  test(`idle sockets beyond the coordinator's ${COORDINATOR_MAX_CONNECTIONS}-socket cap are dropped at once`, async (t) => {
    // A socket beyond the cap is destroyed as soon as it is accepted, without a byte; one within it stays until the
    // headers timeout, which answers it 408 first. So what each socket received tells which of the two cut it,
    // however long a loaded machine takes to get there.
    const t0 = Date.now();
    const closed: Array<{ ms: number; received: string }> = [];
    const open: Socket[] = [];
    for (let i = 0; i < COORDINATOR_MAX_CONNECTIONS + 60; i++) {
      const s = connect(coordinatorPort, '127.0.0.1');
      open.push(s);
      let received = '';
      s.on('data', (d) => (received += d.toString()));
      s.on('error', () => {});
      s.on('close', () => closed.push({ ms: Date.now() - t0, received }));
    }
    try {
      await until(`the coordinator to close all ${open.length} idle sockets`, async () => closed.length === open.length, 60_000, 50);
    } finally {
      for (const s of open) s.destroy();
    }
    const dropped = closed.filter((c) => c.received === '');
    const answered = closed.filter((c) => c.received !== '');
    t.diagnostic(`dropped without a byte: ${dropped.length} of ${open.length}, the last after ${Math.max(0, ...dropped.map((c) => c.ms))} ms; the rest answered after ${Math.min(...answered.map((c) => c.ms))} ms or more`);
    assert.ok(dropped.length >= 55 && dropped.length <= 70, `${dropped.length} sockets above the cap were dropped at once`);
    assert.ok(answered.every((c) => /^HTTP\/1\.1 408/.test(c.received)), 'the ones within the cap were kept until the headers timeout answered them 408');
    const health = await until('the API to answer again', async () => fetch(`${api}/healthz`).catch(() => undefined), 30_000, 100);
    assert.equal(health.status, 200, 'the API answers again');
    const [node] = await nodes();
    assert.ok(node?.connected, 'the agent stays connected');
    // A real agent message still gets through a fresh control connection: the pending-hello slots are free again.
    const ws = new WebSocket(`ws://127.0.0.1:${coordinatorPort}/ws/agent`);
    const code = await new Promise<number>((resolve) => {
      setTimeout(() => ws.terminate(), 15_000).unref();
      ws.on('open', () => ws.send(encodeMessage({ type: 'heartbeat', seq: 1, sentAt: 0 })));
      ws.on('error', () => {});
      ws.on('close', (c) => resolve(c));
    });
    assert.equal(code, CloseCode.UNEXPECTED, 'answered by the hub (no hello first), not refused for lack of room');
  });
});
