/**
 * Property-based tests of the wire: whatever bytes arrive, decodeFrame + a family parser returns a message that
 * passes its schema or throws a ProtocolError, and a MessageConnection turns every bad frame into exactly one
 * close with the matching close code, never delivering an invalid message and never throwing out of its handler.
 *
 * Reproducing a failure: fast-check prints `{ seed, path }` with the counterexample; rerun with FUZZ_SEED=<seed>
 * (each property uses FUZZ_SEED + its index, printed in its diagnostic line). FUZZ_SCALE=10 runs ten times as many
 * cases.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Kind, OptionalKind, type TObject, type TSchema } from '@sinclair/typebox';
import { Packr } from 'msgpackr';
import { decodeFrame, encodeMessage, type Envelope } from '../../protocol/codec.ts';
import { CloseCode } from '../../protocol/codes.ts';
import { MessageConnection } from '../../protocol/connection.ts';
import { ProtocolError, ProtocolErrorCodes, type ProtocolErrorCode } from '../../protocol/errors.ts';
import { silentLogger } from '../../common/log.ts';
import { FakeWebSocket } from '../support/fake-websocket.ts';
import { allTypeNames, families, passesSchema, type Family } from './fixtures.ts';

const BASE_SEED = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : 0x5eed_2024;
const SCALE = Number(process.env.FUZZ_SCALE ?? 1);
/** A single frame taking longer than this to decode and parse counts as a hang (generous: loaded CI machines). */
const SLOW_FRAME_MS = 1000;

let totalRuns = 0;
let propertyIndex = 0;

