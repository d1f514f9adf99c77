/**
 * Hostile input against REAL processes: a coordinator and one agent started with startCluster, attacked over real
 * sockets with raw `ws` clients. Every bad frame must end in a close whose code names the reason, and neither
 * process may suffer for it: afterwards the coordinator is healthy, counted the rejections, and the agent is still
 * alive and connected under its own id.
 *
 * Some refusals take a timeout to happen (the coordinator's hello timeout, 5 s; the agent's peer-hello wait,
 * 10 s). Those probes are started in `before`, so their waits overlap the rest of the file, and awaited in their
 * own tests.
 *
 * The fuzz (part b) uses a fixed seed (FUZZ_SEED overrides it). For every frame it also predicts the exact close
 * code by running the product's own decoder and parser on it, so a mismatch names the frame, its bytes, what was
 * expected and what happened.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import WebSocket from 'ws';
import { startCluster, type LocalCluster } from '../../scripts/local-cluster.ts';
import { decodeFrame, encodeMessage, type Envelope } from '../../protocol/codec.ts';
import { CloseCode } from '../../protocol/codes.ts';
import { MAX_CONTROL_FRAME, parseAgentMessage } from '../../protocol/control.ts';
import { ProtocolError, ProtocolErrorCodes } from '../../protocol/errors.ts';
import { assertCompatible } from '../../protocol/version.ts';
import type { NodeView } from '../../coordinator/cluster/agent-hub.ts';
import { agentExamples, allTypeNames, peerExamples } from '../protocol/fixtures.ts';

const FUZZ_SEED = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : 0x4057_11e;
const FUZZ_FRAMES = 320;
const FUZZ_PARALLEL = 8;

/** Close codes a bad frame on the control channel may earn (the brief's list: everything but timeouts). */
const REJECTION_CODES = new Set<number>([
  CloseCode.MESSAGE_TOO_BIG,
  CloseCode.VERSION_MISMATCH,
  CloseCode.MALFORMED,
  CloseCode.UNKNOWN_TYPE,
  CloseCode.INVALID,
  CloseCode.TOO_LARGE,
  CloseCode.UNAUTHORIZED,
  CloseCode.UNEXPECTED,
]);

// ---------------------------------------------------------------------------------------------------------------
// Raw socket probes

interface Outcome {
  code: number; // 1006 when we had to give up and terminate
  reason: string;
  messages: Buffer[];
  ms: number;
}

const sockets = new Set<WebSocket>();

/**
 * Opens a raw ws connection to `url`, calls `onOpen` with it, and resolves when it closes (never rejects). After
 * `giveUpMs` it is terminated and resolves with 1006. `onMessage` sees what the server sends.
 */
function probe(url: string, onOpen: (ws: WebSocket) => void, giveUpMs: number, onMessage?: (ws: WebSocket, data: Buffer) => void): Promise<Outcome> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
    sockets.add(ws);
    const messages: Buffer[] = [];
    const giveUp = setTimeout(() => ws.terminate(), giveUpMs);
    ws.on('open', () => onOpen(ws));
    ws.on('message', (data: Buffer) => {
      messages.push(data);
      onMessage?.(ws, data);
    });
    ws.on('error', () => {}); // e.g. EPIPE while the server refuses an oversized frame; the close tells us why
    ws.on('close', (code, reason) => {
      clearTimeout(giveUp);
      sockets.delete(ws);
      resolve({ code, reason: reason.toString(), messages, ms: Date.now() - t0 });
    });
  });
}

/** Sends one frame (binary Buffer, or a string as a text frame) and waits for the close. */
function sendFrame(url: string, frame: Buffer | string, giveUpMs = 8000): Promise<Outcome> {
  return probe(url, (ws) => ws.send(frame, { binary: typeof frame !== 'string' }), giveUpMs, (ws) => ws.close(1000, 'test done'));
}

function describeOutcome(o: Outcome): string {
  const types = o.messages.map((m) => {
    try {
      return decodeFrame(m).type;
    } catch {
      return `${m.byteLength} bytes`;
    }
  });
  return `closed ${o.code} "${o.reason}" after ${o.ms} ms${types.length ? `, received ${types.join(', ')}` : ''}`;
}

function rejectionCounts(metricsText: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const m of metricsText.matchAll(/^meshtrain_protocol_rejections_total\{code="([A-Z_]+)"\} (\d+)$/gm)) counts.set(m[1]!, Number(m[2]));
  return counts;
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

