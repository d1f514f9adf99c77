/**
 * Hostile input against a REAL agent process, from a fake coordinator: a small ws server in this test speaking the
 * control protocol (MessageConnection, encodeMessage) welcomes `bin/node-agent.js join`, assigns it groups whose
 * other rank this test plays, and then misbehaves on both of the agent's planes:
 *
 * - the peer data plane: fuzzed and semantically wrong ring.data / pipe.data / stream.data on a link that passed
 *   peer.hello (bad offsets and counts, attachment length mismatches, phases, hops, seq far ahead, reused tags,
 *   oversized frames), idle and during a running collective; each is refused with its close code, a collective
 *   fails at once rather than at its timeout, and afterwards a fresh group still runs a verified all-reduce;
 * - peer authentication: a foreign group's token, an unknown group, a released group's token (a replay), a rank
 *   that is not our predecessor (identity theft), a second link claiming the predecessor's place;
 * - the control channel: malformed and mutated coordinator messages of every type; the agent closes with the
 *   predicted code, never crashes, and reconnects reclaiming its node id with its secret.
 *
 * Run: npx tsx --test test/integration/hostile-agent.test.ts
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { spawnProc, waitForLine, type Proc } from '../../scripts/local-cluster.ts';
import { decodeFrame, encodeMessage, type Envelope } from '../../protocol/codec.ts';
import { CloseCode } from '../../protocol/codes.ts';
import { MessageConnection } from '../../protocol/connection.ts';
import { MAX_CONTROL_ATTACHMENT, MAX_CONTROL_FRAME, parseAgentMessage, parseCoordinatorMessage, type AgentMessage, type CoordinatorMessage, type Hello } from '../../protocol/control.ts';
import { ProtocolError, ProtocolErrorCodes } from '../../protocol/errors.ts';
import { MAX_PEER_ATTACHMENT, MAX_PEER_FRAME, parsePeerMessage, type PeerMessage } from '../../protocol/peer.ts';
import { clientOptions, serverOptions } from '../../protocol/ws-options.ts';
import { silentLogger } from '../../common/log.ts';
import { Ring } from '../../node-agent/collectives/ring.ts';
import { runCollective } from '../../node-agent/collective-runner.ts';
import type { Group } from '../../node-agent/group.ts';
import { coordinatorExamples, families } from '../protocol/fixtures.ts';
import { mutationsOf } from '../protocol/mutations.ts';

const AGENT = new URL('../../bin/node-agent.js', import.meta.url).pathname;
const TOKEN = 'hostile-agent-cluster-token';
const NODE_ID = 'node-fake-1';
const NODE_SECRET = 'fake-node-secret';
const PEER_HELLO_TIMEOUT_MS = 1500;
const SEGMENT_BYTES = 1024;

type Control = MessageConnection<AgentMessage, CoordinatorMessage>;
type PeerConn = MessageConnection<PeerMessage, PeerMessage>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, ms: number, get: () => T | undefined): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = get();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

/** The coordinator's side of the control channel, played by the test. */
class FakeCoordinator {
  readonly server = createServer((_req, res) => res.writeHead(404).end());
  readonly wss = new WebSocketServer({ server: this.server, path: '/ws/agent', ...serverOptions(MAX_CONTROL_FRAME) });
  readonly hellos: Hello[] = [];
  readonly inbox: AgentMessage[] = [];
  /** The live control connection and the close code the agent ended each earlier one with. */
  current: { ws: WebSocket; conn: Control; closed: Promise<number> } | null = null;
  port = 0;

