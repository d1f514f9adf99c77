/**
 * npx tsx --test test/integration/relay-access.test.ts
 *
 * The coordinator's relay, attacked on real processes over loopback. A real agent says --relay-only (so links to it
 * go through the relay); the attacker is a raw member of its group, joined over a bare WebSocket, so it holds the
 * group's relay ticket. The relay must refuse anyone without a ticket; and a ticket holder whose `peer.hello` is
 * wrong (group token, rank) must be refused by the agent itself, with the very close code and reason a direct link
 * gets: the relay checks who may reach the agent, the agent checks who may link.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { decodeFrame, encodeMessage, type Envelope } from '../../protocol/codec.ts';
import type { GroupAssign } from '../../protocol/control.ts';
import { PROTOCOL_VERSION } from '../../protocol/version.ts';
import type { NodeWithRole } from '../../coordinator/api/views.ts';
import { startCluster, type LocalCluster } from '../../scripts/local-cluster.ts';
import { agentExamples } from '../protocol/fixtures.ts';
import { until } from '../support/until.ts';

type Outcome = { status: number; body?: string } | { closed: [number, string] } | { welcome: true };

/** Opens `url` (with an Authorization header when given), sends `hello` once open, and says what happened. */
function tryLink(url: string, authorization: string | undefined, hello: Envelope): Promise<Outcome> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers: authorization ? { authorization } : {}, perMessageDeflate: false });
    ws.on('error', () => {});
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() });
        ws.terminate();
      });
    });
    ws.once('open', () => ws.send(encodeMessage(hello)));
    ws.on('message', (data: Buffer) => {
      if (decodeFrame(data).type === 'peer.welcome') {
        resolve({ welcome: true });
        ws.close(1000, 'done');
      }
    });
    ws.once('close', (code, reason) => resolve({ closed: [code, reason.toString()] }));
  });
}

