/**
 * GroupManager.form with rings, against an in-memory hub whose agents answer group.assign with group.ready.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../common/log.ts';
import type { AgentMessage, CoordinatorMessage, GroupAssign } from '../../protocol/control.ts';
import { parseCoordinatorMessage } from '../../protocol/control.ts';
import type { AgentHub } from '../../coordinator/cluster/agent-hub.ts';
import type { CoordinatorConfig } from '../../coordinator/config.ts';
import { CoordinatorError } from '../../coordinator/errors.ts';
import { GroupManager } from '../../coordinator/cluster/groups.ts';
import { pickRelayAgent } from '../../coordinator/cluster/relay-choice.ts';
import type { CoordinatorMetrics } from '../../coordinator/metrics.ts';

/** Four connected agents; each answers a group.assign with group.ready on the next tick. */
function fakeHub(nodes = 4, relayed: ReadonlySet<number> = new Set(), opts: { relay?: 'agent' | 'coordinator'; probeRttMs?: number[] } = {}) {
  const sent: Array<{ nodeId: string; msg: CoordinatorMessage }> = [];
  let onMessage: (nodeId: string, msg: AgentMessage, attachment: Buffer | undefined) => void = () => {};
  const hub = {
    onAgentMessage: (l: typeof onMessage) => void (onMessage = l),
    onNodeDown: () => {},
    isConnected: () => true,
    availableNodes: () => Array.from({ length: nodes }, (_, i) => ({
      id: `n${i}`, name: `agent-${i}`, peerAddress: `ws://10.0.0.${i}:7070`,
      capabilities: { cores: 4 },
      reach: relayed.has(i)
        ? { state: 'relayed', reason: 'no answer', checkedAtMs: 0, relay: 'coordinator' }
        : { state: 'direct', reason: 'answered', checkedAtMs: 0, ...(opts.probeRttMs?.[i] !== undefined ? { probeRttMs: opts.probeRttMs[i] } : {}) },
    })),
    reachSettled: async () => {},
    send(nodeId: string, msg: CoordinatorMessage) {
      parseCoordinatorMessage(msg as never); // what the agent would check
      sent.push({ nodeId, msg });
      if (msg.type === 'group.assign') setImmediate(() => onMessage(nodeId, { type: 'group.ready', groupId: msg.groupId, rank: msg.rank }, undefined));
    },
  };
  const cfg = { groupFormTimeoutMs: 2000, collectiveTimeoutMs: 2000, relay: opts.relay ?? 'coordinator' } as CoordinatorConfig;
  const manager = new GroupManager(hub as unknown as AgentHub, cfg, silentLogger, {} as CoordinatorMetrics);
  const assigns = () => sent.filter((s) => s.msg.type === 'group.assign').map((s) => s.msg as GroupAssign);
  const tell = (nodeId: string, msg: AgentMessage) => onMessage(nodeId, msg, undefined);
  return { manager, assigns, sent, tell };
}

const RINGS = [
  { id: 'world', members: [0, 1, 2, 3] },
  { id: 'dp.0', members: [0, 2] },
  { id: 'dp.1', members: [1, 3] },
  { id: 'pp.0', members: [0, 1] },
  { id: 'pp.1', members: [2, 3] },
];

test('form with rings sends them to every member in group.assign, records them, and resolves when all are ready', async () => {
  const { manager, assigns } = fakeHub();
  const info = await manager.form({ size: 4, segmentBytes: 1024, rings: RINGS });
  assert.equal(info.state, 'ready');
  assert.deepEqual(info.rings, RINGS);
  assert.equal(assigns().length, 4);
  for (const a of assigns()) assert.deepEqual(a.rings, RINGS);
});

test('form without rings sends no rings field and records the one world ring of every rank', async () => {
  const { manager, assigns } = fakeHub();
  const info = await manager.form({ size: 3, segmentBytes: 1024 });
  assert.deepEqual(info.rings, [{ id: 'world', members: [0, 1, 2] }]);
  for (const a of assigns()) assert.equal('rings' in a, false);
});

