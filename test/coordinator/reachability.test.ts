/**
 * npx tsx --test test/coordinator/reachability.test.ts
 *
 * The coordinator's reachability check (coordinator/cluster/reachability.ts) against a real agent peer server on
 * loopback: only the agent holding the hello's reach key passes; another agent at the address (a stale or wrong
 * address), a closed port and a port that never answers all count as unreachable. And the decision as a table.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { silentLogger } from '../../common/log.ts';
import { decideReach, probePeer, reachProof } from '../../coordinator/cluster/reachability.ts';
import { PeerServer } from '../../node-agent/peer-server.ts';

const KEY = 'the-agents-reach-key-0123456789';

describe('probing an agent peer address', () => {
  let peers: PeerServer;
  let silent: Server;
  const held: Socket[] = [];
  before(async () => {
    peers = await PeerServer.listen({
      host: '127.0.0.1', port: 0, log: silentLogger, helloTimeoutMs: 2000,
      findGroup: async () => undefined,
      proveReach: (challenge) => reachProof(KEY, challenge),
    });
    silent = createServer((s) => held.push(s)); // accepts, never answers: a black hole
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  });
  after(async () => {
    for (const s of held) s.destroy();
    silent.close();
    await peers.close();
  });

  test('the agent that holds the reach key answers, and the round trip is measured', async () => {
    const outcome = await probePeer(`ws://127.0.0.1:${peers.port}`, KEY, { log: silentLogger });
    assert.equal(outcome.ok, true, JSON.stringify(outcome));
    assert.ok(outcome.ok && outcome.rttMs >= 0 && outcome.rttMs < 3000);
  });

  test('another agent at the address (a stale or wrong one) fails the proof', async () => {
    const outcome = await probePeer(`ws://127.0.0.1:${peers.port}`, 'another-agents-key', { log: silentLogger });
    assert.deepEqual(outcome, { ok: false, reason: `ws://127.0.0.1:${peers.port} is another agent (wrong proof): the address is stale or wrong` });
  });

  test('a closed port and a port that never answers count as unreachable, the latter after the timeout', async () => {
    const closed = await probePeer('ws://127.0.0.1:1', KEY, { log: silentLogger });
    assert.equal(closed.ok, false);
    assert.match((closed as { reason: string }).reason, /closed the probe \(ECONNREFUSED/);
    const started = Date.now();
    const blackHole = await probePeer(`ws://127.0.0.1:${(silent.address() as AddressInfo).port}`, KEY, { log: silentLogger, timeoutMs: 300 });
    assert.equal(blackHole.ok, false);
    assert.match((blackHole as { reason: string }).reason, /no answer from .* within 300 ms/);
    assert.ok(Date.now() - started < 2000);
  });
});

test('decideReach: --relay-only and a failed probe relay, a passed probe or an older agent is dialled directly, no probe yet is checking', () => {
  const cases: Array<[Parameters<typeof decideReach>[0], Parameters<typeof decideReach>[1], string]> = [
    [{ inbound: false, reachKey: KEY }, undefined, 'relayed'],
    [{ inbound: false, reachKey: KEY }, { ok: true, rttMs: 1 }, 'relayed'],
    [{ reachKey: KEY }, undefined, 'checking'],
    [{ reachKey: KEY }, { ok: true, rttMs: 1.234 }, 'direct'],
    [{ reachKey: KEY }, { ok: false, reason: 'no answer' }, 'relayed'],
    [{}, undefined, 'direct'],
  ];
  for (const [hello, probe, state] of cases) {
    const reach = decideReach(hello, probe, 1000);
    assert.equal(reach.state, state, JSON.stringify({ hello, probe }));
    assert.equal(reach.checkedAtMs, 1000);
    assert.equal(reach.relay, state === 'relayed' ? 'coordinator' : undefined);
  }
  assert.equal(decideReach({ reachKey: KEY }, { ok: false, reason: 'no answer from x within 3000 ms' }, 0).reason, 'no answer from x within 3000 ms');
  assert.equal(decideReach({ reachKey: KEY }, { ok: true, rttMs: 1.234 }, 0).probeRttMs, 1.23);
});
