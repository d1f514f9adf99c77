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
import type { CoordinatorMetrics } from '../../coordinator/metrics.ts';

/** Four connected agents; each answers a group.assign with group.ready on the next tick. */
function fakeHub(nodes = 4, relayed: ReadonlySet<number> = new Set()) {
  const sent: Array<{ nodeId: string; msg: CoordinatorMessage }> = [];
  let onMessage: (nodeId: string, msg: AgentMessage, attachment: Buffer | undefined) => void = () => {};
  const hub = {
    onAgentMessage: (l: typeof onMessage) => void (onMessage = l),
    onNodeDown: () => {},
    isConnected: () => true,
    availableNodes: () => Array.from({ length: nodes }, (_, i) => ({
      id: `n${i}`, name: `agent-${i}`, peerAddress: `ws://10.0.0.${i}:7070`,
      reach: relayed.has(i) ? { state: 'relayed', reason: 'no answer', checkedAtMs: 0, relay: 'coordinator' } : { state: 'direct', reason: 'answered', checkedAtMs: 0 },
    })),
    reachSettled: async () => {},
    send(nodeId: string, msg: CoordinatorMessage) {
      parseCoordinatorMessage(msg as never); // what the agent would check
      sent.push({ nodeId, msg });
      if (msg.type === 'group.assign') setImmediate(() => onMessage(nodeId, { type: 'group.ready', groupId: msg.groupId, rank: msg.rank }, undefined));
    },
  };
  const cfg = { groupFormTimeoutMs: 2000, collectiveTimeoutMs: 2000 } as CoordinatorConfig;
  const manager = new GroupManager(hub as unknown as AgentHub, cfg, silentLogger, {} as CoordinatorMetrics);
  const assigns = () => sent.filter((s) => s.msg.type === 'group.assign').map((s) => s.msg as GroupAssign);
  return { manager, assigns };
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