  async start(): Promise<void> {
    this.wss.on('connection', (ws) => {
      let closed!: (code: number) => void;
      const entry = { ws, conn: null as unknown as Control, closed: new Promise<number>((r) => (closed = r)) };
      ws.on('close', (code) => closed(code));
      entry.conn = new MessageConnection(ws, {
        parse: parseAgentMessage,
        label: 'fake coordinator',
        log: silentLogger,
        maxAttachmentBytes: MAX_CONTROL_ATTACHMENT,
        firstType: 'hello',
        onMessage: (msg) => {
          if (msg.type === 'hello') {
            this.hellos.push(msg);
            this.current = entry;
            entry.conn.send({ type: 'welcome', protocol: '1.0', clusterId: 'fake', nodeId: NODE_ID, nodeSecret: NODE_SECRET, heartbeatMs: 1000, heartbeatTimeoutMs: 60_000 });
          } else if (msg.type === 'heartbeat') entry.conn.send({ type: 'heartbeat.ack', seq: msg.seq });
          else this.inbox.push(msg);
        },
      });
    });
    this.port = await listen(this.server);
  }

  send(msg: CoordinatorMessage): void {
    this.current!.conn.send(msg);
  }

  /** Takes the first message of the inbox that `pred` accepts, waiting up to `ms` for one. */
  take<T extends AgentMessage>(what: string, ms: number, pred: (m: AgentMessage) => m is T): Promise<T> {
    return until(what, ms, () => {
      const i = this.inbox.findIndex(pred);
      return i < 0 ? undefined : (this.inbox.splice(i, 1)[0] as T);
    });
  }

  close(): Promise<void> {
    for (const ws of this.wss.clients) ws.terminate();
    return new Promise((r) => this.wss.close(() => this.server.close(() => r())));
  }
}

/** Rank 0's peer listener, played by the test: welcomes every hello and keeps the link for the group it names. */
class FakePeerListener {
  readonly server = createServer();
  readonly wss = new WebSocketServer({ server: this.server, ...serverOptions(MAX_PEER_FRAME) });
  readonly links = new Map<string, { conn: PeerConn; onData: ((msg: PeerMessage, payload: Buffer | undefined) => void) | null }>();
  port = 0;

  async start(): Promise<void> {
    this.wss.on('connection', (ws) => {
      let groupId = '';
      const conn: PeerConn = new MessageConnection(ws, {
        parse: parsePeerMessage,
        label: 'test peer listener',
        log: silentLogger,
        maxAttachmentBytes: MAX_PEER_ATTACHMENT,
        firstType: 'peer.hello',
        onMessage: (msg, payload) => {
          if (msg.type === 'peer.hello') {
            groupId = msg.groupId;
            this.links.set(groupId, { conn, onData: null });
            conn.send({ type: 'peer.welcome', rank: 0 });
          } else this.links.get(groupId)?.onData?.(msg, payload);
        },
      });
    });
    this.port = await listen(this.server);
  }

  close(): Promise<void> {
    for (const ws of this.wss.clients) ws.terminate();
    return new Promise((r) => this.wss.close(() => this.server.close(() => r())));
  }
}

interface Dialed {
  ws: WebSocket;
  welcome: Promise<Envelope | undefined>; // undefined when closed first
  closed: Promise<{ code: number; reason: string; ms: number }>;
}

/** Dials the agent's peer listener and sends `hello` (raw: the test decides every byte). */
function dial(url: string, hello: Envelope | Buffer): Dialed {
  const t0 = Date.now();
  const ws = new WebSocket(url, clientOptions(2 * MAX_PEER_FRAME));
  ws.on('error', () => {});
  let welcomed!: (e: Envelope | undefined) => void;
  const welcome = new Promise<Envelope | undefined>((r) => (welcomed = r));
  ws.once('message', (data: Buffer) => welcomed(decodeFrame(data)));
  const closed = new Promise<{ code: number; reason: string; ms: number }>((r) =>
    ws.on('close', (code, reason) => {
      welcomed(undefined);
      r({ code, reason: reason.toString(), ms: Date.now() - t0 });
    }),
  );
  ws.on('open', () => ws.send(Buffer.isBuffer(hello) ? hello : encodeMessage(hello)));
  setTimeout(() => ws.terminate(), 20_000).unref();
  return { ws, welcome, closed };
}

