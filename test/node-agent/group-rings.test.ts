/**
 * Groups with several rings, over real sockets in one process: four PeerServers on loopback, four Groups (one per
 * rank) with the rings of a 2 × 2 data × pipeline job, linked through the same hello/welcome path the agents use.
 *
 *   world [0,1,2,3]   dp.0 [0,2]   dp.1 [1,3]   pp.0 [0,1]   pp.1 [2,3]
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { silentLogger } from '../../common/log.ts';
import { encodeMessage } from '../../protocol/codec.ts';
import { CloseCode } from '../../protocol/codes.ts';
import { parseCoordinatorMessage, type GroupAssign, type RingSpecT } from '../../protocol/control.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { PROTOCOL_VERSION } from '../../protocol/version.ts';
import { AgentError } from '../../node-agent/errors.ts';
import { Group, type GroupOptions } from '../../node-agent/group.ts';
import { PeerServer } from '../../node-agent/peer-server.ts';

const TOKEN = 'group-rings-test-token';

interface Member {
  server: PeerServer;
  group: Group | null;
}

/** Starts `size` peer listeners; `groupOf(rank)` is whatever group that rank holds now. */
async function startListeners(size: number): Promise<Member[]> {
  const members: Member[] = [];
  for (let rank = 0; rank < size; rank++) {
    const member: Member = { server: null!, group: null };
    member.server = await PeerServer.listen({
      host: '127.0.0.1',
      port: 0,
      log: silentLogger,
      helloTimeoutMs: 2000,
      findGroup: async (id) => (member.group?.id === id ? member.group : undefined),
    });
    members.push(member);
  }
  return members;
}

function assignFor(members: Member[], groupId: string, rank: number, rings?: RingSpecT[]): GroupAssign {
  return {
    type: 'group.assign',
    groupId,
    token: TOKEN,
    rank,
    size: members.length,
    peers: members.map((m, r) => ({ rank: r, nodeId: `n${r}`, address: `ws://127.0.0.1:${m.server.port}` })),
    segmentBytes: 64,
    ...(rings ? { rings } : {}),
  };
}

const groupOptions: GroupOptions = { log: silentLogger, connectTimeoutMs: 5000, collectiveIdleTimeoutMs: 5000 };

/** Forms the group on every member (as group.assign would) and links all of them at once. */
async function formGroup(members: Member[], groupId: string, rings?: RingSpecT[], opts: Partial<GroupOptions> = {}): Promise<Group[]> {
  const groups = members.map((m, rank) => (m.group = new Group(assignFor(members, groupId, rank, rings), { ...groupOptions, ...opts })));
  await Promise.all(groups.map((g) => g.link()));
  return groups;
}

/** Rank r's contribution: r+1 at every element, plus the element index (so chunks differ). */
const contribution = (rank: number, length: number) => Float32Array.from({ length }, (_, i) => rank + 1 + i);
const expectedSum = (ranks: readonly number[], length: number) =>
  Float32Array.from({ length }, (_, i) => ranks.reduce((s, r) => s + r + 1 + i, 0));

/** Dials `port` with a raw peer.hello and resolves with how the listener answered. */
function helloOutcome(port: number, hello: Record<string, unknown>): Promise<{ welcomed: boolean; code: number; reason: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate: false });
    let welcomed = false;
    ws.on('open', () => ws.send(encodeMessage({ type: 'peer.hello', protocol: PROTOCOL_VERSION, groupId: 'g-rings', token: TOKEN, ...hello })));
    ws.on('message', () => {
      welcomed = true;
      ws.close();
    });
    ws.on('error', () => {});
    ws.on('close', (code, reason) => resolve({ welcomed, code, reason: reason.toString() }));
  });
}

const RINGS: RingSpecT[] = [
  { id: 'world', members: [0, 1, 2, 3] },
  { id: 'dp.0', members: [0, 2] },
  { id: 'dp.1', members: [1, 3] },
  { id: 'pp.0', members: [0, 1] },
  { id: 'pp.1', members: [2, 3] },
];