test('form refuses rings that do not fit the group with CRD_ERR_BAD_REQUEST naming each problem, before assigning anything', async () => {
  const cases: Array<[Array<{ id: string; members: number[] }>, RegExp]> = [
    [[{ id: 'a', members: [0, 1] }, { id: 'a', members: [2, 3] }], /\/rings\/1\/id 'a' names two rings/],
    [[{ id: 'a', members: [0, 4] }], /\/rings\/0\/members\/1 \(4\) is not a rank of a group of 4/],
    [[{ id: 'a', members: [1, 1] }], /rank 1 is in ring 'a' twice/],
    [[{ id: 'no spaces', members: [0] }], /\/rings\/0\/id/],
    [[{ id: 'a', members: [] }], /\/rings\/0\/members must hold/],
    [[], /\/rings must hold 1 to 4096/],
  ];
  for (const [rings, why] of cases) {
    const { manager, assigns } = fakeHub();
    await assert.rejects(
      manager.form({ size: 4, segmentBytes: 1024, rings }),
      (err: unknown) => err instanceof CoordinatorError && err.code === 'CRD_ERR_BAD_REQUEST' && err.statusCode === 400 && err.details!.some((d) => why.test(d)),
    );
    assert.equal(assigns().length, 0);
    assert.equal(manager.list().length, 0);
  }
});

test('a member the hub found unreachable is given to every member with the group relay ticket, which reaches only it and only while the group lives', async () => {
  const { manager, assigns } = fakeHub(3, new Set([1]));
  const info = await manager.form({ size: 3, segmentBytes: 1024 });
  assert.deepEqual(info.members.map((m) => m.relay ?? 'direct'), ['direct', 'coordinator', 'direct']);
  const tickets = new Set(assigns().map((a) => a.peers.find((p) => p.nodeId === 'n1')!.relay?.ticket));
  assert.equal(tickets.size, 1, 'one ticket per group, the same for every member');
  const [ticket] = [...tickets];
  assert.ok(ticket);
  for (const a of assigns()) assert.ok(a.peers.every((p) => p.nodeId === 'n1' || p.relay === undefined), 'the others are dialled directly');
  assert.equal(manager.ticketGroup(ticket, 'n1'), info.id);
  assert.equal(manager.ticketGroup(ticket, 'n0'), undefined, 'not toward a member that is dialled directly');
  assert.equal(manager.ticketGroup('another-ticket', 'n1'), undefined);
  manager.release(info.id);
  assert.equal(manager.ticketGroup(ticket, 'n1'), undefined, 'void once the group is released');
});

test('a group with no unreachable member issues no relay ticket', async () => {
  const { manager, assigns } = fakeHub(2);
  await manager.form({ size: 2, segmentBytes: 1024 });
  for (const a of assigns()) assert.ok(a.peers.every((p) => p.relay === undefined));
});

test('with --relay agent, the reachable member with the lowest probe round trip relays; only it may ask for relay.open, which names its URL', async () => {
  // n1 and n3 cannot be dialled; n0 (9 ms), n2 (2 ms) can: n2 relays.
  const { manager, assigns, sent, tell } = fakeHub(4, new Set([1, 3]), { relay: 'agent', probeRttMs: [9, 0, 2, 0] });
  const info = await manager.form({ size: 4, segmentBytes: 1024 });
  assert.deepEqual(info.members.map((m) => m.relay ?? 'direct'), ['direct', 'agent-2', 'direct', 'agent-2']);
  for (const a of assigns()) {
    for (const p of a.peers) {
      if (p.nodeId === 'n1' || p.nodeId === 'n3') assert.equal(p.relay?.url, 'ws://10.0.0.2:7070/ws/relay');
      else assert.equal(p.relay, undefined);
    }
    if (a.rank === 2) assert.deepEqual(a.relayFor?.targets, ['n1', 'n3'], 'the relay agent is told whom it relays for');
    else assert.equal(a.relayFor, undefined, 'only the relay agent');
  }
  const ticket = assigns()[0]!.peers[1]!.relay!.ticket;
  assert.equal(assigns().find((a) => a.rank === 2)!.relayFor!.ticket, ticket);
  assert.equal(manager.ticketGroup(ticket, 'n1'), undefined, "the coordinator's relay does not take a group an agent relays");
  assert.ok(manager.isAgentRelayOf('n2', 'n1') && !manager.isAgentRelayOf('n0', 'n1'));

  const opens = () => sent.filter((s) => s.msg.type === 'relay.open');
  tell('n0', { type: 'relay.request', groupId: info.id, to: 'n1', session: 'rs-1', key: 'k1' }); // not the relay
  tell('n2', { type: 'relay.request', groupId: info.id, to: 'n0', session: 'rs-2', key: 'k2' }); // not relayed
  tell('n2', { type: 'relay.request', groupId: 'g-other', to: 'n1', session: 'rs-3', key: 'k3' }); // another group
  assert.equal(opens().length, 0);
  tell('n2', { type: 'relay.request', groupId: info.id, to: 'n3', session: 'rs-4', key: 'k4' });
  assert.deepEqual(opens(), [{ nodeId: 'n3', msg: { type: 'relay.open', session: 'rs-4', key: 'k4', groupId: info.id, url: 'ws://10.0.0.2:7070/ws/relay' } }]);
  manager.release(info.id);
  tell('n2', { type: 'relay.request', groupId: info.id, to: 'n3', session: 'rs-5', key: 'k5' });
  assert.equal(opens().length, 1, 'nothing once the group is released');
});