describe('the relay, asked by strangers and by a group member with a wrong hello', () => {
  let cluster: LocalCluster;
  let raw: WebSocket;
  let assign: GroupAssign;
  let hidden: NodeWithRole;
  let rawWelcome: { nodeId: string; nodeSecret: string };

  before(async () => {
    cluster = await startCluster({ agents: 0 });
    cluster.startAgent('hidden', ['--relay-only']);
    await cluster.waitForNodes(1);
    // The attacker: an agent of the cluster (it has the join token), itself unreachable, joined over a raw socket.
    const { nodeId: _id, nodeSecret: _s, ...hello } = agentExamples.hello;
    raw = new WebSocket(`${cluster.wsUrl}/ws/agent`, { perMessageDeflate: false });
    raw.on('error', () => {});
    const assigned = new Promise<GroupAssign>((resolve) =>
      raw.on('message', (data: Buffer) => {
        const msg = decodeFrame(data);
        if (msg.type === 'welcome') rawWelcome = msg as unknown as typeof rawWelcome;
        if (msg.type === 'group.assign') resolve(msg as unknown as GroupAssign);
      }),
    );
    await new Promise((r) => raw.once('open', r));
    raw.send(encodeMessage({ ...hello, name: 'raw-member', token: cluster.token, inbound: false } as Envelope));
    const nodes = await until('both agents joined and checked', async () => {
      const list = (await cluster.api<{ nodes: NodeWithRole[] }>('GET', '/api/nodes')).nodes;
      return list.length === 2 && list.every((n) => n.reach?.state === 'relayed') ? list : undefined;
    }, 20_000);
    hidden = nodes.find((n) => n.name === 'hidden')!;
    const member = nodes.find((n) => n.name === 'raw-member')!;
    // The group never forms (the raw member links nothing); its ticket is valid while it is forming.
    cluster.api('POST', '/api/groups', { nodes: [member.id, hidden.id] }).catch(() => {});
    assign = await assigned;
  });
  after(async () => {
    raw?.terminate();
    await cluster?.stop();
  });

  const relayUrl = (to: string) => `${cluster.wsUrl}/ws/relay?to=${to}`;
  const hello = (over: Partial<{ token: string; rank: number }> = {}): Envelope =>
    ({ type: 'peer.hello', protocol: PROTOCOL_VERSION, groupId: assign.groupId, token: assign.token, rank: 0, ...over }) as Envelope;

  test('the group assignment gives the relayed member a relay ticket instead of a dialable address', () => {
    const entry = assign.peers.find((p) => p.nodeId === hidden.id)!;
    assert.ok(entry.relay?.ticket, JSON.stringify(entry));
    assert.equal(hidden.reach?.reason, 'the agent takes no inbound connections (--relay-only)');
  });

  test('without a ticket, with a wrong one, or with the cluster join token, the relay answers 401 before any upgrade', async () => {
    for (const auth of [undefined, 'Bearer not-a-ticket-0123456789', `Bearer ${cluster.token}`]) {
      const got = await tryLink(relayUrl(hidden.id), auth, hello());
      assert.ok('status' in got && got.status === 401, `${auth}: ${JSON.stringify(got)}`);
      assert.match(got.body!, /CRD_ERR_UNAUTHORIZED/);
    }
  });

  test('a wrong group token through the relay is refused by the agent exactly as on a direct link', async () => {
    const ticket = `Bearer ${assign.peers.find((p) => p.nodeId === hidden.id)!.relay!.ticket}`;
    const bad = hello({ token: 'not-the-group-token' });
    const relayed = await tryLink(relayUrl(hidden.id), ticket, bad);
    const direct = await tryLink(hidden.peerAddress, undefined, bad);
    assert.deepEqual(relayed, { closed: [4005, 'unknown group or wrong group token'] });
    assert.deepEqual(relayed, direct, 'the same refusal either way');

    // A right token with a rank that is not the agent's predecessor: refused the same way too.
    const wrongRank = hello({ rank: 1 });
    const relayedRank = await tryLink(relayUrl(hidden.id), ticket, wrongRank);
    assert.ok('closed' in relayedRank && relayedRank.closed[0] === 4005, JSON.stringify(relayedRank));
    assert.deepEqual(relayedRank, await tryLink(hidden.peerAddress, undefined, wrongRank));

    // And the right hello through the relay is welcomed: the refusals above came from the agent's checks.
    assert.deepEqual(await tryLink(relayUrl(hidden.id), ticket, hello()), { welcome: true });
  });

  test("a ticket opens nothing toward a node outside its group's relayed members", async () => {
    const ticket = `Bearer ${assign.peers.find((p) => p.nodeId === hidden.id)!.relay!.ticket}`;
    const got = await tryLink(relayUrl('node-not-in-the-group'), ticket, hello());
    assert.ok('status' in got && got.status === 401, JSON.stringify(got));
  });

  test('reachability is checked again on every reconnect: the same node id is re-decided from its new hello', async () => {
    const { nodeId: _id, nodeSecret: _s, ...hello } = agentExamples.hello;
    const reachOf = async () => (await cluster.api<{ nodes: NodeWithRole[] }>('GET', '/api/nodes')).nodes.find((n) => n.id === rawWelcome.nodeId)?.reach;
    let secret = rawWelcome.nodeSecret;
    const reconnect = async (extra: Record<string, unknown>) => {
      const ws = new WebSocket(`${cluster.wsUrl}/ws/agent`, { perMessageDeflate: false });
      ws.on('error', () => {});
      const reach = new Promise<Record<string, unknown>>((resolve) =>
        ws.on('message', (data: Buffer) => {
          const msg = decodeFrame(data) as unknown as Record<string, unknown>;
          if (msg.type === 'welcome') secret = msg.nodeSecret as string;
          if (msg.type === 'reach') resolve(msg);
        }),
      );
      await new Promise((r) => ws.once('open', r));
      ws.send(encodeMessage({ ...hello, name: 'raw-member', token: cluster.token, nodeId: rawWelcome.nodeId, nodeSecret: secret, ...extra } as Envelope));
      return { ws, reach: await reach };
    };
    // Now it says it can be dialled, at an address where nothing listens: the probe finds it unreachable.
    const a = await reconnect({ peerAddress: 'ws://127.0.0.1:1', reachKey: 'raw-reach-key-0123456789' });
    assert.equal(a.reach.reachable, false);
    assert.match(String(a.reach.reason), /ws:\/\/127\.0\.0\.1:1 closed the probe/);
    assert.equal((await reachOf())?.state, 'relayed');
    // And again with --relay-only: decided from the hello, no probe.
    const b = await reconnect({ inbound: false });
    assert.deepEqual([b.reach.reachable, b.reach.reason], [false, 'the agent takes no inbound connections (--relay-only)']);
    a.ws.terminate();
    b.ws.terminate();
  });
});