/** What the agent should do with a control frame after the handshake: close with a code, or keep the link. */
function predictControl(frame: Buffer | string): number | 'keep' {
  if (typeof frame === 'string') return CloseCode.MALFORMED;
  if (frame.byteLength > MAX_CONTROL_FRAME) return CloseCode.MESSAGE_TOO_BIG;
  try {
    parseCoordinatorMessage(decodeFrame(frame));
    return 'keep';
  } catch (err) {
    if (err instanceof ProtocolError) return err.closeCode;
    throw err;
  }
}

describe('a real agent under a hostile coordinator and hostile peers', () => {
  const coordinator = new FakeCoordinator();
  const listener = new FakePeerListener();
  let agent: Proc;
  let peerUrl: string;
  let groupSeq = 0;

  const agentHello = (): Hello => coordinator.hellos.at(-1)!;

  /** Assigns the agent rank 1 of a fresh group (test = rank 0, or ranks 0 and 2 with size 3) and waits until its outbound link to us is up. */
  async function assign(size = 2): Promise<{ groupId: string; token: string }> {
    const groupId = `g${++groupSeq}`;
    const token = `token-${groupId}`;
    const peers = [
      { rank: 0, nodeId: 'test', address: `ws://127.0.0.1:${listener.port}` },
      { rank: 1, nodeId: NODE_ID, address: peerUrl },
      ...(size === 3 ? [{ rank: 2, nodeId: 'test-2', address: `ws://127.0.0.1:${listener.port}` }] : []),
    ];
    coordinator.send({ type: 'group.assign', groupId, token, rank: 1, size, peers, segmentBytes: SEGMENT_BYTES });
    await until(`the agent's link to us in ${groupId}`, 10_000, () => (listener.links.get(groupId) ? true : undefined));
    return { groupId, token };
  }

  const helloFor = (groupId: string, token: string, rank = 0, extra: Record<string, unknown> = {}): Envelope => ({ type: 'peer.hello', protocol: '1.0', groupId, token, rank, ...extra });

  /** A fresh group with both links up: returns our dialed link into the agent (its inbound link from rank 0). */
  async function linkedGroup(): Promise<{ groupId: string; token: string; link: Dialed }> {
    const { groupId, token } = await assign();
    const link = dial(peerUrl, helloFor(groupId, token));
    assert.equal((await link.welcome)?.type, 'peer.welcome', `${groupId}: our hello was welcomed`);
    await coordinator.take(`group.ready for ${groupId}`, 10_000, (m): m is Extract<AgentMessage, { type: 'group.ready' }> => m.type === 'group.ready' && m.groupId === groupId);
    return { groupId, token, link };
  }

  before(async () => {
    await coordinator.start();
    await listener.start();
    agent = spawnProc(
      [AGENT, 'join', `ws://127.0.0.1:${coordinator.port}/ws/agent`, '--token', TOKEN, '--name', 'hostile-agent', '--peer-listen', '127.0.0.1', '--backend', 'wasm', '--collective-timeout', '8000', '--peer-hello-timeout', String(PEER_HELLO_TIMEOUT_MS)],
      { env: { LOG_LEVEL: 'warn' }, stderr: 'capture' },
    );
    await until('the agent to join', 60_000, () => {
      if (agent.child.exitCode !== null) throw new Error(`agent exited ${agent.child.exitCode}:\n${agent.output.join('\n')}`);
      return coordinator.current ? true : undefined;
    });
    peerUrl = agentHello().peerAddress;
  });

  after(async () => {
    if (agent && agent.child.exitCode === null) {
      agent.child.kill('SIGTERM');
      await Promise.race([agent.exited, sleep(5000)]);
      if (agent.child.exitCode === null) agent.child.kill('SIGKILL');
    }
    await coordinator.close();
    await listener.close();
  });

  describe('peer authentication', () => {
    test("a hello with another group's token, for an unknown group, or claiming a rank that is not our predecessor is refused with 4005; a second predecessor link with 4006", async () => {
      const a = await linkedGroup();
      const b = await assign();
      const unknown = dial(peerUrl, helloFor('g-never-assigned', a.token)); // waits out the assignment wait
      const foreign = dial(peerUrl, helloFor(a.groupId, b.token));
      const foreignOther = dial(peerUrl, helloFor(b.groupId, a.token));
      const notPredecessor = dial(peerUrl, helloFor(b.groupId, b.token, 1)); // rank 1 is the agent itself
      const outOfGroup = dial(peerUrl, helloFor(b.groupId, b.token, 7));
      const wrongRing = dial(peerUrl, helloFor(b.groupId, b.token, 0, { ring: 'dp.9' }));
      const second = dial(peerUrl, helloFor(a.groupId, a.token)); // a.link is open
      // "At once" is judged against the agent's own clock rather than ours: each of these is refused before the hello
      // for an unknown group, dialed at the same moment, is refused at the end of the agent's assignment wait.
      let unknownClosed = false;
      void unknown.closed.then(() => (unknownClosed = true));
      for (const [name, d] of Object.entries({ foreign, foreignOther, notPredecessor, outOfGroup, wrongRing })) {
        const c = await d.closed;
        assert.equal(c.code, CloseCode.UNAUTHORIZED, `${name}: ${c.code} ${c.reason}`);
        assert.equal(unknownClosed, false, `${name} refused at once, before the assignment wait ended (${c.ms} ms)`);
      }
      const s = await second.closed;
      assert.equal(s.code, CloseCode.UNEXPECTED, `second link: ${s.reason}`);
      assert.match(s.reason, /already has a link/);
      const u = await unknown.closed;
      assert.equal(u.code, CloseCode.UNAUTHORIZED, `unknown group: ${u.reason}`);
      // A timer never fires early; a late one is the machine's load, and the 4005 itself says the agent refused it.
      assert.ok(u.ms >= PEER_HELLO_TIMEOUT_MS - 100, `after the assignment wait (${u.ms} ms)`);
      assert.equal(a.link.ws.readyState, WebSocket.OPEN, 'the real predecessor link survives the impostors');
      a.link.ws.close();
    });

    test("a replayed hello — a released group's own token — is refused with 4005", async () => {
      const g = await linkedGroup();
      coordinator.send({ type: 'group.release', groupId: g.groupId });
      const c = await g.link.closed;
      assert.equal(c.code, CloseCode.NORMAL, `the release closes the link: ${c.reason}`);
      const replay = dial(peerUrl, helloFor(g.groupId, g.token));
      const r = await replay.closed;
      assert.equal(r.code, CloseCode.UNAUTHORIZED, r.reason);
      assert.equal(await replay.welcome, undefined, 'never welcomed');
    });
  });

  describe('the peer data plane', () => {
    /** Frames sent after a good hello, the last of which the agent must refuse with `code` (the ones before it, not). */
    const scenarios: Array<{ name: string; frames: Buffer[]; code: number }> = [];
    const bin = (m: Envelope) => encodeMessage(m);
    const bytes = (n: number) => Buffer.alloc(n, 7);
    const ring = (over: Record<string, unknown>) => ({ type: 'ring.data', seq: 3, phase: 0, hop: 0, offset: 0, count: 2, attach: 8, ...over });
    const held = [bin(ring({})), bytes(8), bin({ type: 'pipe.data', tag: 'fwd:0', attach: 8 }), bytes(8), bin({ type: 'stream.data', seq: 9, attach: 4 }), bytes(4)];
    scenarios.push(
      { name: 'garbage after held data (the held data closes nothing)', frames: [...held, Buffer.from([0xc1])], code: CloseCode.MALFORMED },
      { name: 'a text frame', frames: [Buffer.from('text')], code: CloseCode.MALFORMED },
      { name: 'peer.hello again', frames: [bin({ type: 'peer.hello', protocol: '1.0', groupId: 'x', token: 't', rank: 0 })], code: CloseCode.UNEXPECTED },
      { name: 'peer.welcome on an inbound link', frames: [bin({ type: 'peer.welcome', rank: 0 })], code: CloseCode.UNEXPECTED },
      { name: 'ring.data for a finished collective (seq 0)', frames: [bin(ring({ seq: 0 })), bytes(8)], code: CloseCode.UNEXPECTED },
      { name: 'ring.data whose count disagrees with its attachment', frames: [bin(ring({ count: 3 })), bytes(8)], code: CloseCode.UNEXPECTED },
      { name: 'ring.data with count 0', frames: [bin(ring({ count: 0, attach: 0 }))], code: CloseCode.UNEXPECTED },
      { name: 'ring.data with a hop no ring of 2 has', frames: [bin(ring({ hop: 1 })), bytes(8)], code: CloseCode.UNEXPECTED },
      { name: 'ring.data with phase 2', frames: [bin(ring({ phase: 2 }))], code: CloseCode.INVALID },
      { name: 'ring.data with an offset beyond 2^32', frames: [bin(ring({ offset: 2 ** 33 }))], code: CloseCode.INVALID },
      { name: 'a far-future seq is held; a shorter attachment than declared is not', frames: [bin(ring({ seq: 2 ** 52 })), bytes(8), bin(ring({})), bytes(4)], code: CloseCode.UNEXPECTED },
      { name: 'a longer attachment than declared', frames: [bin({ type: 'pipe.data', tag: 'a', attach: 4 }), bytes(8)], code: CloseCode.UNEXPECTED },
      { name: 'pipe.data of a length that is not whole float32s', frames: [bin({ type: 'pipe.data', tag: 'a', attach: 6 }), bytes(6)], code: CloseCode.INVALID },
      { name: 'pipe.data reusing a tag still unreceived', frames: [bin({ type: 'pipe.data', tag: 'fwd:1', attach: 4 }), bytes(4), bin({ type: 'pipe.data', tag: 'fwd:1', attach: 4 }), bytes(4)], code: CloseCode.UNEXPECTED },
      { name: 'pipe.data with a tag off its pattern', frames: [bin({ type: 'pipe.data', tag: 'a b/c', attach: 4 }), bytes(4)], code: CloseCode.INVALID },
      { name: 'stream.data for a finished collective', frames: [bin({ type: 'stream.data', seq: 0, attach: 4 }), bytes(4)], code: CloseCode.UNEXPECTED },
      { name: 'an attachment above the 64 MiB limit', frames: [bin({ type: 'stream.data', seq: 5, attach: MAX_PEER_ATTACHMENT + 1 })], code: CloseCode.INVALID },
      { name: 'a frame above maxPayload (64 MiB + 64 KiB)', frames: [Buffer.alloc(MAX_PEER_FRAME + 1)], code: CloseCode.MESSAGE_TOO_BIG },
    );
    // Every rejected schema mutation of every data message type (mutations.ts), with its predicted close code.
    const peer = families.find((f) => f.name === 'peer')!;
    for (const m of mutationsOf(peer)) {
      if (m.expect === 'accept' || m.type === 'peer.hello' || m.type === 'peer.welcome') continue;
      if (m.name.includes('1 MiB')) continue; // one huge string is plenty: kept below
      scenarios.push({ name: `${m.type}: ${m.name}`, frames: [encodeMessage(m.msg as Envelope)], code: ProtocolErrorCodes[m.expect] });
    }
    scenarios.push({ name: 'pipe.data: a 1 MiB tag', frames: [bin({ type: 'pipe.data', tag: 'x'.repeat(1 << 20), attach: 4 })], code: CloseCode.INVALID });

    test(`${scenarios.length} bad data-plane frames after a good peer.hello are each refused with the predicted close code`, { timeout: 120_000 }, async (t) => {
      const wrong: string[] = [];
      // A few links at a time: each needs its own group (a refused frame breaks its group's ring for good).
      for (let i = 0; i < scenarios.length; i += 4) {
        await Promise.all(
          scenarios.slice(i, i + 4).map(async (s) => {
            const g = await linkedGroup();
            for (const f of s.frames) g.link.ws.send(f, { binary: s.name !== 'a text frame' });
            const c = await Promise.race([g.link.closed, sleep(15_000).then(() => ({ code: -1, reason: 'still open after 15 s', ms: 15_000 }))]);
            if (c.code !== s.code) wrong.push(`${s.name}: expected ${s.code}, got ${c.code} ${c.reason}`);
            coordinator.send({ type: 'group.release', groupId: g.groupId });
          }),
        );
      }
      t.diagnostic(`${scenarios.length} scenarios, ${groupSeq} groups so far`);
      assert.deepEqual(wrong, []);
      assert.equal(agent.child.exitCode, null, 'the agent is running');
    });

    test('during a running all-reduce, a segment at a bad offset, of a bad count or phase, or of the wrong kind is refused with 4006 and the collective fails at once', async () => {
      // Collective #1 is the run's opening barrier, #2 the all-reduce of 1000 elements.
      const bad: Array<[string, Record<string, unknown>, number]> = [
        ['offset beyond the buffer', { type: 'ring.data', seq: 2, phase: 0, hop: 0, offset: 1 << 30, count: 1, attach: 4 }, 4],
        ['count beyond the segment', { type: 'ring.data', seq: 2, phase: 0, hop: 0, offset: 500, count: 257, attach: 1028 }, 1028],
        ['phase 1 where phase 0 is due', { type: 'ring.data', seq: 2, phase: 1, hop: 0, offset: 500, count: 256, attach: 1024 }, 1024],
        ['stream.data in an all-reduce', { type: 'stream.data', seq: 2, attach: 4 }, 4],
      ];
      await Promise.all(
        bad.map(async ([name, header, n], i) => {
          const g = await linkedGroup();
          const fromAgent: PeerMessage[] = [];
          listener.links.get(g.groupId)!.onData = (msg) => void fromAgent.push(msg);
          const t0 = Date.now();
          coordinator.send({ type: 'collective.run', groupId: g.groupId, runId: `bad-${i}`, op: 'allreduce', elements: 1000, seed: 1, repeats: 1, verify: true, returnResult: false });
          // Our part of the barrier (rank 0 holds its one element; held by the agent if it has not started yet), so
          // that the agent goes on into the all-reduce: its first segments to us say it runs and waits for ours.
          g.link.ws.send(encodeMessage({ type: 'ring.data', seq: 1, phase: 0, hop: 0, offset: 0, count: 1, attach: 4 }));
          g.link.ws.send(Buffer.alloc(4));
          await until(`${name}: the agent's first all-reduce segment`, 30_000, () => (fromAgent.some((m) => m.type === 'ring.data' && m.seq === 2) ? true : undefined));
          g.link.ws.send(encodeMessage(header as Envelope));
          g.link.ws.send(Buffer.alloc(n));
          const c = await g.link.closed;
          assert.equal(c.code, CloseCode.UNEXPECTED, `${name}: ${c.reason}`);
          const result = await coordinator.take(`collective.result of bad-${i}`, 30_000, (m): m is Extract<AgentMessage, { type: 'collective.result' }> => m.type === 'collective.result' && m.runId === `bad-${i}`);
          assert.equal(result.ok, false, name);
          // Failed by the refused link, not by the 8 s collective timeout (which says it made no progress).
          assert.doesNotMatch(result.error ?? '', /made no progress/, `${name}: failed in ${Date.now() - t0} ms with: ${result.error}`);
          assert.match(result.error ?? '', /closed/, `${name}: failed by its refused link: ${result.error}`);
          coordinator.send({ type: 'group.release', groupId: g.groupId });
        }),
      );
    });
  });

  describe('the control channel', () => {
    // Mutations of every coordinator message type, rejected ones first-class; a few accepted ones ride along.
    const coordinatorFamily = families.find((f) => f.name === 'coordinator')!;
    const byType = new Map<string, Buffer[]>();
    for (const m of mutationsOf(coordinatorFamily)) {
      if (m.expect === 'accept') continue;
      const list = byType.get(m.type) ?? [];
      list.push(encodeMessage(m.msg as Envelope));
      byType.set(m.type, list);
    }
    // Two per type, picked to differ (a wrong field type and the last kind of mutation), plus whole-frame ones.
    const frames: Array<Buffer | string> = [...byType.values()].flatMap((list) => [list[1]!, list.at(-1)!]);
    frames.push(Buffer.from([0x92, 0xc1]), 'a text frame', Buffer.alloc(MAX_CONTROL_FRAME + 1));

    test(`${frames.length} malformed coordinator messages of every type each close the control channel with the predicted code; the agent reconnects as ${NODE_ID} every time`, { timeout: 120_000 }, async (t) => {
      // Valid but pointless messages first: the agent must shrug them off on the same connection.
      const conn = coordinator.current!;
      for (const type of ['heartbeat.ack', 'welcome', 'error', 'job.stop', 'group.release', 'collective.run', 'job.start'] as const) {
        conn.conn.send(coordinatorExamples[type]);
      }
      await coordinator.take('the refusal of job.start for a group the agent is not in', 5000, (m): m is Extract<AgentMessage, { type: 'job.finished' }> => m.type === 'job.finished' && m.ok === false);
      await coordinator.take('the failed collective.result for an unknown group', 5000, (m): m is Extract<AgentMessage, { type: 'collective.result' }> => m.type === 'collective.result' && m.ok === false);
      assert.equal(coordinator.current, conn, 'still the same connection');

      const wrong: string[] = [];
      for (const frame of frames) {
        const expected = predictControl(frame);
        assert.notEqual(expected, 'keep');
        const before = coordinator.current!;
        const hellos = coordinator.hellos.length;
        before.ws.send(frame, { binary: typeof frame !== 'string' });
        const code = await Promise.race([before.closed, sleep(15_000).then(() => -1)]);
        if (code !== expected) wrong.push(`${typeof frame === 'string' ? 'text' : frame.subarray(0, 60).toString('hex')}: expected ${expected}, got ${code}`);
        await until('the agent to reconnect', 30_000, () => (coordinator.hellos.length > hellos && coordinator.current !== before ? true : undefined));
        const again = agentHello();
        if (again.nodeId !== NODE_ID || again.nodeSecret !== NODE_SECRET) wrong.push(`reconnected as ${again.nodeId} without its secret`);
      }
      t.diagnostic(`${frames.length} frames, ${coordinator.hellos.length} hellos in all`);
      assert.deepEqual(wrong, []);
      assert.equal(agent.child.exitCode, null, 'the agent is running');
    });
  });

  test('afterwards a fresh group over correct links runs a verified all-reduce with the agent', { timeout: 60_000 }, async () => {
    const g = await linkedGroup();
    // Rank 0 of the ring, played with the product's own Ring over our two links.
    const outConn: PeerConn = new MessageConnection(g.link.ws, { parse: parsePeerMessage, label: 'test → agent', log: silentLogger, maxAttachmentBytes: MAX_PEER_ATTACHMENT, onMessage: () => {} });
    const inLink = listener.links.get(g.groupId)!;
    const ringOf0 = new Ring(0, 2, outConn, inLink.conn, { segmentBytes: SEGMENT_BYTES, idleTimeoutMs: 8000 });
    inLink.onData = (msg, payload) => {
      if (msg.type === 'ring.data' || msg.type === 'stream.data') ringOf0.receive(msg, payload!);
    };
    const run = { type: 'collective.run' as const, groupId: g.groupId, runId: 'good', op: 'allreduce' as const, elements: 5000, seed: 7, repeats: 2, verify: true, returnResult: false };
    coordinator.send(run);
    const ours = await runCollective({ ring: ringOf0, id: g.groupId, rank: 0 } as unknown as Group, run);
    const theirs = await coordinator.take('the agent\'s collective.result', 10_000, (m): m is Extract<AgentMessage, { type: 'collective.result' }> => m.type === 'collective.result' && m.runId === 'good');
    assert.equal(ours.result.ok, true, ours.result.error);
    assert.equal(theirs.ok, true, theirs.error);
    assert.equal(theirs.maxAbsErr, 0);
    assert.equal(theirs.digest, ours.result.digest, 'both ranks hold the same sum');
    assert.equal(agent.child.exitCode, null);
  });
});