test('with --relay agent but no member the probe reached, the coordinator relays', async () => {
  const { manager, assigns } = fakeHub(3, new Set([1]), { relay: 'agent' }); // direct but never probed (older agents): not picked
  const info = await manager.form({ size: 3, segmentBytes: 1024 });
  assert.deepEqual(info.members.map((m) => m.relay ?? 'direct'), ['direct', 'coordinator', 'direct']);
  assert.ok(assigns().every((a) => a.relayFor === undefined && a.peers.every((p) => p.relay?.url === undefined)));
});

test('pickRelayAgent: probed and dialable only, lowest round trip, more cores on a tie', () => {
  const c = (nodeId: string, state: string, probeRttMs: number | undefined, cores: number) => ({ nodeId, cores, reach: { state, ...(probeRttMs !== undefined ? { probeRttMs } : {}) } });
  assert.equal(pickRelayAgent([c('a', 'relayed', undefined, 8), c('b', 'direct', undefined, 8)]), undefined);
  assert.equal(pickRelayAgent([c('a', 'direct', 5, 8), c('b', 'direct', 1, 2), c('c', 'relayed', undefined, 64)])?.nodeId, 'b');
  assert.equal(pickRelayAgent([c('a', 'direct', 1, 2), c('b', 'direct', 1, 16)])?.nodeId, 'b');
});

test('with --relay agent and no member that can be dialled, an idle agent that can relays: relay.grant, ended by group.release', async () => {
  // n0 and n1 form the group, both unreachable; n2 and n3 are idle, n3 with the faster probe.
  const { manager, assigns, sent, tell } = fakeHub(4, new Set([0, 1]), { relay: 'agent', probeRttMs: [0, 0, 7, 3] });
  const info = await manager.form({ nodeIds: ['n0', 'n1'], segmentBytes: 1024 });
  assert.deepEqual(info.members.map((m) => m.relay), ['agent-3', 'agent-3']);
  const grants = sent.filter((s) => s.msg.type === 'relay.grant');
  assert.equal(grants.length, 1);
  assert.equal(grants[0]!.nodeId, 'n3');
  const grant = grants[0]!.msg as Extract<CoordinatorMessage, { type: 'relay.grant' }>;
  assert.deepEqual(grant.targets, ['n0', 'n1']);
  for (const a of assigns()) {
    assert.equal(a.relayFor, undefined);
    for (const p of a.peers) assert.deepEqual(p.relay, { ticket: grant.ticket, url: 'ws://10.0.0.3:7070/ws/relay' });
  }
  tell('n3', { type: 'relay.request', groupId: info.id, to: 'n0', session: 'rs-1', key: 'k1' });
  assert.equal(sent.filter((s) => s.msg.type === 'relay.open' && s.nodeId === 'n0').length, 1);
  manager.release(info.id);
  assert.ok(sent.some((s) => s.nodeId === 'n3' && s.msg.type === 'group.release' && s.msg.groupId === info.id), 'the relay is released too');
});

test('a member that can be dialled is preferred to a faster idle agent', async () => {
  const { manager } = fakeHub(4, new Set([1]), { relay: 'agent', probeRttMs: [9, 0, 0, 1] });
  const info = await manager.form({ nodeIds: ['n0', 'n1'], segmentBytes: 1024 });
  assert.deepEqual(info.members.map((m) => m.relay ?? 'direct'), ['direct', 'agent-0']);
});