// ---------------------------------------------------------------------------------------------------------------
// Fuzz frames and the prediction of what the coordinator does with each

type Expectation = { close: number } | { welcome: true };

/**
 * What the coordinator should do with `frame` as the first frame of a connection, derived from the product's own
 * decoder, parser and version check plus the hub's rules (hello first; the cluster token; a known node id needs
 * its secret, and the only known id here is the live agent's, whose secret we do not have).
 */
function predict(frame: Buffer | string, clusterToken: string, knownIds: ReadonlySet<string>): Expectation {
  if (typeof frame === 'string') return { close: CloseCode.MALFORMED };
  if (frame.byteLength > MAX_CONTROL_FRAME) return { close: CloseCode.MESSAGE_TOO_BIG };
  try {
    const msg = parseAgentMessage(decodeFrame(frame));
    if (msg.type !== 'hello') return { close: CloseCode.UNEXPECTED }; // even one that declares an attachment
    assertCompatible(msg.protocol, 'fuzz');
    if (sha256(msg.token) !== sha256(clusterToken)) return { close: CloseCode.UNAUTHORIZED };
    if (msg.nodeId !== undefined && knownIds.has(msg.nodeId)) return { close: CloseCode.UNAUTHORIZED };
    return { welcome: true };
  } catch (err) {
    if (err instanceof ProtocolError) return { close: err.closeCode };
    throw err;
  }
}

interface FuzzFrame {
  kind: string;
  frame: Buffer | string;
}

type Path = string[];

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === 'object' && [Object.prototype, null].includes(Object.getPrototypeOf(v));

/** Every field path of a message, nested plain objects included (e.g. ['capabilities', 'cores']). */
function leafPaths(value: Record<string, unknown>, prefix: Path = []): Path[] {
  return Object.entries(value).flatMap(([k, v]) => [[...prefix, k], ...(isPlainObject(v) ? leafPaths(v, [...prefix, k]) : [])]);
}

function getParent(obj: Record<string, unknown>, path: Path): Record<string, unknown> {
  let at: Record<string, unknown> = obj;
  for (const k of path.slice(0, -1)) at = at[k] as Record<string, unknown>;
  return at;
}

/** Arbitrary values of many msgpack types, for field replacement. */
const anyValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.string({ maxLength: 300 }),
  fc.integer(),
  fc.double(),
  fc.constantFrom(-1, 0, 2 ** 53, -(2 ** 31), 1e308, Number.NaN, Infinity, '', '1.0', '2.0', '0.9', 'x'.repeat(70)),
  fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }),
);

type FieldOp =
  | { op: 'delete'; at: number }
  | { op: 'set'; at: number; value: unknown }
  | { op: 'add'; key: string; value: unknown }
  | { op: 'retype'; type: string }
  | { op: 'claim-live-id' }
  | { op: 'protocol'; version: string };

const fieldOp: fc.Arbitrary<FieldOp> = fc.oneof(
  fc.record({ op: fc.constant('delete' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: anyValue }),
  fc.record({ op: fc.constant('add' as const), key: fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('__proto__', 'constructor', 'attach')), value: anyValue }),
  fc.record({ op: fc.constant('retype' as const), type: fc.oneof(fc.constantFrom(...allTypeNames), fc.string({ maxLength: 20 })) }),
  fc.constant({ op: 'claim-live-id' as const }),
  fc.record({ op: fc.constant('protocol' as const), version: fc.constantFrom('2.0', '0.9', '1.7', '1.0', '01.0', '1', 'v1.0', '99999.0') }),
);

type ByteOp =
  | { op: 'truncate'; frac: number }
  | { op: 'flip'; frac: number; xor: number }
  | { op: 'append'; bytes: Uint8Array }
  | { op: 'insert'; frac: number; bytes: Uint8Array };

