/**
 * The coordinator's membership decisions (coordinator/cluster/membership.ts) are pure functions of (state, now), so they
 * are tested here as tables with an injected clock value: no hub, no sockets, no timers.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decideAdmission, findDead, type AdmitDecision, type SweepNode } from '../../coordinator/cluster/membership.ts';
import type { NodeStatus } from '../../coordinator/store/state-store.ts';

const HASH = 'a'.repeat(64);
const OTHER_HASH = 'b'.repeat(64);

describe('decideAdmission', () => {
  const cases: Array<{
    name: string;
    claim: { nodeId?: string; secretHash?: string };
    existing: { id: string; secretHash: string; status: NodeStatus } | undefined;
    expect: AdmitDecision['action'];
  }> = [
    { name: 'an agent that presents no node id gets a new identity', claim: {}, existing: undefined, expect: 'new' },
    {
      name: 'an agent that presents only a secret but no node id gets a new identity',
      claim: { secretHash: HASH },
      existing: undefined,
      expect: 'new',
    },
    {
      name: 'an agent that presents an id the coordinator does not know gets a new identity',
      claim: { nodeId: 'node-lost', secretHash: HASH },
      existing: undefined,
      expect: 'new',
    },
    {
      name: 'an agent that presents a known id with its matching secret reclaims that id',
      claim: { nodeId: 'node-1', secretHash: HASH },
      existing: { id: 'node-1', secretHash: HASH, status: 'alive' },
      expect: 'reclaim',
    },
    {
      name: 'an agent that presents a known id with a wrong secret is refused',
      claim: { nodeId: 'node-1', secretHash: OTHER_HASH },
      existing: { id: 'node-1', secretHash: HASH, status: 'alive' },
      expect: 'refuse',
    },
    {
      name: 'an agent that presents a known id without any secret is refused',
      claim: { nodeId: 'node-1' },
      existing: { id: 'node-1', secretHash: HASH, status: 'alive' },
      expect: 'refuse',
    },
    {
      name: 'an agent that presents a known id with an empty secret hash is refused',
      claim: { nodeId: 'node-1', secretHash: '' },
      existing: { id: 'node-1', secretHash: HASH, status: 'alive' },
      expect: 'refuse',
    },
    {
      name: 'an agent that presents a known dead id with its matching secret reclaims that id',
      claim: { nodeId: 'node-1', secretHash: HASH },
      existing: { id: 'node-1', secretHash: HASH, status: 'dead' },
      expect: 'reclaim',
    },
    {
      name: 'an agent that presents a revoked id with its last secret is refused as revoked',
      claim: { nodeId: 'node-1', secretHash: HASH },
      existing: { id: 'node-1', secretHash: '', status: 'revoked' },
      expect: 'revoked',
    },
    {
      name: 'an agent that presents a revoked id with an empty secret hash is refused as revoked, not reclaimed',
      claim: { nodeId: 'node-1', secretHash: '' },
      existing: { id: 'node-1', secretHash: '', status: 'revoked' },
      expect: 'revoked',
    },
    {
      name: 'an agent that presents a revoked id without any secret is refused as revoked',
      claim: { nodeId: 'node-1' },
      existing: { id: 'node-1', secretHash: '', status: 'revoked' },
      expect: 'revoked',
    },
    {
      name: 'an agent that presents no id is given a new identity even if revoked nodes exist',
      claim: {},
      existing: undefined,
      expect: 'new',
    },
  ];

  for (const c of cases) {
    test(c.name, () => {
      const decision = decideAdmission(c.claim, c.existing);
      assert.equal(decision.action, c.expect, JSON.stringify(decision));
      if (decision.action === 'reclaim') assert.equal(decision.id, c.existing!.id);
      if (decision.action === 'refuse') {
        assert.ok(decision.reason.includes(c.claim.nodeId!), `the reason names the id: ${decision.reason}`);
        assert.match(decision.reason, /secret/);
      }
      if (decision.action === 'revoked') {
        assert.ok(decision.reason.includes(c.claim.nodeId!), `the reason names the id: ${decision.reason}`);
        assert.match(decision.reason, /revoked/);
      }
    });
  }

  test('a refusal never reveals the stored secret hash', () => {
    const decision = decideAdmission({ nodeId: 'node-1', secretHash: OTHER_HASH }, { id: 'node-1', secretHash: HASH, status: 'alive' });
    assert.equal(decision.action, 'refuse');
    assert.ok(decision.action === 'refuse' && !decision.reason.includes(HASH));
  });
});

describe('findDead', () => {
  const NOW = 1_700_000_000_000;
  const TIMEOUT = 5000;

  const cases: Array<{ name: string; nodes: SweepNode[]; dead: string[] }> = [
    { name: 'no nodes means nobody is dead', nodes: [], dead: [] },
    {
      name: 'an alive node heard from just now is not dead',
      nodes: [{ id: 'fresh', status: 'alive', lastSeenMs: NOW }],
      dead: [],
    },
    {
      name: 'an alive node silent for exactly the timeout is not yet dead',
      nodes: [{ id: 'boundary', status: 'alive', lastSeenMs: NOW - TIMEOUT }],
      dead: [],
    },
    {
      name: 'an alive node silent for one millisecond past the timeout is dead',
      nodes: [{ id: 'late', status: 'alive', lastSeenMs: NOW - TIMEOUT - 1 }],
      dead: ['late'],
    },
    {
      name: 'nodes already dead, left or revoked are ignored however long they have been silent',
      nodes: [
        { id: 'was-dead', status: 'dead', lastSeenMs: 0 },
        { id: 'has-left', status: 'left', lastSeenMs: NOW - 10 * TIMEOUT },
        { id: 'was-revoked', status: 'revoked', lastSeenMs: NOW - 10 * TIMEOUT },
      ],
      dead: [],
    },
    {
      name: 'only the alive nodes past the timeout are reported, in input order',
      nodes: [
        { id: 'a', status: 'alive', lastSeenMs: NOW - 60_000 },
        { id: 'b', status: 'alive', lastSeenMs: NOW - 100 },
        { id: 'c', status: 'dead', lastSeenMs: NOW - 60_000 },
        { id: 'd', status: 'alive', lastSeenMs: NOW - TIMEOUT - 1 },
        { id: 'e', status: 'left', lastSeenMs: NOW - 60_000 },
        { id: 'f', status: 'alive', lastSeenMs: NOW - TIMEOUT },
      ],
      dead: ['a', 'd'],
    },
    {
      name: 'a node whose last heartbeat lies in the future (clock skew) is not dead',
      nodes: [{ id: 'future', status: 'alive', lastSeenMs: NOW + 60_000 }],
      dead: [],
    },
  ];

  for (const c of cases) {
    test(c.name, () => {
      const found = findDead(c.nodes, NOW, TIMEOUT);
      assert.deepEqual(
        found.map((d) => d.id),
        c.dead,
      );
    });
  }

  test('the reason says how long the node was silent and names the timeout', () => {
    const [d] = findDead([{ id: 'x', status: 'alive', lastSeenMs: NOW - 7250 }], NOW, TIMEOUT);
    assert.ok(d);
    assert.match(d.reason, /no heartbeat for 7\.3 s/);
    assert.match(d.reason, /timeout 5 s/);
  });

  test('the same nodes are dead or not depending only on the injected clock', () => {
    const nodes: SweepNode[] = [{ id: 'n', status: 'alive', lastSeenMs: 1000 }];
    assert.deepEqual(findDead(nodes, 1000 + TIMEOUT, TIMEOUT), []);
    assert.deepEqual(
      findDead(nodes, 1000 + TIMEOUT + 1, TIMEOUT).map((d) => d.id),
      ['n'],
    );
  });
});
