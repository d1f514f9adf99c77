/**
 * Every message type of every family (agent → coordinator, coordinator → agent, peer), mutated field by field
 * (mutations.ts): each mutation is predicted to be accepted or rejected with a given error code, and both the
 * parser and a MessageConnection must do exactly that — the connection closing once with the matching close code,
 * delivering nothing invalid. Attachment rules are checked per attaching type: a shorter or longer attachment
 * than declared closes with 4006, a declaration above the connection's limit with 4004 before any byte of it.
 *
 * Run: npx tsx --test test/protocol/mutations.test.ts
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeFrame, encodeMessage, type Envelope } from '../../protocol/codec.ts';
import { CloseCode } from '../../protocol/codes.ts';
import { MessageConnection } from '../../protocol/connection.ts';
import { ProtocolError, ProtocolErrorCodes } from '../../protocol/errors.ts';
import { silentLogger } from '../../common/log.ts';
import { FakeWebSocket } from '../support/fake-websocket.ts';
import { allTypeNames, families, passesSchema, type Family } from './fixtures.ts';
import { describeMutation, mutationsOf, type Mutation, type Prediction } from './mutations.ts';

function parsed(family: Family, frame: Buffer): Prediction {
  try {
    const msg = family.parse(decodeFrame(frame));
    assert.ok(passesSchema(family, msg), 'the parser returned a message that fails its schema');
    return 'accept';
  } catch (err) {
    if (err instanceof ProtocolError) return err.code;
    throw err;
  }
}

/** Feeds `frames` to a MessageConnection over a fake socket; returns what it delivered and how it closed. */
function throughConnection(family: Family, frames: Buffer[], maxAttachmentBytes: number) {
  const ws = new FakeWebSocket({ manualClose: true });
  const delivered: Array<{ msg: { type: string }; attachment: Buffer | undefined }> = [];
  const rejects: ProtocolError[] = [];
  new MessageConnection<{ type: string }, Envelope>(ws.asWebSocket, {
    parse: family.parse,
    onMessage: (msg, attachment) => void delivered.push({ msg, attachment }),
    onReject: (err) => rejects.push(err),
    label: `mutation-${family.name}`,
    log: silentLogger,
    maxAttachmentBytes,
  });
  for (const f of frames) ws.emit('message', f, true);
  return { delivered, rejects, closes: ws.closeCalls };
}

const attachmentOf = (msg: Record<string, unknown>) => (typeof msg.attach === 'number' ? msg.attach : undefined);
// One zeroed buffer for every accepted attachment (the largest fixture declares 64 MiB).
const ZEROS = Buffer.alloc(64 * 1024 * 1024);

const all = families.map((family) => ({ family, mutations: mutationsOf(family) }));

describe('field-level mutations of every message type', () => {
  test('cover every message type of every family, each with rejected and accepted variants', () => {
    for (const type of allTypeNames) {
      const ms = all.flatMap((a) => a.mutations).filter((m) => m.type === type);
      assert.ok(ms.filter((m) => m.expect === 'PRT_ERR_INVALID').length >= 4, `${type}: at least 4 invalid mutations`);
      assert.ok(ms.some((m) => m.expect === 'accept'), `${type}: at least one accepted variant`);
      assert.ok(ms.some((m) => m.expect === 'PRT_ERR_UNKNOWN_TYPE'), `${type}: a renamed type`);
    }
  });

  for (const { family, mutations } of all) {
    test(`${family.name} messages: the parser does what each of the ${mutations.length} mutations predicts`, () => {
      const wrong: string[] = [];
      for (const m of mutations) {
        const got = parsed(family, encodeMessage(m.msg as Envelope));
        if (got !== m.expect) wrong.push(`${describeMutation(m)}, got ${got}`);
      }
      assert.deepEqual(wrong, []);
    });

    test(`${family.name} messages: a MessageConnection delivers each accepted mutation once and closes once with the predicted code on each rejected one`, () => {
      const wrong: string[] = [];
      for (const m of mutations as Mutation[]) {
        const frame = encodeMessage(m.msg as Envelope);
        const attach = attachmentOf(m.msg);
        const frames = m.expect === 'accept' && attach ? [frame, ZEROS.subarray(0, attach)] : [frame];
        const run = throughConnection(family, frames, 64 * 1024 * 1024);
        if (m.expect === 'accept') {
          const ok = run.closes.length === 0 && run.delivered.length === 1 && (attach === undefined || run.delivered[0]!.attachment?.byteLength === attach);
          if (!ok) wrong.push(`${describeMutation(m)}: closes ${JSON.stringify(run.closes)}, ${run.delivered.length} delivered`);
        } else {
          const code = ProtocolErrorCodes[m.expect];
          const ok = run.closes.length === 1 && run.closes[0]!.code === code && run.delivered.length === 0 && run.rejects.length === 1 && run.rejects[0]!.code === m.expect;
          if (!ok) wrong.push(`${describeMutation(m)}: closes ${JSON.stringify(run.closes.map((c) => c.code))}, ${run.delivered.length} delivered`);
        }
      }
      assert.deepEqual(wrong, []);
    });
  }

  test('every attaching type: an attachment shorter or longer than declared closes with 4006, a declaration above the limit with 4004 before any byte of it', () => {
    const attaching = families.flatMap((family) => Object.entries(family.examples).filter(([, msg]) => typeof msg.attach === 'number').map(([type, msg]) => ({ family, type, msg })));
    assert.deepEqual(attaching.map((a) => a.type).sort(), ['collective.result', 'pipe.data', 'ring.data', 'stream.data']);
    for (const { family, type, msg } of attaching) {
      const header = (attach: number) => encodeMessage({ ...msg, attach, ...(type === 'ring.data' ? { count: attach / 4 } : {}) });
      for (const [declared, sent] of [[64, 63], [64, 65], [64, 0], [4, 4096]] as const) {
        const run = throughConnection(family, [header(declared), Buffer.alloc(sent)], 1024);
        assert.deepEqual(run.closes.map((c) => c.code), [CloseCode.UNEXPECTED], `${type}: declared ${declared}, sent ${sent}`);
        assert.equal(run.delivered.length, 0);
      }
      const over = throughConnection(family, [header(2048)], 1024);
      assert.deepEqual(over.closes.map((c) => c.code), [CloseCode.TOO_LARGE], `${type}: 2048 declared, limit 1024`);
      const exact = throughConnection(family, [header(1024), Buffer.alloc(1024, 1)], 1024);
      assert.equal(exact.closes.length, 0, `${type}: exactly at the limit is accepted`);
      assert.equal(exact.delivered[0]?.attachment?.byteLength, 1024);
    }
  });
});