describe('a group of four with world, data-parallel and pipeline rings, over real sockets', () => {
  let members: Member[];
  let groups: Group[];

  before(async () => {
    members = await startListeners(4);
    groups = await formGroup(members, 'g-rings', RINGS);
  });

  after(async () => {
    for (const m of members ?? []) m.group?.release();
    await Promise.all((members ?? []).map((m) => m.server.close()));
  });

  test('each rank holds exactly the rings it is in, with its position in each as its ring rank', () => {
    assert.deepEqual(groups[0]!.ringIds, ['world', 'dp.0', 'pp.0']);
    assert.deepEqual(groups[3]!.ringIds, ['world', 'dp.1', 'pp.1']);
    assert.equal(groups[2]!.ringOf('dp.0').rank, 1);
    assert.equal(groups[2]!.ringOf('dp.0').size, 2);
    assert.equal(groups[2]!.ringOf('pp.1').rank, 0);
    for (const g of groups) {
      assert.equal(g.ring, g.ringOf('world'), 'the ring getter is the world ring');
      assert.equal(g.ring.rank, g.rank);
      assert.equal(g.ring.size, 4);
    }
  });

  test('asking for a ring the rank is not in fails with AGT_ERR_GROUP', () => {
    for (const ask of [() => groups[0]!.ringOf('pp.1'), () => groups[0]!.mailbox('dp.1'), () => groups[1]!.ringOf('nope')]) {
      assert.throws(ask, (err: unknown) => err instanceof AgentError && err.code === 'AGT_ERR_GROUP' && /is not in ring/.test(err.message));
    }
  });

  test('all-reduce on every ring at once gives each ring the sum over its own members', async () => {
    const length = 101; // several 64-byte segments, not a multiple of any ring size
    const runs: Array<Promise<void>> = [];
    const results: Array<{ ring: RingSpecT; rank: number; buf: Float32Array }> = [];
    for (const ring of RINGS) {
      for (const rank of ring.members) {
        const buf = contribution(rank, length);
        results.push({ ring, rank, buf });
        runs.push(groups[rank]!.ringOf(ring.id).allReduce(buf));
      }
    }
    await Promise.all(runs);
    for (const { ring, rank, buf } of results) assert.deepEqual(buf, expectedSum(ring.members, length), `rank ${rank} in ${ring.id}`);
  });

  test('the mailboxes of the pair rings carry tensors both ways between the two members', async () => {
    const pairs = RINGS.filter((r) => r.members.length === 2);
    await Promise.all(
      pairs.map(async ({ id, members: [a, b] }) => {
        const fwd = Float32Array.from({ length: 1000 }, (_, i) => a! * 1000 + i);
        const bwd = Float32Array.from({ length: 7 }, (_, i) => -b! - i / 4);
        const [gotFwd, gotBwd] = await Promise.all([
          groups[b!]!.mailbox(id).recv('fwd:0', 5000),
          groups[a!]!.mailbox(id).recv('bwd:0', 5000),
          groups[a!]!.mailbox(id).send('fwd:0', fwd),
          groups[b!]!.mailbox(id).send('bwd:0', bwd),
        ]);
        assert.deepEqual(gotFwd, fwd, `${id}: ${a} → ${b}`);
        assert.deepEqual(gotBwd, bwd, `${id}: ${b} → ${a}`);
      }),
    );
  });

  test('a mailbox message sent before the recv, and several in flight at once, arrive whole and under their tags', async () => {
    const from = groups[2]!.mailbox('pp.1');
    const to = groups[3]!.mailbox('pp.1');
    const big = Float32Array.from({ length: 1 << 20 }, (_, i) => (i % 977) / 8); // 4 MiB
    await Promise.all([from.send('act:big', big), from.send('act:small', Float32Array.of(1, 2, 3))]);
    assert.deepEqual(await to.recv('act:small', 5000), Float32Array.of(1, 2, 3));
    assert.deepEqual(await to.recv('act:big', 5000), big);
  });

  test('the world ring mailbox sends to the successor and receives from the predecessor', async () => {
    await Promise.all(groups.map((g) => g.mailbox().send('hop', Float32Array.of(g.rank))));
    const got = await Promise.all(groups.map((g) => g.mailbox('world').recv('hop', 5000)));
    assert.deepEqual(got.map((a) => a[0]), [3, 0, 1, 2]);
  });

  test('a hello from a rank that is not our predecessor in the named ring is refused with 4005', async () => {
    const port2 = members[2]!.server.port;
    // In dp.0 [0,2] rank 2's predecessor is 0; rank 1 is its predecessor in world, not in dp.0.
    const wrongPredecessor = await helloOutcome(port2, { rank: 1, ring: 'dp.0' });
    assert.equal(wrongPredecessor.welcomed, false);
    assert.equal(wrongPredecessor.code, CloseCode.UNAUTHORIZED);
    assert.match(wrongPredecessor.reason, /not rank 2's predecessor in ring dp\.0/);
    // Rank 2 is not in pp.0 at all.
    const notInRing = await helloOutcome(port2, { rank: 1, ring: 'pp.0' });
    assert.equal(notInRing.code, CloseCode.UNAUTHORIZED);
    // Without a ring the hello means 'world', where 2's predecessor is 1, not 0.
    const worldByDefault = await helloOutcome(port2, { rank: 0 });
    assert.equal(worldByDefault.code, CloseCode.UNAUTHORIZED);
    // The right predecessor for a ring that already has its link is told so, not welcomed twice.
    const second = await helloOutcome(port2, { rank: 0, ring: 'dp.0' });
    assert.equal(second.welcomed, false);
    assert.equal(second.code, CloseCode.UNEXPECTED);
    // None of it disturbed the ring.
    const bufs = [contribution(0, 5), contribution(2, 5)];
    await Promise.all([groups[0]!.ringOf('dp.0').allReduce(bufs[0]!), groups[2]!.ringOf('dp.0').allReduce(bufs[1]!)]);
    assert.deepEqual(bufs[1], expectedSum([0, 2], 5));
  });

  // Last: it takes rank 3 out of the group.
  test('when a member leaves, the rings it was in fail with AGT_ERR_LINK_CLOSED and the others go on', async () => {
    const waiting = groups[1]!.mailbox('dp.1').recv('never', 10_000);
    groups[3]!.release();
    await assert.rejects(waiting, (err: unknown) => err instanceof AgentError && err.code === 'AGT_ERR_LINK_CLOSED' && /ring dp\.1/.test(err.message));
    await assert.rejects(groups[0]!.ring.allReduce(new Float32Array(8)), (err: unknown) => err instanceof AgentError && err.code === 'AGT_ERR_LINK_CLOSED');
    const bufs = [contribution(0, 9), contribution(1, 9)];
    await Promise.all([groups[0]!.ringOf('pp.0').allReduce(bufs[0]!), groups[1]!.ringOf('pp.0').allReduce(bufs[1]!)]);
    assert.deepEqual(bufs[0], expectedSum([0, 1], 9));
    await Promise.all([groups[0]!.mailbox('pp.0').send('still', Float32Array.of(5)), groups[1]!.mailbox('pp.0').recv('still', 5000)]);
  });
});

describe('group rings: defaults, limits and bad assignments', () => {
  let members: Member[];

  before(async () => {
    members = await startListeners(3);
  });

  after(async () => {
    for (const m of members ?? []) m.group?.release();
    await Promise.all((members ?? []).map((m) => m.server.close()));
  });

  test('an assignment without rings is one world ring of every rank in order, as before', async () => {
    const groups = await formGroup(members, 'g-default');
    assert.deepEqual(groups.map((g) => g.ringIds), [['world'], ['world'], ['world']]);
    const bufs = groups.map((g) => contribution(g.rank, 10));
    await Promise.all(groups.map((g, r) => g.ring.allReduce(bufs[r]!)));
    for (const buf of bufs) assert.deepEqual(buf, expectedSum([0, 1, 2], 10));
    for (const g of groups) g.release();
  });

  test('rings of one member need no links, and a rank in no ring links nothing', async () => {
    const groups = await formGroup(members, 'g-solo', [
      { id: 'solo.0', members: [0] },
      { id: 'pair', members: [1, 0] },
    ]);
    assert.deepEqual(groups[2]!.ringIds, []);
    const solo = Float32Array.of(1, 2);
    await groups[0]!.ringOf('solo.0').allReduce(solo);
    assert.deepEqual(solo, Float32Array.of(1, 2));
    const pair = [contribution(1, 4), contribution(0, 4)];
    await Promise.all([groups[1]!.ringOf('pair').allReduce(pair[0]!), groups[0]!.ringOf('pair').allReduce(pair[1]!)]);
    assert.deepEqual(pair[0], expectedSum([0, 1], 4));
    assert.equal(groups[1]!.ringOf('pair').rank, 0, 'ring order, not rank order');
    for (const g of groups) g.release();
  });

  test('a bounded mailbox pauses its link while tensors wait, and every one still arrives', async () => {
    const groups = await formGroup(members, 'g-bounded', [{ id: 'pp', members: [0, 1] }], { mailboxLimitBytes: 1024 });
    const sent = Array.from({ length: 6 }, (_, k) => Float32Array.from({ length: 2048 }, (_, i) => k * 10_000 + i)); // 8 KiB each
    const sending = (async () => {
      for (const [k, t] of sent.entries()) await groups[0]!.mailbox('pp').send(`mb:${k}`, t);
    })();
    await new Promise((r) => setTimeout(r, 50)); // let them pile up behind the pause
    for (const [k, t] of sent.entries()) assert.deepEqual(await groups[1]!.mailbox('pp').recv(`mb:${k}`, 5000), t);
    await sending;
    for (const g of groups) g.release();
  });

  test('release fails a group still linking, instead of leaving link() to its deadline', async () => {
    // Rank 0's successor is not listening yet (nothing on port 1): rank 0 keeps redialing, as after a slow start.
    const assign = assignFor(members, 'g-lonely', 0);
    assign.peers = assign.peers.map((p) => ({ ...p, address: 'ws://127.0.0.1:1' }));
    // A deadline far beyond the time a release takes to act, even on a loaded machine (one redial backoff, ≤ 1 s).
    const connectTimeoutMs = 60_000;
    const group = new Group(assign, { ...groupOptions, connectTimeoutMs });
    const linking = group.link();
    linking.catch(() => {}); // awaited below
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    group.release();
    await assert.rejects(linking, (err: unknown) => err instanceof AgentError);
    assert.ok(Date.now() - t0 < connectTimeoutMs / 2, `link() settled ${Date.now() - t0} ms after release, not at its ${connectTimeoutMs} ms deadline`);
  });

  test('the Group constructor refuses rings that do not fit the group with AGT_ERR_GROUP naming the problem', () => {
    const bad: Array<[RingSpecT[], RegExp]> = [
      [[{ id: 'a', members: [0, 1] }, { id: 'a', members: [1, 2] }], /\/rings\/1\/id 'a' names two rings/],
      [[{ id: 'a', members: [0, 3] }], /\/rings\/0\/members\/1 \(3\) is not a rank of a group of 3/],
      [[{ id: 'a', members: [0, 1, 0] }], /rank 0 is in ring 'a' twice/],
      [[{ id: 'bad id', members: [0] }], /\/rings\/0\/id/],
      [[{ id: 'a', members: [] }], /\/rings\/0\/members must hold 1 to 65535/],
      [[], /\/rings must hold 1 to 4096/],
    ];
    for (const [rings, why] of bad) {
      assert.throws(
        () => new Group(assignFor(members, 'g-bad', 0, rings), groupOptions),
        (err: unknown) => err instanceof AgentError && err.code === 'AGT_ERR_GROUP' && why.test(err.message),
        JSON.stringify(rings),
      );
    }
    const noAddress = { ...assignFor(members, 'g-bad', 0, [{ id: 'a', members: [0, 2] }]), peers: [] };
    assert.throws(() => new Group(noAddress, groupOptions), /lacks the address of rank 2, our successor in ring a/);
  });

  test('the group.assign schema refuses malformed rings with PRT_ERR_INVALID naming the field', () => {
    const base = assignFor(members, 'g-schema', 0);
    const bad: Array<[unknown, string]> = [
      [[{ id: 'a', members: [0, 0] }], '/rings/0/members'],
      [[{ id: 'a', members: [] }], '/rings/0/members'],
      [[{ id: 'x'.repeat(65), members: [0] }], '/rings/0/id'],
      [[{ id: 'a/b', members: [0] }], '/rings/0/id'],
      [[{ id: 'a', members: [-1] }], '/rings/0/members/0'],
      [[{ id: 'a', members: [0], extra: 1 }], '/rings/0/extra'],
      [[], '/rings'],
      [Array.from({ length: 4097 }, (_, i) => ({ id: `r${i}`, members: [0] })), '/rings'],
    ];
    for (const [rings, path] of bad) {
      assert.throws(
        () => parseCoordinatorMessage({ ...base, rings }),
        (err: unknown) => err instanceof ProtocolError && err.code === 'PRT_ERR_INVALID' && err.message.includes(path),
        path,
      );
    }
    assert.doesNotThrow(() => parseCoordinatorMessage({ ...base, rings: RINGS.map((r) => ({ ...r, members: r.members.filter((m) => m < 3) })) }));
  });
});