/** Runs one property with a fixed, reported seed and counts its runs towards the file's total. */
function check<Ts extends [unknown, ...unknown[]]>(
  t: { diagnostic(message: string): void },
  name: string,
  numRuns: number,
  arbitraries: { [K in keyof Ts]: fc.Arbitrary<Ts[K]> },
  predicate: (...args: Ts) => void,
): void {
  const seed = BASE_SEED + propertyIndex++;
  const runs = Math.max(1, Math.round(numRuns * SCALE));
  let executed = 0;
  const property = fc.property(...arbitraries, (...args: Ts) => {
    executed++;
    predicate(...args);
  });
  try {
    fc.assert(property, { numRuns: runs, seed, includeErrorInReport: true });
  } finally {
    totalRuns += executed;
    t.diagnostic(`${name}: ${executed} runs, seed ${seed}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Arbitraries

/** Values that satisfy a TypeBox schema (the subset our message schemas use). */
function fromSchema(schema: TSchema): fc.Arbitrary<unknown> {
  switch (schema[Kind]) {
    case 'Object': {
      const obj = schema as TObject;
      const model: Record<string, fc.Arbitrary<unknown>> = {};
      for (const [key, sub] of Object.entries(obj.properties)) model[key] = fromSchema(sub);
      const requiredKeys = Object.keys(obj.properties).filter((key) => obj.properties[key]![OptionalKind] !== 'Optional');
      return fc.record(model, { requiredKeys, noNullPrototype: true });
    }
    case 'String': {
      if (typeof schema.pattern === 'string') return fc.stringMatching(new RegExp(schema.pattern));
      const minLength = (schema.minLength as number | undefined) ?? 0;
      const maxLength = (schema.maxLength as number | undefined) ?? 64;
      const within = (s: string) => s.length >= minLength && s.length <= maxLength;
      return fc.oneof(
        fc.string({ minLength, maxLength: Math.min(maxLength, 40) }),
        fc.string({ unit: 'binary', minLength, maxLength: Math.min(maxLength, 40) }).filter(within),
        fc.string({ minLength: maxLength, maxLength }), // exactly at the limit
      );
    }
    case 'Integer': {
      const min = (schema.minimum as number | undefined) ?? Number.MIN_SAFE_INTEGER;
      const max = (schema.maximum as number | undefined) ?? Number.MAX_SAFE_INTEGER;
      return fc.bigInt({ min: BigInt(min), max: BigInt(max) }).map(Number);
    }
    case 'Number': {
      const min = schema.minimum as number | undefined;
      const max = schema.maximum as number | undefined;
      const above = schema.exclusiveMinimum as number | undefined;
      const below = schema.exclusiveMaximum as number | undefined;
      return fc
        .double({ noNaN: true, noDefaultInfinity: true, ...(min !== undefined && { min }), ...(max !== undefined && { max }) })
        .map((x) => (Object.is(x, -0) ? 0 : x)) // msgpack has no -0 integer; the codec sends -0 as 0
        .filter((x) => (above === undefined || x > above) && (below === undefined || x < below));
    }
    case 'Record': {
      const [pattern, value] = Object.entries(schema.patternProperties as Record<string, TSchema>)[0]!;
      return fc.dictionary(fc.stringMatching(new RegExp(pattern)), fromSchema(value), { maxKeys: 4, noNullPrototype: true });
    }
    case 'Boolean':
      return fc.boolean();
    case 'Literal':
      return fc.constant(schema.const);
    case 'Union':
      return fc.oneof(...(schema.anyOf as TSchema[]).map(fromSchema));
    case 'Tuple':
      return fc.tuple(...((schema.items as TSchema[] | undefined) ?? []).map(fromSchema));
    case 'Array': {
      const limits = { minLength: (schema.minItems as number | undefined) ?? 0, maxLength: Math.min((schema.maxItems as number | undefined) ?? 8, 6) };
      const items = fromSchema(schema.items as TSchema);
      // uniqueItems compares values; the arrays that use it hold integers, which compare by value.
      return schema.uniqueItems === true ? fc.uniqueArray(items, limits) : fc.array(items, limits);
    }
    default:
      throw new Error(`fromSchema: unsupported kind ${String(schema[Kind])}`);
  }
}

const messageArbs = new Map<Family, fc.Arbitrary<Envelope>>(
  families.map((family) => [family, fc.oneof(...Object.values(family.schemas).map((s) => fromSchema(s) as fc.Arbitrary<Envelope>))]),
);
// Counterexamples print a family by its name rather than its whole schema table.
for (const family of families) Object.defineProperty(family, fc.toStringMethod, { value: () => `family(${family.name})` });
const familyArb = fc.constantFrom(...families);
/** A valid message of any family, with its family. */
const validMessage = familyArb.chain((family) => messageArbs.get(family)!.map((msg) => ({ family, msg })));
/** The bytes of a valid message of any family (random, or one of the hand-written examples). */
const validFrame: fc.Arbitrary<Buffer> = fc.oneof(
  validMessage.map(({ msg }) => encodeMessage(msg)),
  fc.constantFrom(...families.flatMap((f) => Object.values(f.examples))).map((msg) => encodeMessage(msg)),
);

type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; byte: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; length: number }
  | { kind: 'duplicate'; at: number; length: number; to: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), byte: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0x00, 0xc0, 0xc1, 0xcf, 0xd3, 0xd4, 0xd5, 0xdc, 0xdd, 0xde, 0xdf, 0xff, 0xc7, 0xc9, 0xdb, 0x7f, 0x80, 0x9f)) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ kind: fc.constant('duplicate' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 64 }), to: fc.nat() }),
);

function mutate(frame: Buffer, mutations: Mutation[]): Buffer {
  let out = Buffer.from(frame);
  for (const m of mutations) {
    const n = out.byteLength;
    const at = n === 0 ? 0 : m.at % (n + (m.kind === 'insert' || m.kind === 'truncate' ? 1 : 0));
    switch (m.kind) {
      case 'flip':
        if (n > 0) out[at % n]! ^= 1 << m.bit;
        break;
      case 'set':
        if (n > 0) out[at % n] = m.byte;
        break;
      case 'truncate':
        out = out.subarray(0, at);
        break;
      case 'insert':
        out = Buffer.concat([out.subarray(0, at), m.bytes, out.subarray(at)]);
        break;
      case 'delete':
        out = Buffer.concat([out.subarray(0, at), out.subarray(at + m.length)]);
        break;
      case 'duplicate': {
        const slice = out.subarray(at, at + m.length);
        const to = m.to % (n + 1);
        out = Buffer.concat([out.subarray(0, to), slice, out.subarray(to)]);
        break;
      }
    }
  }
  return Buffer.from(out);
}

const mutatedFrame: fc.Arbitrary<Buffer> = fc
  .tuple(validFrame, fc.array(mutation, { minLength: 1, maxLength: 4 }))
  .map(([frame, mutations]) => mutate(frame, mutations));

const MAP_HEADERS = [0x80, 0x81, 0x82, 0x83, 0x85, 0x87, 0x8f, 0xde, 0xdf];
/** Random bytes: unconstrained, or starting like a map (so decoding gets past the first byte more often). */
const randomFrame: fc.Arbitrary<Buffer> = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
  fc.tuple(fc.constantFrom(...MAP_HEADERS), fc.uint8Array({ maxLength: 96 })).map(([h, b]) => Buffer.concat([Buffer.from([h]), b])),
  fc
    .tuple(fc.constantFrom(...MAP_HEADERS.slice(1, 5)), fc.uint8Array({ maxLength: 48 }))
    .map(([h, b]) => Buffer.concat([Buffer.from([h, 0xa4]), Buffer.from('type'), b])),
);

/** Encoders for arbitrary values: ours, one with the extensions msgpackr's decoder still understands, one with records. */
const packrs = [
  new Packr({ useRecords: false, bundleStrings: false, mapsAsObjects: true, moreTypes: false }),
  new Packr({ useRecords: false, moreTypes: true, structuredClone: true }),
  new Packr({ useRecords: true, bundleStrings: true }),
  new Packr({ useRecords: false, largeBigIntToFloat: true, useFloat32: 1 }),
];

function tryPack(packrIndex: number, value: unknown): Buffer | null {
  try {
    return packrs[packrIndex]!.pack(value);
  } catch {
    return null;
  }
}

const anything = fc.anything({
  maxDepth: 3,
  maxKeys: 6,
  stringUnit: 'binary',
  withBigInt: true,
  withBoxedValues: true,
  withDate: true,
  withMap: true,
  withSet: true,
  withNullPrototype: true,
  withObjectString: true,
  withSparseArray: true,
  withTypedArray: true,
});

const packrIndex = fc.integer({ min: 0, max: packrs.length - 1 });

/** Structurally valid msgpack of arbitrary values. */
const anythingFrame: fc.Arbitrary<Buffer> = fc
  .tuple(packrIndex, anything)
  .map(([i, v]) => tryPack(i, v))
  .filter((b): b is Buffer => b !== null && b.byteLength > 0);

const fieldNames = [...new Set(families.flatMap((f) => Object.values(f.schemas).flatMap((s) => Object.keys(s.properties))))];
const typeName = fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...allTypeNames) }, { weight: 1, arbitrary: fc.string({ maxLength: 12 }) });

/** Maps whose `type` is (mostly) a real type name, with random fields: real field names or not, random values. */
const typedRandomMap: fc.Arbitrary<Buffer> = fc
  .tuple(
    packrIndex,
    typeName,
    fc.dictionary(fc.oneof(fc.constantFrom(...fieldNames), fc.string({ maxLength: 8 })), anything, { maxKeys: 8 }),
  )
  .map(([i, type, fields]) => tryPack(i, { ...fields, type }))
  .filter((b): b is Buffer => b !== null);

type Perturbation = { kind: 'replace'; field: number; value: unknown } | { kind: 'delete'; field: number } | { kind: 'add'; key: string; value: unknown };

/** Valid messages with one or two fields replaced, deleted or added. */
const perturbedValid: fc.Arbitrary<Buffer> = fc
  .tuple(
    validMessage,
    fc.array(
      fc.oneof(
        fc.record({ kind: fc.constant('replace' as const), field: fc.nat(), value: anything }),
        fc.record({ kind: fc.constant('delete' as const), field: fc.nat() }),
        fc.record({ kind: fc.constant('add' as const), key: fc.oneof(fc.constantFrom(...fieldNames), fc.string({ maxLength: 8 })), value: anything }),
      ),
      { minLength: 1, maxLength: 2 },
    ),
    packrIndex,
  )
  .map(([{ msg }, perturbations, i]) => {
    const copy: Record<string, unknown> = { ...msg };
    for (const p of perturbations as Perturbation[]) {
      const keys = Object.keys(copy);
      if (p.kind === 'add') copy[p.key] = p.value;
      else if (keys.length > 0) {
        const key = keys[p.field % keys.length]!;
        if (p.kind === 'delete') delete copy[key];
        else copy[key] = p.value;
      }
    }
    return tryPack(i, copy);
  })
  .filter((b): b is Buffer => b !== null);

/** Any frame at all, weighted towards the interesting ones. */
const anyFrame: fc.Arbitrary<Buffer> = fc.oneof(
  { weight: 2, arbitrary: randomFrame },
  { weight: 3, arbitrary: mutatedFrame },
  { weight: 1, arbitrary: anythingFrame },
  { weight: 2, arbitrary: typedRandomMap },
  { weight: 2, arbitrary: perturbedValid },
  { weight: 2, arbitrary: validFrame },
);

// ---------------------------------------------------------------------------------------------------------------
// The frame-level property

const PARSER_CODES = new Set<ProtocolErrorCode>(['PRT_ERR_MALFORMED', 'PRT_ERR_UNKNOWN_TYPE', 'PRT_ERR_INVALID']);

type Outcome = { ok: true; msg: { type: string } } | { ok: false; code: ProtocolErrorCode; message: string };

/** decodeFrame + parse; anything other than a schema-valid message or a ProtocolError fails the property. */
function outcome(family: Family, frame: Uint8Array): Outcome {
  let msg: { type: string };
  try {
    msg = family.parse(decodeFrame(frame));
  } catch (err) {
    if (!(err instanceof ProtocolError)) {
      throw new assert.AssertionError({ message: `decodeFrame/parse (${family.name}) threw a non-ProtocolError: ${(err as Error)?.stack ?? String(err)}` });
    }
    assert.ok(PARSER_CODES.has(err.code), `unexpected code ${err.code} from decode/parse`);
    assert.equal(err.closeCode, ProtocolErrorCodes[err.code]);
    return { ok: false, code: err.code, message: err.message };
  }
  assert.ok(passesSchema(family, msg), `${family.name} parser returned a message that fails its schema: ${safeShow(msg)}`);
  return { ok: true, msg };
}

function safeShow(value: unknown): string {
  try {
    return JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? `${v}n` : v)).slice(0, 300);
  } catch {
    return String(value);
  }
}

function frameProperty(frame: Uint8Array): void {
  const start = performance.now();
  for (const family of families) outcome(family, frame);
  const ms = performance.now() - start;
  assert.ok(ms < SLOW_FRAME_MS, `decoding ${frame.byteLength} bytes took ${ms.toFixed(0)} ms`);
}

test('random byte frames decode to a schema-valid message or throw a ProtocolError, for every parser', { timeout: 120_000 }, (t) => {
  check(t, 'random bytes', 3000, [randomFrame], frameProperty);
});

test('mutated valid frames (bit flips, overwrites, truncation, insertion, deletion, duplication) decode to a schema-valid message or throw a ProtocolError', { timeout: 120_000 }, (t) => {
  check(t, 'mutations', 3000, [mutatedFrame], frameProperty);
});

test('msgpack of arbitrary values, including maps with real type names and random fields, decodes to a schema-valid message or throws a ProtocolError', { timeout: 120_000 }, (t) => {
  check(t, 'arbitrary values', 1000, [anythingFrame], frameProperty);
  check(t, 'real type, random fields', 1500, [typedRandomMap], frameProperty);
  check(t, 'valid message, perturbed fields', 1500, [perturbedValid], frameProperty);
});

test('random valid messages of every family survive encode, decode and parse unchanged', { timeout: 60_000 }, (t) => {
  check(t, 'valid round trip', 600, [validMessage], ({ family, msg }) => {
    const result = outcome(family, encodeMessage(msg));
    assert.ok(result.ok, !result.ok ? `${result.code}: ${result.message}` : '');
    assert.deepStrictEqual(result.msg, msg);
  });
});

test('decoding a frame does not depend on the frames decoded before it, nor on the bytes around it in its buffer', { timeout: 60_000 }, (t) => {
  check(
    t,
    'no state between frames',
    500,
    [fc.array(anyFrame, { maxLength: 4 }), anyFrame, fc.uint8Array({ maxLength: 16 }), fc.uint8Array({ maxLength: 16 })],
    (before, frame, head, tail) => {
      const family = families[frame.byteLength % families.length]!;
      const first = outcome(family, Buffer.from(frame));
      for (const other of before) for (const f of families) outcome(f, other);
      assert.deepStrictEqual(outcome(family, Buffer.from(frame)), first, 'same frame, decoded after others');
      const big = Buffer.concat([head, frame, tail]);
      const view = big.subarray(head.byteLength, head.byteLength + frame.byteLength);
      assert.deepStrictEqual(outcome(family, view), first, 'same frame, as a view into a larger buffer');
    },
  );
});

// ---------------------------------------------------------------------------------------------------------------
// Through a MessageConnection over a fake WebSocket

type Frame = { data: Buffer; binary: boolean };
type Delivery = { msg: { type: string }; attachment: Buffer | undefined };
type Expected = { delivered: Delivery[]; error: ProtocolErrorCode | null };

const CONNECTION_CODES = new Set<number>([CloseCode.MALFORMED, CloseCode.UNKNOWN_TYPE, CloseCode.INVALID, CloseCode.TOO_LARGE, CloseCode.UNEXPECTED]);

/** What MessageConnection must do with `frames`, from the protocol's rules (connection.ts header comment). */
function model(family: Family, frames: Frame[], maxAttachmentBytes: number): Expected {
  const delivered: Delivery[] = [];
  let pending: { msg: { type: string }; bytes: number } | null = null;
  for (const { data, binary } of frames) {
    if (!binary) return { delivered, error: 'PRT_ERR_MALFORMED' };
    if (pending) {
      if (data.byteLength !== pending.bytes) return { delivered, error: 'PRT_ERR_UNEXPECTED' };
      delivered.push({ msg: pending.msg, attachment: data });
      pending = null;
      continue;
    }
    const result = outcome(family, data);
    if (!result.ok) return { delivered, error: result.code };
    const attach = (result.msg as { attach?: unknown }).attach;
    if (typeof attach !== 'number') delivered.push({ msg: result.msg, attachment: undefined });
    else if (attach > maxAttachmentBytes) return { delivered, error: 'PRT_ERR_TOO_LARGE' };
    else if (attach > 0) pending = { msg: result.msg, bytes: attach };
    else delivered.push({ msg: result.msg, attachment: Buffer.alloc(0) });
  }
  return { delivered, error: null };
}

interface Run {
  ws: FakeWebSocket;
  conn: MessageConnection<{ type: string }, Envelope>;
  delivered: Delivery[];
  invalidDeliveries: unknown[];
  rejects: ProtocolError[];
  closes: Array<{ code: number; reason: string }>;
}

function runConnection(family: Family, frames: Frame[], maxAttachmentBytes: number): Run {
  const ws = new FakeWebSocket({ manualClose: true });
  const run: Omit<Run, 'conn'> = { ws, delivered: [], invalidDeliveries: [], rejects: [], closes: [] };
  const conn = new MessageConnection<{ type: string }, Envelope>(ws.asWebSocket, {
    parse: family.parse,
    onMessage(msg, attachment) {
      if (!passesSchema(family, msg)) run.invalidDeliveries.push(msg);
      run.delivered.push({ msg, attachment });
    },
    onReject: (err) => run.rejects.push(err),
    onClose: (code, reason) => run.closes.push({ code, reason }),
    label: `fuzz-${family.name}`,
    log: silentLogger,
    maxAttachmentBytes,
  });
  assert.equal(ws.binaryType, 'nodebuffer');
  for (const frame of frames) {
    try {
      ws.emit('message', frame.data, frame.binary);
    } catch (err) {
      throw new assert.AssertionError({ message: `the 'message' handler threw: ${(err as Error)?.stack ?? String(err)}` });
    }
  }
  return { ...run, conn };
}

/** Runs `frames` through a connection and checks it against the model. */
function connectionProperty(family: Family, frames: Frame[], maxAttachmentBytes: number): Run {
  const expected = model(family, frames, maxAttachmentBytes);
  const run = runConnection(family, frames, maxAttachmentBytes);
  const { ws, conn } = run;
  assert.deepStrictEqual(run.invalidDeliveries, [], 'onMessage got a message that fails the schema');
  assert.equal(run.delivered.length, expected.delivered.length, 'number of messages delivered');
  run.delivered.forEach((d, i) => {
    assert.deepStrictEqual(d.msg, expected.delivered[i]!.msg);
    if (expected.delivered[i]!.attachment === undefined) assert.equal(d.attachment, undefined);
    else assert.ok(d.attachment && d.attachment.equals(expected.delivered[i]!.attachment!), 'attachment bytes');
  });
  if (expected.error) {
    const closeCode = ProtocolErrorCodes[expected.error];
    assert.equal(ws.closeCalls.length, 1, 'exactly one close');
    assert.equal(ws.closeCalls[0]!.code, closeCode, `closed with ${ws.closeCalls[0]!.code}, expected ${closeCode} (${expected.error})`);
    assert.ok(CONNECTION_CODES.has(closeCode));
    assert.equal(run.rejects.length, 1, 'onReject called once');
    assert.equal(run.rejects[0]!.code, expected.error);
    assert.equal(run.rejects[0]!.closeCode, ws.closeCalls[0]!.code);
    assert.equal(conn.isOpen, false);
    assert.equal(run.closes.length, 0, 'onClose waits for the close handshake');
    // Frames that still arrive while the close handshake runs (ws emits them in CLOSING) change nothing.
    ws.emit('message', encodeMessage(Object.values(family.examples)[0]!), true);
    ws.emit('message', Buffer.from([0xc1]), true);
    ws.emit('message', Buffer.from('text'), false);
    assert.equal(ws.closeCalls.length, 1);
    assert.equal(run.rejects.length, 1);
    assert.equal(run.delivered.length, expected.delivered.length);
    ws.finishClose();
    // The reason arrives as UTF-8 (a lone surrogate in the text becomes U+FFFD).
    assert.deepStrictEqual(run.closes, [{ code: closeCode, reason: Buffer.from(ws.closeCalls[0]!.reason).toString() }]);
  } else {
    assert.equal(ws.closeCalls.length, 0, `closed with ${ws.closeCalls[0]?.code} though every frame was valid`);
    assert.equal(run.rejects.length, 0);
    assert.equal(conn.isOpen, true);
    ws.remoteClose(CloseCode.NORMAL, 'bye');
    assert.deepStrictEqual(run.closes, [{ code: CloseCode.NORMAL, reason: 'bye' }]);
    assert.equal(conn.isOpen, false);
  }
  return run;
}

const ATTACHING_TYPES = new Set(['collective.result', 'ring.data', 'stream.data', 'pipe.data']);
const maxAttachmentArb = fc.constantFrom(0, 1, 7, 64, 1000);
/** An attach value: small, or anywhere up to the schema maximum. */
const attachArb = fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 80 }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 64 * 1024 * 1024 }) });

/** A valid header that declares an attachment of `attach` bytes, for a family that has such messages. */
function attachingHeader(family: Family, attach: number): fc.Arbitrary<Envelope> {
  const schemas = Object.entries(family.schemas).filter(([type]) => ATTACHING_TYPES.has(type));
  if (schemas.length === 0) return messageArbs.get(family)!;
  return fc.oneof(...schemas.map(([, s]) => fromSchema(s) as fc.Arbitrary<Envelope>)).map((msg) => ({ ...msg, attach }));
}

/** A few frames: valid messages, headers with right, wrong or oversized attachments, garbage, text frames. */
function segment(family: Family): fc.Arbitrary<Frame[]> {
  const bin = (data: Buffer): Frame => ({ data, binary: true });
  return fc.oneof(
    { weight: 3, arbitrary: messageArbs.get(family)!.map((msg) => [bin(encodeMessage(msg))]) },
    {
      weight: 3,
      arbitrary: attachArb.chain((attach) =>
        fc.tuple(attachingHeader(family, attach), fc.uint8Array({ minLength: Math.min(attach, 80), maxLength: Math.min(attach, 80) })).map(([h, bytes]) =>
          attach > 80 ? [bin(encodeMessage(h))] : [bin(encodeMessage(h)), bin(Buffer.from(bytes))],
        ),
      ),
    },
    {
      weight: 2,
      arbitrary: fc
        .tuple(attachArb, fc.integer({ min: 0, max: 90 }))
        .filter(([attach, length]) => attach !== length)
        .chain(([attach, length]) =>
          fc.tuple(attachingHeader(family, attach), fc.uint8Array({ minLength: length, maxLength: length })).map(([h, bytes]) => [bin(encodeMessage(h)), bin(Buffer.from(bytes))]),
        ),
    },
    { weight: 4, arbitrary: anyFrame.map((data) => [bin(data)]) },
    { weight: 1, arbitrary: fc.oneof(validFrame, randomFrame).map((data) => [{ data, binary: false }]) },
  );
}

const scenario = familyArb.chain((family) =>
  fc.record({
    family: fc.constant(family),
    max: maxAttachmentArb,
    frames: fc.array(segment(family), { minLength: 1, maxLength: 5 }).map((segments) => segments.flat()),
  }),
);

test('through a MessageConnection, every bad frame closes the link once with its close code and no invalid message is delivered', { timeout: 120_000 }, (t) => {
  check(t, 'connection: mixed sequences', 2000, [scenario], ({ family, frames, max }) => {
    connectionProperty(family, frames, max);
  });
  check(t, 'connection: one bad frame', 1500, [familyArb, anyFrame, maxAttachmentArb], (family, data, max) => {
    connectionProperty(family, [{ data, binary: true }], max);
  });
});

test('through a MessageConnection, a text frame closes with 4001 whatever it holds, even where an attachment is expected', { timeout: 60_000 }, (t) => {
  check(t, 'connection: text frames', 300, [familyArb, fc.oneof(validFrame, anyFrame), fc.boolean()], (family, data, afterHeader) => {
    const frames: Frame[] = [];
    if (afterHeader && family.name !== 'coordinator') {
      const header = family.name === 'peer' ? { type: 'stream.data', seq: 1, attach: data.byteLength || 1 } : { ...family.examples['collective.result']!, attach: data.byteLength || 1 };
      frames.push({ data: encodeMessage(header), binary: true });
    }
    frames.push({ data, binary: false });
    const run = connectionProperty(family, frames, 1 << 20);
    assert.equal(run.ws.closeCalls[0]!.code, CloseCode.MALFORMED);
    assert.equal(run.delivered.length, 0);
  });
});

test('through a MessageConnection, an attachment of the wrong length after a header declaring attach closes with 4006', { timeout: 60_000 }, (t) => {
  check(
    t,
    'connection: wrong attachment length',
    300,
    [fc.integer({ min: 1, max: 300 }), fc.integer({ min: 0, max: 400 }), fc.boolean()],
    (attach, length, peer) => {
      fc.pre(attach !== length);
      const family = families.find((f) => f.name === (peer ? 'peer' : 'agent'))!;
      const header = peer ? { type: 'ring.data', seq: 1, phase: 0, hop: 0, offset: 0, count: 1, attach } : { ...family.examples['collective.result']!, attach };
      const run = connectionProperty(family, [{ data: encodeMessage(header), binary: true }, { data: Buffer.alloc(length, 7), binary: true }], 1024);
      assert.equal(run.ws.closeCalls[0]!.code, CloseCode.UNEXPECTED);
      assert.match(run.ws.closeCalls[0]!.reason, new RegExp(`is ${length} bytes, header said ${attach}`));
      assert.equal(run.delivered.length, 0);
    },
  );
});

test('through a MessageConnection, a header declaring more than maxAttachmentBytes closes with 4004 before the attachment arrives', { timeout: 60_000 }, (t) => {
  check(t, 'connection: oversized attachment', 300, [fc.integer({ min: 0, max: 4096 }), fc.integer({ min: 1, max: 64 * 1024 * 1024 })], (max, over) => {
    const attach = Math.min(max + over, 64 * 1024 * 1024);
    fc.pre(attach > max);
    const family = families.find((f) => f.name === 'peer')!;
    const run = connectionProperty(family, [{ data: encodeMessage({ type: 'stream.data', seq: 0, attach }), binary: true }, { data: Buffer.alloc(Math.min(attach, 8192)), binary: true }], max);
    assert.equal(run.ws.closeCalls[0]!.code, CloseCode.TOO_LARGE);
    assert.equal(run.delivered.length, 0);
  });
  // Exactly at the limit is accepted.
  const family = families.find((f) => f.name === 'peer')!;
  const run = connectionProperty(family, [{ data: encodeMessage({ type: 'stream.data', seq: 0, attach: 100 }), binary: true }, { data: Buffer.alloc(100, 1), binary: true }], 100);
  assert.equal(run.delivered.length, 1);
});

test('through a MessageConnection, a valid message followed by garbage is delivered, then the link closes once', { timeout: 60_000 }, (t) => {
  check(t, 'connection: valid then garbage', 500, [validMessage, fc.oneof(randomFrame, mutatedFrame, anythingFrame), fc.array(anyFrame, { maxLength: 3 })], ({ family, msg }, garbage, more) => {
    // Keep any attachment small, and send it, so that the garbage is what ends the link.
    const declared = (msg as { attach?: unknown }).attach;
    const attach = typeof declared === 'number' ? declared % 65 : undefined;
    const frames: Frame[] = [{ data: encodeMessage(attach === undefined ? msg : { ...msg, attach }), binary: true }];
    if (attach) frames.push({ data: Buffer.alloc(attach, 9), binary: true });
    const expected = model(family, [...frames, { data: garbage, binary: true }, ...more.map((data) => ({ data, binary: true }))], 64 * 1024 * 1024);
    fc.pre(expected.error !== null);
    connectionProperty(family, [...frames, { data: garbage, binary: true }, ...more.map((data) => ({ data, binary: true }))], 64 * 1024 * 1024);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Worked examples of the same rules, easy to read when a property fails

test('a text frame holding a valid message closes the connection with 4001 and delivers nothing', () => {
  const peer = families.find((f) => f.name === 'peer')!;
  const run = connectionProperty(peer, [{ data: encodeMessage({ type: 'peer.welcome', rank: 1 }), binary: false }], 0);
  assert.equal(run.ws.closeCalls[0]!.code, CloseCode.MALFORMED);
  assert.match(run.ws.closeCalls[0]!.reason, /text frames/);
});

test('a stream.data header followed by a shorter attachment closes with 4006; one of the right length is delivered byte for byte', () => {
  const peer = families.find((f) => f.name === 'peer')!;
  const header = encodeMessage({ type: 'stream.data', seq: 5, attach: 4 });
  const short = connectionProperty(peer, [{ data: header, binary: true }, { data: Buffer.from([1, 2, 3]), binary: true }], 1024);
  assert.equal(short.ws.closeCalls[0]!.code, CloseCode.UNEXPECTED);
  const good = connectionProperty(peer, [{ data: header, binary: true }, { data: Buffer.from([1, 2, 3, 4]), binary: true }], 1024);
  assert.deepStrictEqual(good.delivered, [{ msg: { type: 'stream.data', seq: 5, attach: 4 }, attachment: Buffer.from([1, 2, 3, 4]) }]);
});

test('attach: 0 delivers the message with an empty attachment and reads the next frame as a new message', () => {
  const peer = families.find((f) => f.name === 'peer')!;
  const run = connectionProperty(
    peer,
    [
      { data: encodeMessage({ type: 'stream.data', seq: 1, attach: 0 }), binary: true },
      { data: encodeMessage({ type: 'peer.welcome', rank: 2 }), binary: true },
    ],
    0,
  );
  assert.equal(run.delivered.length, 2);
  assert.deepStrictEqual(run.delivered[0]!.attachment, Buffer.alloc(0));
  assert.equal(run.delivered[1]!.attachment, undefined);
});

test('a valid message, then garbage, then more valid messages: the first is delivered, the link closes with 4001 once, the rest are ignored', () => {
  const peer = families.find((f) => f.name === 'peer')!;
  const welcome = encodeMessage({ type: 'peer.welcome', rank: 2 });
  const run = connectionProperty(
    peer,
    [
      { data: welcome, binary: true },
      { data: Buffer.from('not msgpack at all'), binary: true },
      { data: welcome, binary: true },
      { data: Buffer.from([0xc1]), binary: true },
    ],
    0,
  );
  assert.equal(run.delivered.length, 1);
  assert.equal(run.ws.closeCalls.length, 1);
  assert.equal(run.ws.closeCalls[0]!.code, CloseCode.MALFORMED);
});

test('the reason sent with a rejection is at most 123 bytes even when the error message is long', () => {
  const peer = families.find((f) => f.name === 'peer')!;
  // The decoder's message quotes the decoded value; the unknown-type message quotes up to 40 characters.
  const cases = [
    Buffer.concat([encodeMessage({ type: 'peer.welcome', rank: 2, pad: '€'.repeat(200) }), Buffer.from([0])]),
    encodeMessage({ type: '😀'.repeat(100) }),
    encodeMessage({ type: 'ring.data', seq: 1, phase: 0, hop: 0, offset: 0, count: 1, attach: 1, ['x'.repeat(300)]: 1 }),
  ];
  for (const data of cases) {
    const run = connectionProperty(peer, [{ data, binary: true }], 10);
    assert.ok(Buffer.byteLength(run.ws.closeCalls[0]!.reason) <= 123);
  }
});

test('the fuzz properties ran at least 10,000 cases in total', (t) => {
  t.diagnostic(`total fuzz runs: ${totalRuns} (base seed ${BASE_SEED}, scale ${SCALE})`);
  if (SCALE >= 1) assert.ok(totalRuns >= 10_000, `only ${totalRuns} runs`);
});