const byteOp: fc.Arbitrary<ByteOp> = fc.oneof(
  fc.record({ op: fc.constant('truncate' as const), frac: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }) }),
  fc.record({ op: fc.constant('flip' as const), frac: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ op: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ op: fc.constant('insert' as const), frac: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
);

function applyBytes(buf: Buffer, op: ByteOp): Buffer {
  const at = (frac: number) => Math.floor(frac * buf.length);
  switch (op.op) {
    case 'truncate':
      return buf.subarray(0, at(op.frac));
    case 'flip': {
      const out = Buffer.from(buf);
      if (out.length) out[at(op.frac)]! ^= op.xor;
      return out;
    }
    case 'append':
      return Buffer.concat([buf, op.bytes]);
    case 'insert':
      return Buffer.concat([buf.subarray(0, at(op.frac)), op.bytes, buf.subarray(at(op.frac))]);
  }
}

function fuzzFrames(clusterToken: string, liveId: string): fc.Arbitrary<FuzzFrame> {
  const agentTypes = Object.keys(agentExamples) as Array<keyof typeof agentExamples>;
  const mutated = fc
    .record({
      type: fc.oneof({ arbitrary: fc.constant('hello' as const), weight: 3 }, { arbitrary: fc.constantFrom(...agentTypes), weight: 4 }), // hello is where the checks are
      realToken: fc.integer({ min: 0, max: 4 }).map((n) => n === 0),
      fields: fc.array(fieldOp, { maxLength: 3 }),
      bytes: fc.oneof({ arbitrary: fc.constant(null), weight: 7 }, { arbitrary: byteOp, weight: 3 }), // mangled bytes are nearly always 4001
    })
    .map(({ type, realToken, fields, bytes }): FuzzFrame => {
      const msg = structuredClone(agentExamples[type]) as Record<string, unknown>;
      if (type === 'hello') {
        msg.name = 'fuzz';
        if (realToken) msg.token = clusterToken;
      }
      for (const f of fields) {
        const paths = leafPaths(msg);
        if (f.op === 'delete' && paths.length) {
          const p = paths[f.at % paths.length]!;
          delete getParent(msg, p)[p.at(-1)!];
        } else if (f.op === 'set' && paths.length) {
          const p = paths[f.at % paths.length]!;
          getParent(msg, p)[p.at(-1)!] = f.value;
        } else if (f.op === 'add') {
          Object.defineProperty(msg, f.key, { value: f.value, enumerable: true, writable: true, configurable: true });
        } else if (f.op === 'retype') {
          msg.type = f.type;
        } else if (f.op === 'claim-live-id') {
          msg.nodeId = liveId;
        } else if (f.op === 'protocol') {
          msg.protocol = f.version;
        }
      }
      let frame: Buffer;
      try {
        frame = encodeMessage(msg as Envelope);
      } catch {
        frame = Buffer.from([0xc1]); // a value msgpack cannot write: send the never-used byte instead
      }
      if (bytes) frame = applyBytes(frame, bytes);
      return { kind: `mutated ${type}${realToken ? ' (real token)' : ''}: ${fields.map((f) => f.op).join('+') || 'as is'}${bytes ? ` / bytes ${bytes.op}` : ''}`, frame };
    });
  const randomBytes = fc.uint8Array({ maxLength: 300 }).map((a): FuzzFrame => ({ kind: 'random bytes', frame: Buffer.from(a) }));
  const randomValue = anyValue.map((v): FuzzFrame => {
    try {
      return { kind: 'random msgpack value', frame: encodeMessage(v as Envelope) };
    } catch {
      return { kind: 'random msgpack value (unpackable, sent as 0xc1)', frame: Buffer.from([0xc1]) };
    }
  });
  const randomMap = fc
    .record({ type: fc.oneof(fc.constantFrom(...allTypeNames), fc.string({ maxLength: 20 }), anyValue), rest: fc.dictionary(fc.string({ maxLength: 10 }), anyValue, { maxKeys: 5 }) })
    .map(({ type, rest }): FuzzFrame => {
      try {
        return { kind: 'random map', frame: encodeMessage({ ...rest, type } as Envelope) };
      } catch {
        return { kind: 'random map (unpackable, sent as 0xc1)', frame: Buffer.from([0xc1]) };
      }
    });
  const text = fc.string({ maxLength: 100 }).map((s): FuzzFrame => ({ kind: 'text frame', frame: s }));
  return fc.oneof(
    { arbitrary: mutated, weight: 8 },
    { arbitrary: randomBytes, weight: 1 },
    { arbitrary: randomValue, weight: 1 },
    { arbitrary: randomMap, weight: 2 },
    { arbitrary: text, weight: 1 },
  );
}

// ---------------------------------------------------------------------------------------------------------------

describe('a real coordinator and agent under hostile input', () => {
  let cluster: LocalCluster;
  let agentUrl: string;
  let agent: NodeView;
  // Slow refusals, started early so their timeouts overlap the other tests.
  let silent: Promise<Outcome>;
  let attachBeforeHello: Promise<Outcome>;
  let peerUnknownGroup: Promise<Outcome>;

  const nodes = async () => (await cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes')).nodes;
  const validHello = (overrides: Record<string, unknown> = {}): Envelope => {
    const { nodeId: _id, nodeSecret: _secret, ...hello } = agentExamples.hello;
    return { ...hello, name: 'hostile-test', token: cluster.token, ...overrides };
  };

  before(async () => {
    cluster = await startCluster({ agents: 1 });
    agentUrl = `${cluster.wsUrl}/ws/agent`;
    const list = await nodes();
    assert.equal(list.length, 1);
    agent = list[0]!;
    silent = probe(agentUrl, () => {}, 12_000);
    attachBeforeHello = probe(agentUrl, (ws) => ws.send(encodeMessage({ ...agentExamples['collective.result'], attach: 1024 })), 12_000);
    peerUnknownGroup = probe(
      agent.peerAddress,
      (ws) => ws.send(encodeMessage({ ...peerExamples['peer.hello'], groupId: 'no-such-group', token: 'made-up-token' })),
      20_000,
    );
  });

  after(async () => {
    for (const ws of sockets) ws.terminate();
    await cluster?.stop();
  });

  describe('(a) the coordinator closes each kind of bad first frame with the code that names it', () => {
    test('garbage bytes are closed with 4001 MALFORMED', async () => {
      const o = await sendFrame(agentUrl, Buffer.from([0xc1, 0xff, 0x00, 0x13, 0x37]));
      assert.equal(o.code, CloseCode.MALFORMED, describeOutcome(o));
      assert.match(o.reason, /not valid msgpack/);
    });

    test('a text frame is closed with 4001 MALFORMED', async () => {
      const o = await sendFrame(agentUrl, JSON.stringify(validHello()));
      assert.equal(o.code, CloseCode.MALFORMED, describeOutcome(o));
      assert.match(o.reason, /text frame/);
    });

    test('a msgpack value that is not a message map is closed with 4001 MALFORMED', async () => {
      const o = await sendFrame(agentUrl, encodeMessage([1, 2, 3] as unknown as Envelope));
      assert.equal(o.code, CloseCode.MALFORMED, describeOutcome(o));
    });

    test('a valid msgpack map with an unknown type is closed with 4002 UNKNOWN_TYPE', async () => {
      const o = await sendFrame(agentUrl, encodeMessage({ type: 'nope' }));
      assert.equal(o.code, CloseCode.UNKNOWN_TYPE, describeOutcome(o));
      assert.match(o.reason, /nope/);
    });

    test('a hello with a missing field is closed with 4003 INVALID naming the field', async () => {
      const { capabilities: _c, ...hello } = validHello();
      const o = await sendFrame(agentUrl, encodeMessage(hello as Envelope));
      assert.equal(o.code, CloseCode.INVALID, describeOutcome(o));
      assert.match(o.reason, /capabilities/);
    });

    test("a hello speaking protocol 2.0 is closed with 4000 VERSION_MISMATCH naming both '2.0' and '1.0'", async () => {
      const o = await sendFrame(agentUrl, encodeMessage(validHello({ protocol: '2.0', name: 'v2' })));
      assert.equal(o.code, CloseCode.VERSION_MISMATCH, describeOutcome(o));
      assert.ok(o.reason.includes('2.0') && o.reason.includes('1.0'), o.reason);
    });

    test('a valid hello with a wrong token is closed with 4005 UNAUTHORIZED', async () => {
      const o = await sendFrame(agentUrl, encodeMessage(validHello({ token: 'not-the-cluster-token' })));
      assert.equal(o.code, CloseCode.UNAUTHORIZED, describeOutcome(o));
      assert.equal(o.messages.length, 0, 'no welcome');
    });

    test("a hello with the right token that claims the live agent's id without its secret is closed with 4005", async () => {
      const o = await sendFrame(agentUrl, encodeMessage(validHello({ nodeId: agent.id, nodeSecret: 'a-guessed-secret' })));
      assert.equal(o.code, CloseCode.UNAUTHORIZED, describeOutcome(o));
      assert.ok(o.reason.includes(agent.id), o.reason);
      const still = (await nodes()).find((n) => n.id === agent.id)!;
      assert.equal(still.status, 'alive');
      assert.equal(still.connected, true, 'the real agent keeps its connection');
      assert.equal(still.name, agent.name);
    });

    test('a heartbeat before hello is closed with 4006 UNEXPECTED', async () => {
      const o = await sendFrame(agentUrl, encodeMessage(agentExamples.heartbeat));
      assert.equal(o.code, CloseCode.UNEXPECTED, describeOutcome(o));
      assert.match(o.reason, /hello/);
    });

    test('a frame above 16 MiB + 64 KiB is closed with 1009 MESSAGE_TOO_BIG', async () => {
      const o = await sendFrame(agentUrl, Buffer.alloc(MAX_CONTROL_FRAME + 1), 15_000);
      assert.equal(o.code, CloseCode.MESSAGE_TOO_BIG, describeOutcome(o));
    });

    test('a connection that says nothing is closed with 4007 HELLO_TIMEOUT after the 5 s hello timeout', async () => {
      const o = await silent;
      assert.equal(o.code, CloseCode.HELLO_TIMEOUT, describeOutcome(o));
      assert.ok(o.ms >= 4500 && o.ms < 10_000, `closed after ${o.ms} ms`);
    });

    test(
      'a valid message that declares an attachment before hello is refused at once with 4006 UNEXPECTED',
      async () => {
        const o = await attachBeforeHello;
        assert.equal(o.code, CloseCode.UNEXPECTED, describeOutcome(o));
        assert.ok(o.ms < 2000, `refused after ${o.ms} ms`);
      },
    );

    test('a valid hello with the right token is welcomed (the positive control for the refusals above)', async () => {
      let welcome: Envelope | undefined;
      const o = await probe(
        agentUrl,
        (ws) => ws.send(encodeMessage(validHello({ name: 'hostile-control' }))),
        8000,
        (ws, data) => {
          welcome = decodeFrame(data);
          ws.close(1000, 'test done');
        },
      );
      assert.equal(welcome?.type, 'welcome', describeOutcome(o));
      assert.equal(welcome?.protocol, '1.0');
    });
  });

  describe('(b) hundreds of random and mutated frames', () => {
    test(`${FUZZ_FRAMES} random and mutated first frames each end in the predicted close (or a welcome), seed ${FUZZ_SEED}`, async (t) => {
      const knownIds = new Set([agent.id]);
      const frames = fc
        .sample(fuzzFrames(cluster.token, agent.id), { seed: FUZZ_SEED, numRuns: FUZZ_FRAMES })
        .map((f) => ({ ...f, expect: predict(f.frame, cluster.token, knownIds) }));
      assert.equal(frames.length, FUZZ_FRAMES);

      const before = rejectionCounts(await (await fetch(`${cluster.url}/metrics`)).text());
      const observed = new Map<number, number>();
      const failures: string[] = [];
      let welcomes = 0;
      for (let i = 0; i < frames.length; i += FUZZ_PARALLEL) {
        const batch = frames.slice(i, i + FUZZ_PARALLEL);
        const outcomes = await Promise.all(batch.map((f) => sendFrame(agentUrl, f.frame)));
        outcomes.forEach((o, j) => {
          const f = batch[j]!;
          const firstType = (() => {
            try {
              return o.messages[0] && decodeFrame(o.messages[0]).type;
            } catch {
              return undefined;
            }
          })();
          const welcomed = firstType === 'welcome';
          if (welcomed) welcomes++;
          else observed.set(o.code, (observed.get(o.code) ?? 0) + 1);
          const allowed = welcomed || REJECTION_CODES.has(o.code);
          const asPredicted = 'welcome' in f.expect ? welcomed : !welcomed && o.messages.length === 0 && o.code === f.expect.close;
          if (!allowed || !asPredicted) {
            const bytes = typeof f.frame === 'string' ? JSON.stringify(f.frame.slice(0, 80)) : f.frame.subarray(0, 120).toString('hex');
            failures.push(`#${i + j} ${f.kind}: expected ${JSON.stringify(f.expect)}, ${describeOutcome(o)}; frame ${bytes}`);
          }
        });
      }
      t.diagnostic(
        `seed ${FUZZ_SEED}: ${frames.length} frames, ${welcomes} welcomed, closes: ` +
          [...observed].sort(([a], [b]) => a - b).map(([code, n]) => `${code}×${n}`).join(' '),
      );
      assert.deepEqual(failures.slice(0, 15), [], `${failures.length} of ${frames.length} frames went wrong (rerun with FUZZ_SEED=${FUZZ_SEED})`);
      assert.ok(observed.size >= 5, `the fuzz reached at least five different refusals: ${[...observed.keys()].join(', ')}`);

      // Every refusal was counted under its code (metrics are scraped after the closes, which follow the count).
      const afterCounts = rejectionCounts(await (await fetch(`${cluster.url}/metrics`)).text());
      for (const [name, closeCode] of Object.entries(ProtocolErrorCodes)) {
        if (name === 'PRT_ERR_HELLO_TIMEOUT') continue; // the slow probes of part (a) may land meanwhile
        const delta = (afterCounts.get(name) ?? 0) - (before.get(name) ?? 0);
        assert.equal(delta, observed.get(closeCode) ?? 0, `meshtrain_protocol_rejections_total{code="${name}"} grew by the number of ${closeCode} closes`);
      }
    });

    test('afterwards the coordinator is healthy, its metrics count the rejections, and the agent is still alive and connected', async () => {
      const health = await fetch(`${cluster.url}/healthz`);
      assert.equal(health.status, 200);
      assert.equal(((await health.json()) as { status: string }).status, 'ok');
      assert.equal(cluster.coordinator.child.exitCode, null, 'the coordinator process is running');

      const metrics = await (await fetch(`${cluster.url}/metrics`)).text();
      const counts = rejectionCounts(metrics);
      for (const code of ['PRT_ERR_MALFORMED', 'PRT_ERR_UNKNOWN_TYPE', 'PRT_ERR_INVALID', 'PRT_ERR_UNAUTHORIZED', 'PRT_ERR_UNEXPECTED', 'PRT_ERR_VERSION_MISMATCH']) {
        assert.ok((counts.get(code) ?? 0) > 0, `meshtrain_protocol_rejections_total{code="${code}"} > 0`);
      }

      const still = (await nodes()).find((n) => n.id === agent.id);
      assert.ok(still, 'the agent keeps its id');
      assert.equal(still.status, 'alive');
      assert.equal(still.connected, true);
      assert.ok(still.heartbeatAgeMs < 5000, `heartbeats still arrive (age ${still.heartbeatAgeMs} ms)`);
    });
  });

  describe("(c) the agent's peer listener", () => {
    test('garbage is closed with 4001 MALFORMED', async () => {
      const o = await sendFrame(agent.peerAddress, Buffer.from([0xc1, 0x00, 0xde, 0xad]));
      assert.equal(o.code, CloseCode.MALFORMED, describeOutcome(o));
    });

    test('a text frame is closed with 4001 MALFORMED', async () => {
      const o = await sendFrame(agent.peerAddress, 'hello?');
      assert.equal(o.code, CloseCode.MALFORMED, describeOutcome(o));
    });

    test('a peer.hello speaking protocol 2.0 is closed with 4000 VERSION_MISMATCH', async () => {
      const o = await sendFrame(agent.peerAddress, encodeMessage({ ...peerExamples['peer.hello'], protocol: '2.0' }));
      assert.equal(o.code, CloseCode.VERSION_MISMATCH, describeOutcome(o));
      assert.ok(o.reason.includes('2.0') && o.reason.includes('1.0'), o.reason);
    });

    test('a data message before peer.hello is closed with 4006 UNEXPECTED', async () => {
      const o = await sendFrame(agent.peerAddress, encodeMessage(peerExamples['peer.welcome']));
      assert.equal(o.code, CloseCode.UNEXPECTED, describeOutcome(o));
    });

    test(
      'a peer.hello for an unknown group with a made-up token is closed with 4005 UNAUTHORIZED after the assignment wait',
      async () => {
        const o = await peerUnknownGroup;
        assert.equal(o.code, CloseCode.UNAUTHORIZED, describeOutcome(o));
      },
    );

    test('a peer.hello for an unknown group is refused (closed by the agent, never welcomed) within the assignment wait', async () => {
      const o = await peerUnknownGroup;
      assert.equal(o.messages.length, 0, 'no peer.welcome');
      assert.ok(o.code === CloseCode.UNAUTHORIZED || o.code === CloseCode.HELLO_TIMEOUT, describeOutcome(o));
      assert.ok(o.ms < 15_000, `closed after ${o.ms} ms`);
    });

    test('the agent process is still running, alive and connected after all of it', async () => {
      assert.equal(cluster.agents[0]!.child.exitCode, null);
      const still = (await nodes()).find((n) => n.id === agent.id);
      assert.equal(still?.status, 'alive');
      assert.equal(still?.connected, true);
      assert.equal(still?.peerAddress, agent.peerAddress, 'its peer listener is the same');
      // The listener still accepts connections.
      const o = await sendFrame(agent.peerAddress, Buffer.from([0xc1]));
      assert.equal(o.code, CloseCode.MALFORMED);
    });
  });
});
