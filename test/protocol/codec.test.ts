import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Kind, OptionalKind, type TSchema } from '@sinclair/typebox';
import { Packr } from 'msgpackr';
import { decodeFrame, encodeMessage, type Envelope } from '../../protocol/codec.ts';
import { CloseCode, closeReason } from '../../protocol/codes.ts';
import { ProtocolError, ProtocolErrorCodes, type ProtocolErrorCode } from '../../protocol/errors.ts';
import { PROTOCOL_VERSION, assertCompatible, parseVersion } from '../../protocol/version.ts';
import { isValidCloseCode } from '../support/fake-websocket.ts';
import { allTypeNames, families, passesSchema, type Family } from './fixtures.ts';

/** A packer for values the codec itself would never produce (arrays, scalars, typed arrays, maps with odd keys). */
const anyPackr = new Packr({ useRecords: false, moreTypes: true });

function assertProtocolError(fn: () => unknown, code: ProtocolErrorCode, message?: RegExp | string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ProtocolError, `expected a ProtocolError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
    assert.equal(err.closeCode, ProtocolErrorCodes[code]);
    if (typeof message === 'string') assert.ok(err.message.includes(message), `'${err.message}' should include '${message}'`);
    else if (message) assert.match(err.message, message);
    return true;
  });
}

function parseFrame(family: Family, frame: Uint8Array): { type: string } {
  return family.parse(decodeFrame(frame));
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The parser's INVALID message names the JSON-pointer path of the first bad field: "invalid <type> message: <path> <why>". */
function naming(path: string): RegExp {
  return new RegExp(`message: ${escapeRegExp(path)} `);
}

const allExamples = families.flatMap((family) => Object.values(family.examples).map((example) => ({ family, example })));

// ---------------------------------------------------------------------------------------------------------------
// Round trips

test('every message type of every family has an example here, and every example passes its schema', () => {
  for (const family of families) {
    assert.deepEqual(Object.keys(family.examples).sort(), Object.keys(family.schemas).sort(), family.name);
    for (const [type, example] of Object.entries(family.examples)) {
      assert.equal(example.type, type);
      assert.ok(passesSchema(family, example), `${family.name} example ${type} fails its schema`);
    }
  }
});

test('message type names are unique across the three families', () => {
  assert.equal(new Set(allTypeNames).size, allTypeNames.length);
});

for (const family of families) {
  for (const [type, example] of Object.entries(family.examples)) {
    test(`a ${family.name} ${type} message survives encode, decode and parse unchanged`, () => {
      const frame = encodeMessage(example);
      assert.ok(Buffer.isBuffer(frame) && frame.byteLength > 0);
      const decoded = decodeFrame(frame);
      assert.deepStrictEqual(decoded, example);
      const parsed = family.parse(decoded);
      assert.deepStrictEqual(parsed, example);
      assert.ok(passesSchema(family, parsed));
      // Encoding is deterministic (compared as bytes: decoding caches a DataView on the buffer object), and
      // decoding a copy of the frame (another buffer) gives the same message.
      assert.ok(encodeMessage(example).equals(frame));
      assert.deepStrictEqual(parseFrame(family, Uint8Array.from(frame)), example);
    });
  }
}

test('a frame that is a view into a larger buffer decodes the same as a copy of it', () => {
  for (const { family, example } of allExamples) {
    const frame = encodeMessage(example);
    const big = Buffer.concat([Buffer.from([0xa5, 0x41, 0x42]), frame, Buffer.from([0xa3, 0x61, 0x62, 0x63, 0xc1, 0x00])]);
    const view = big.subarray(3, 3 + frame.byteLength);
    assert.deepStrictEqual(parseFrame(family, view), example);
  }
});

test('a message of one family is an unknown type to the parsers of the other families', () => {
  for (const { family, example } of allExamples) {
    for (const other of families) {
      if (other === family) continue;
      assertProtocolError(() => parseFrame(other, encodeMessage(example)), 'PRT_ERR_UNKNOWN_TYPE', `'${example.type}'`);
    }
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Versions

test('the protocol version this build speaks is MAJOR.MINOR', () => {
  const v = parseVersion(PROTOCOL_VERSION);
  assert.ok(Number.isInteger(v.major) && Number.isInteger(v.minor));
  assert.deepEqual(parseVersion('1.0'), { major: 1, minor: 0 });
  assert.deepEqual(parseVersion('12.345'), { major: 12, minor: 345 });
  assert.deepEqual(parseVersion('9999.9999'), { major: 9999, minor: 9999 });
});

test('assertCompatible accepts a peer with the same major version, whatever its minor version', () => {
  assert.doesNotThrow(() => assertCompatible(PROTOCOL_VERSION, 'agent a'));
  assert.doesNotThrow(() => assertCompatible('1.0', 'agent a', '1.0'));
  assert.doesNotThrow(() => assertCompatible('1.9', 'agent a', '1.0'));
  assert.doesNotThrow(() => assertCompatible('1.0', 'agent a', '1.12'));
  assert.doesNotThrow(() => assertCompatible('3.1', 'agent a', '3.7'));
  // Leading zeros do not make another major version.
  assert.doesNotThrow(() => assertCompatible('01.2', 'agent a', '1.0'));
});

test('assertCompatible refuses another major version with PRT_ERR_VERSION_MISMATCH and a message naming both versions', () => {
  const cases: Array<[theirs: string, ours: string]> = [
    ['2.0', '1.0'],
    ['0.9', '1.0'],
    ['10.0', '1.0'],
    ['1.0', '2.3'],
  ];
  for (const [theirs, ours] of cases) {
    assert.throws(
      () => assertCompatible(theirs, 'agent node-7', ours),
      (err: unknown) => {
        assert.ok(err instanceof ProtocolError);
        assert.equal(err.code, 'PRT_ERR_VERSION_MISMATCH');
        assert.equal(err.closeCode, CloseCode.VERSION_MISMATCH);
        assert.ok(err.message.includes(theirs), `'${err.message}' names their version ${theirs}`);
        assert.ok(err.message.includes(ours), `'${err.message}' names our version ${ours}`);
        assert.ok(err.message.includes('agent node-7'));
        return true;
      },
    );
  }
  // With the default (our PROTOCOL_VERSION).
  const other = `${parseVersion(PROTOCOL_VERSION).major + 1}.0`;
  assertProtocolError(() => assertCompatible(other, 'peer'), 'PRT_ERR_VERSION_MISMATCH', PROTOCOL_VERSION);
});

test('malformed version strings are rejected with PRT_ERR_INVALID, theirs or ours', () => {
  const bad = [
    '', '1', '1.', '.1', '1.0.0', 'v1.0', '1.0 ', ' 1.0', '1.0\n', '1,0', '1-0', 'a.b', '-1.0', '+1.0', '1.-0', '1e3.0',
    '12345.0', '1.12345', '1.0a', '１.０', '٣.٠', 'NaN.NaN', '1.0\u0000', 'x'.repeat(1000),
  ];
  for (const text of bad) {
    assertProtocolError(() => parseVersion(text), 'PRT_ERR_INVALID', 'is not MAJOR.MINOR');
    assertProtocolError(() => assertCompatible(text, 'agent a'), 'PRT_ERR_INVALID');
    assertProtocolError(() => assertCompatible('1.0', 'agent a', text), 'PRT_ERR_INVALID');
  }
  // The message quotes at most 20 characters of what it was given.
  assertProtocolError(() => parseVersion('y'.repeat(500)), 'PRT_ERR_INVALID', `'${'y'.repeat(20)}'`);
});

// ---------------------------------------------------------------------------------------------------------------
// decodeFrame: malformed frames

test('decodeFrame rejects an empty frame with PRT_ERR_MALFORMED', () => {
  assertProtocolError(() => decodeFrame(Buffer.alloc(0)), 'PRT_ERR_MALFORMED', 'empty frame');
  assertProtocolError(() => decodeFrame(new Uint8Array(0)), 'PRT_ERR_MALFORMED', 'empty frame');
  assertProtocolError(() => decodeFrame(Buffer.from('abc').subarray(1, 1)), 'PRT_ERR_MALFORMED', 'empty frame');
});

test('decodeFrame rejects every proper prefix of every valid frame with PRT_ERR_MALFORMED', () => {
  let prefixes = 0;
  for (const { example } of allExamples) {
    const frame = encodeMessage(example);
    for (let len = 0; len < frame.byteLength; len++) {
      assertProtocolError(() => decodeFrame(frame.subarray(0, len)), 'PRT_ERR_MALFORMED');
      assertProtocolError(() => decodeFrame(Uint8Array.from(frame.subarray(0, len))), 'PRT_ERR_MALFORMED');
      prefixes++;
    }
  }
  assert.ok(prefixes > 500, `checked ${prefixes} prefixes`);
});

test('decodeFrame rejects a valid frame followed by trailing bytes with PRT_ERR_MALFORMED', () => {
  const tails = [[0x00], [0xc0], [0xc1], [0xff], [0x81], [0xa1, 0x61], [0x00, 0x00, 0x00, 0x00]];
  for (const { example } of allExamples) {
    const frame = encodeMessage(example);
    for (const tail of tails) {
      assertProtocolError(() => decodeFrame(Buffer.concat([frame, Buffer.from(tail)])), 'PRT_ERR_MALFORMED');
    }
    // Two messages in one frame are not one message.
    assertProtocolError(() => decodeFrame(Buffer.concat([frame, frame])), 'PRT_ERR_MALFORMED');
  }
});

test('decodeFrame rejects msgpack values that are not maps (arrays, numbers, strings, binary, others) with PRT_ERR_MALFORMED', () => {
  const example = families[2]!.examples['peer.welcome']!;
  const values: unknown[] = [
    [], [1, 2, 3], [example], [[example]],
    0, 1, -1, 127, 2 ** 40, -(2 ** 40), 1.5, NaN, Infinity, -Infinity, 2n ** 63n - 1n,
    '', 'hello', 'peer.welcome', 'type', 'x'.repeat(70_000),
    Buffer.from('hello'), new Uint8Array([0x81, 0xa4]), Buffer.alloc(0), new Float32Array([1, 2]), new Uint16Array(3),
    true, false, null, undefined,
  ];
  for (const value of values) {
    const frame = anyPackr.pack(value);
    assertProtocolError(() => decodeFrame(frame), 'PRT_ERR_MALFORMED', /not a message map|no string `type`/);
  }
  // Raw encodings, independent of any encoder: nil, false, true, fixint, negative fixint, float32, fixstr, bin 8,
  // fixarray, array 16, the never-used byte 0xc1.
  const raw = [
    [0xc0], [0xc2], [0xc3], [0x05], [0xff], [0xca, 0x3f, 0x80, 0x00, 0x00], [0xa2, 0x68, 0x69], [0xc4, 0x00],
    [0xc4, 0x02, 0x81, 0xa0], [0x90], [0xdc, 0x00, 0x01, 0x80], [0xc1],
  ];
  for (const bytes of raw) assertProtocolError(() => decodeFrame(Buffer.from(bytes)), 'PRT_ERR_MALFORMED');
});

test('decodeFrame rejects maps without a string type with PRT_ERR_MALFORMED', () => {
  const maps: object[] = [
    {},
    { rank: 0 },
    { type: 1 },
    { type: 0 },
    { type: null },
    { type: undefined },
    { type: true },
    { type: ['peer.welcome'] },
    { type: { name: 'peer.welcome' } },
    { type: Buffer.from('peer.welcome') },
    { type: new Uint8Array([0x68]) },
    { Type: 'peer.welcome', rank: 0 },
    { TYPE: 'peer.welcome', rank: 0 },
    { ' type': 'peer.welcome', rank: 0 },
    { 'type ': 'peer.welcome', rank: 0 },
    { types: 'peer.welcome', rank: 0 },
  ];
  for (const map of maps) {
    assertProtocolError(() => decodeFrame(anyPackr.pack(map)), 'PRT_ERR_MALFORMED', 'no string `type`');
  }
  // A map whose only key is "__proto__" holding the message must not lend the message its fields through the
  // prototype: fixmap(1) { "__proto__": { type: "peer.welcome", rank: 0 } }.
  const protoKey = Buffer.concat([Buffer.from([0x81, 0xa9]), Buffer.from('__proto__'), encodeMessage({ type: 'peer.welcome', rank: 0 })]);
  assertProtocolError(() => decodeFrame(protoKey), 'PRT_ERR_MALFORMED', 'no string `type`');
  // A map with an integer key 1 and the type under it.
  assertProtocolError(() => decodeFrame(Buffer.from([0x81, 0x01, 0xa1, 0x78])), 'PRT_ERR_MALFORMED', 'no string `type`');
});

// ---------------------------------------------------------------------------------------------------------------
// Parsers: unknown types and schema violations

test('each family parser rejects types it does not know with PRT_ERR_UNKNOWN_TYPE', () => {
  const unknown = ['nope', '', 'HELLO', 'hello ', ' hello', 'Peer.Hello', 'peer.hello\u0000', 'constructor', '__proto__', 'toString', 'hasOwnProperty', 'ring.data.x', 'stream'];
  for (const family of families) {
    for (const type of unknown) {
      assertProtocolError(
        () => parseFrame(family, encodeMessage({ type, rank: 0 })),
        'PRT_ERR_UNKNOWN_TYPE',
        `unknown ${family.name} message type`,
      );
    }
    // The message quotes at most 40 characters of the type.
    assert.throws(
      () => family.parse({ type: 'z'.repeat(5000) }),
      (err: unknown) => err instanceof ProtocolError && err.code === 'PRT_ERR_UNKNOWN_TYPE' && err.message.includes('z'.repeat(40)) && !err.message.includes('z'.repeat(41)),
    );
  }
});

test('each parser rejects a message missing any required field with PRT_ERR_INVALID naming the field', () => {
  let checked = 0;
  for (const { family, example } of allExamples) {
    const schema = family.schemas[example.type]!;
    for (const field of schema.required ?? []) {
      if (field === 'type') continue;
      const copy: Envelope = { ...example };
      delete copy[field];
      assertProtocolError(() => parseFrame(family, encodeMessage(copy)), 'PRT_ERR_INVALID', naming(`/${field}`));
      checked++;
    }
  }
  assert.ok(checked >= 40, `checked ${checked} fields`);
});

test('each parser rejects a message with an extra field with PRT_ERR_INVALID naming the field', () => {
  for (const { family, example } of allExamples) {
    for (const extra of ['bogus', 'Type', 'attach_', '__proto_', 'constructor']) {
      const copy = { ...example, [extra]: 1 };
      assertProtocolError(() => parseFrame(family, encodeMessage(copy)), 'PRT_ERR_INVALID', naming(`/${extra}`));
    }
  }
});

/** A value of the wrong JSON type for `schema`. */
function wrongTypeFor(schema: TSchema): unknown[] {
  switch (schema[Kind]) {
    case 'String':
      return [42, true, ['x'], { s: 'x' }, Buffer.from('x')];
    case 'Integer':
    case 'Number':
      return ['1', true, [1], { n: 1 }];
    case 'Boolean':
      return [1, 0, 'true', []];
    case 'Union':
      return [{}, [], 'not-a-member', 99];
    case 'Object':
    case 'Record':
      return ['x', 1, [], true];
    case 'Array':
      return ['x', 1, {}, true];
    default:
      throw new Error(`no wrong values for ${String(schema[Kind])}`);
  }
}

test('each parser rejects any field of the wrong type, or null, with PRT_ERR_INVALID naming the field', () => {
  let checked = 0;
  for (const { family, example } of allExamples) {
    const schema = family.schemas[example.type]!;
    for (const [field, fieldSchema] of Object.entries(schema.properties)) {
      if (field === 'type') continue;
      for (const wrong of [...wrongTypeFor(fieldSchema), null]) {
        const copy = { ...example, [field]: wrong };
        assertProtocolError(() => parseFrame(family, encodeMessage(copy)), 'PRT_ERR_INVALID', naming(`/${field}`));
        checked++;
      }
      if (fieldSchema[OptionalKind] === 'Optional') {
        // An optional field may be left out, but not sent as null.
        const without: Envelope = { ...example };
        delete without[field];
        assert.ok(parseFrame(family, encodeMessage(without)));
      }
    }
  }
  assert.ok(checked >= 250, `checked ${checked} wrong values`);
});

test('each parser rejects out-of-range values with PRT_ERR_INVALID naming the field, including nested paths', () => {
  const [agent, coordinator, peer] = families as [Family, Family, Family];
  const cases: Array<[Family, Envelope, string]> = [
    [agent, { ...agent.examples.hello!, nodeId: 'has space' }, '/nodeId'],
    [agent, { ...agent.examples.hello!, nodeId: '' }, '/nodeId'],
    [agent, { ...agent.examples.hello!, nodeId: 'x'.repeat(65) }, '/nodeId'],
    [agent, { ...agent.examples.hello!, token: '' }, '/token'],
    [agent, { ...agent.examples.hello!, token: 't'.repeat(257) }, '/token'],
    [agent, { ...agent.examples.hello!, name: '' }, '/name'],
    [agent, { ...agent.examples.hello!, protocol: '1'.repeat(17) }, '/protocol'],
    [agent, { ...agent.examples.hello!, capabilities: { ...(agent.examples.hello!.capabilities as object), cores: 0 } }, '/capabilities/cores'],
    [agent, { ...agent.examples.hello!, capabilities: { ...(agent.examples.hello!.capabilities as object), cores: 2.5 } }, '/capabilities/cores'],
    [agent, { ...agent.examples.hello!, capabilities: { ...(agent.examples.hello!.capabilities as object), gpu: true } }, '/capabilities/gpu'],
    [agent, { ...agent.examples.hello!, capabilities: { ...(agent.examples.hello!.capabilities as object), matmulGflops: 1e8 } }, '/capabilities/matmulGflops'],
    [agent, { ...agent.examples.hello!, capabilities: { ...(agent.examples.hello!.capabilities as object), memoryBytes: -1 } }, '/capabilities/memoryBytes'],
    [agent, { ...agent.examples.heartbeat!, seq: -1 }, '/seq'],
    [agent, { ...agent.examples.heartbeat!, seq: 1.5 }, '/seq'],
    [agent, { ...agent.examples.heartbeat!, seq: 2 ** 52 + 2 }, '/seq'],
    [agent, { ...agent.examples.heartbeat!, seq: 2n ** 60n }, '/seq'],
    [agent, { ...agent.examples.heartbeat!, sentAt: NaN }, '/sentAt'],
    [agent, { ...agent.examples.heartbeat!, sentAt: Infinity }, '/sentAt'],
    [agent, { ...agent.examples.leave!, reason: 'r'.repeat(257) }, '/reason'],
    [agent, { ...agent.examples['group.ready']!, rank: 65536 }, '/rank'],
    [agent, { ...agent.examples['collective.result']!, ms: [1, 'x'] }, '/ms/1'],
    [agent, { ...agent.examples['collective.result']!, ms: [1, -1] }, '/ms/1'],
    [agent, { ...agent.examples['collective.result']!, ms: new Array(1001).fill(1) }, '/ms'],
    [agent, { ...agent.examples['collective.result']!, attach: 16 * 1024 * 1024 + 1 }, '/attach'],
    [agent, { ...agent.examples['collective.result']!, digest: 'd'.repeat(65) }, '/digest'],
    [coordinator, { ...coordinator.examples.welcome!, heartbeatMs: 9 }, '/heartbeatMs'],
    [coordinator, { ...coordinator.examples['group.assign']!, size: 0 }, '/size'],
    [coordinator, { ...coordinator.examples['group.assign']!, segmentBytes: 3 }, '/segmentBytes'],
    [coordinator, { ...coordinator.examples['group.assign']!, peers: [{ rank: 0, nodeId: 'a', address: 'x' }, { rank: -1, nodeId: 'b', address: 'y' }] }, '/peers/1/rank'],
    [coordinator, { ...coordinator.examples['group.assign']!, peers: [{ rank: 0, nodeId: 'a' }] }, '/peers/0/address'],
    [coordinator, { ...coordinator.examples['group.assign']!, peers: [{ rank: 0, nodeId: 'a', address: 'x', extra: 1 }] }, '/peers/0/extra'],
    [coordinator, { ...coordinator.examples['collective.run']!, op: 'allReduce' }, '/op'],
    [coordinator, { ...coordinator.examples['collective.run']!, repeats: 0 }, '/repeats'],
    [coordinator, { ...coordinator.examples['collective.run']!, elements: 2 ** 28 + 1 }, '/elements'],
    [agent, { ...agent.examples.hello!, reachKey: '' }, '/reachKey'],
    [agent, { ...agent.examples.hello!, inbound: 'no' }, '/inbound'],
    [coordinator, { ...coordinator.examples.reach!, reachable: 1 }, '/reachable'],
    [coordinator, { ...coordinator.examples['relay.open']!, session: 'has space' }, '/session'],
    [coordinator, { ...coordinator.examples['group.assign']!, peers: [{ rank: 0, nodeId: 'a', address: '', relay: { ticket: '' } }] }, '/peers/0/relay/ticket'],
    [coordinator, { ...coordinator.examples['group.assign']!, peers: [{ rank: 0, nodeId: 'a', address: '', relay: { ticket: 't', via: 'x' } }] }, '/peers/0/relay/via'],
    [peer, { ...peer.examples['peer.probed']!, proof: 'XYZ' }, '/proof'],
    [peer, { ...peer.examples['peer.probe']!, challenge: '' }, '/challenge'],
    [peer, { ...peer.examples['ring.data']!, phase: 2 }, '/phase'],
    [peer, { ...peer.examples['ring.data']!, attach: 64 * 1024 * 1024 + 1 }, '/attach'],
    [peer, { ...peer.examples['ring.data']!, offset: 2 ** 32 + 1 }, '/offset'],
    [peer, { ...peer.examples['stream.data']!, attach: -1 }, '/attach'],
    [peer, { ...peer.examples['stream.data']!, attach: 0.5 }, '/attach'],
  ];
  for (const [family, message, path] of cases) {
    assertProtocolError(() => parseFrame(family, anyPackr.pack(message)), 'PRT_ERR_INVALID', naming(path));
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Close codes and reasons

test('every protocol error code maps to a distinct application close code that ws accepts', () => {
  const codes = Object.values(ProtocolErrorCodes);
  assert.equal(new Set(codes).size, codes.length);
  for (const code of codes) {
    assert.ok(code >= 4000 && code <= 4999, `${code}`);
    assert.ok(isValidCloseCode(code));
  }
  for (const code of Object.values(CloseCode)) assert.ok(isValidCloseCode(code), `CloseCode ${code} is sendable`);
});

test('closeReason keeps reasons of up to 123 UTF-8 bytes unchanged', () => {
  for (const text of ['', 'bye', 'a'.repeat(123), 'é'.repeat(61) + 'a', '😀'.repeat(30) + 'abc', '€'.repeat(41)]) {
    assert.ok(Buffer.byteLength(text) <= 123);
    assert.equal(closeReason(text), text);
  }
});

test('closeReason cuts longer reasons to at most 123 UTF-8 bytes, on a character boundary, ending in "..."', () => {
  const texts = [
    'a'.repeat(124),
    'a'.repeat(10_000),
    'é'.repeat(62),
    'a' + 'é'.repeat(100), // cut falls inside a 2-byte character
    '€'.repeat(42), // 3-byte characters
    'a' + '€'.repeat(60),
    'ab' + '€'.repeat(60),
    '😀'.repeat(31), // 4-byte characters
    'a' + '😀'.repeat(40),
    'ab' + '😀'.repeat(40),
    'abc' + '😀'.repeat(40),
    'x'.repeat(119) + '😀😀',
    '\uD800'.repeat(60), // lone surrogates become U+FFFD (3 bytes) on the wire
  ];
  for (const text of texts) {
    const out = closeReason(text);
    const bytes = Buffer.byteLength(out);
    assert.ok(bytes <= 123, `${bytes} bytes for ${JSON.stringify(text.slice(0, 10))}…`);
    assert.ok(out.endsWith('...'));
    const kept = out.slice(0, -3);
    assert.ok(Buffer.from(text).toString().startsWith(kept), 'the kept part is a prefix of the original');
    assert.ok(bytes >= 117 || /^\uFFFD*$/.test(Buffer.from(text).toString().slice(0, kept.length + 1)), `only a partial character was dropped (${bytes} bytes)`);
  }
});
