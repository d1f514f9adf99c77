/**
 * The Mailbox (point-to-point tensors on one ring) against fake links: what it sends, what it holds, when it pauses
 * the inbound link, and how each of its failures reads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LinkMailbox, type MailboxOutLink } from '../../node-agent/collectives/mailbox.ts';
import type { RingInLink } from '../../node-agent/collectives/ring.ts';
import { AgentError } from '../../node-agent/errors.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import type { PipeData } from '../../protocol/peer.ts';

/** An out link whose write window and flush the test opens by hand; it records what was sent (copied). */
class FakeOut implements MailboxOutLink {
  sent: Array<{ msg: PipeData; bytes: Buffer }> = [];
  writable = true;
  #windowWaiters: Array<() => void> = [];
  #flushWaiters: Array<() => void> = [];
  autoFlush = true;

  send(msg: PipeData, payload: Uint8Array): void {
    this.sent.push({ msg: { ...msg }, bytes: Buffer.from(payload) });
  }
  whenWritable(): Promise<void> {
    return this.writable ? Promise.resolve() : new Promise((resolve) => this.#windowWaiters.push(resolve));
  }
  flushed(): Promise<void> {
    return this.autoFlush ? Promise.resolve() : new Promise((resolve) => this.#flushWaiters.push(resolve));
  }
  openWindow(): void {
    this.writable = true;
    for (const w of this.#windowWaiters.splice(0)) w();
  }
  flush(): void {
    for (const w of this.#flushWaiters.splice(0)) w();
  }
}

class FakeIn implements RingInLink {
  paused = false;
  pauses = 0;
  resumes = 0;
  pause(): void {
    this.paused = true;
    this.pauses++;
  }
  resume(): void {
    this.paused = false;
    this.resumes++;
  }
}

const floats = (...values: number[]) => Float32Array.from(values);
const bytesOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const msg = (tag: string, bytes: number): PipeData => ({ type: 'pipe.data', tag, attach: bytes });
/** Delivers `data` under `tag` as the peer server would: the raw bytes of one frame. */
const deliver = (box: LinkMailbox, tag: string, data: Float32Array) => box.receive(msg(tag, data.byteLength), Buffer.from(bytesOf(data)));
const tick = () => new Promise((r) => setImmediate(r));

function mailbox(opts: { limitBytes?: number } = {}) {
  const out = new FakeOut();
  const inbound = new FakeIn();
  return { out, inbound, box: new LinkMailbox(out, inbound, { label: 'ring pp.0 of group g1', ...opts }) };
}

test('send puts one pipe.data with the tag and the raw float32 bytes on the out link', async () => {
  const { out, box } = mailbox();
  await box.send('fwd:3', floats(1.5, -2, 3.25));
  assert.equal(out.sent.length, 1);
  assert.deepEqual(out.sent[0]!.msg, { type: 'pipe.data', tag: 'fwd:3', attach: 12 });
  assert.deepEqual(out.sent[0]!.bytes, bytesOf(floats(1.5, -2, 3.25)));
});

test('send of a view sends only the view\'s elements', async () => {
  const { out, box } = mailbox();
  await box.send('x', floats(0, 1, 2, 3, 4).subarray(1, 3));
  assert.deepEqual(out.sent[0]!.bytes, bytesOf(floats(1, 2)));
});

test('messages that arrive in another order than they are received each reach their own recv', async () => {
  const { box } = mailbox();
  const a = box.recv('a', 1000);
  const b = box.recv('b', 1000);
  deliver(box, 'c', floats(3));
  deliver(box, 'b', floats(2, 2));
  deliver(box, 'a', floats(1));
  assert.deepEqual(await a, floats(1));
  assert.deepEqual(await b, floats(2, 2));
  assert.deepEqual(await box.recv('c', 1000), floats(3));
  assert.equal(box.heldBytes, 0);
});

test('a message that arrives before its recv is held and handed over as a fresh, aligned copy', async () => {
  const { box } = mailbox();
  // An unaligned view into a larger buffer, as ws may deliver it.
  const frame = Buffer.alloc(1 + 8);
  bytesOf(floats(7, 8)).copy(frame, 1);
  const payload = frame.subarray(1);
  box.receive(msg('early', 8), payload);
  assert.equal(box.heldBytes, 8);
  payload.fill(0); // the sender's buffer being reused must not change what we hold
  const got = await box.recv('early', 1000);
  assert.deepEqual(got, floats(7, 8));
  assert.equal(got.byteOffset, 0);
  assert.equal(got.buffer.byteLength, 8);
  assert.equal(box.heldBytes, 0);
});

test('an empty tensor is a valid message', async () => {
  const { out, box } = mailbox();
  await box.send('empty', new Float32Array(0));
  assert.equal(out.sent[0]!.msg.attach, 0);
  box.receive(msg('empty', 0), Buffer.alloc(0));
  assert.deepEqual(await box.recv('empty', 1000), new Float32Array(0));
});

test('a second message under a tag still unreceived is a protocol error; once received, the tag may be used again', async () => {
  const { box } = mailbox();
  deliver(box, 'fwd:0', floats(1));
  assert.throws(
    () => deliver(box, 'fwd:0', floats(2)),
    (err: unknown) => err instanceof ProtocolError && err.code === 'PRT_ERR_UNEXPECTED' && /second pipe\.data under 'fwd:0'/.test(err.message),
  );
  assert.deepEqual(await box.recv('fwd:0', 1000), floats(1));
  deliver(box, 'fwd:0', floats(3));
  assert.deepEqual(await box.recv('fwd:0', 1000), floats(3));
});

test('an attachment that is not a whole number of float32 values is a protocol error', () => {
  const { box } = mailbox();
  assert.throws(
    () => box.receive(msg('odd', 6), Buffer.alloc(6)),
    (err: unknown) => err instanceof ProtocolError && err.code === 'PRT_ERR_INVALID' && /6 bytes/.test(err.message),
  );
});

test('recv fails with AGT_ERR_COLLECTIVE_TIMEOUT when nothing arrives in time, and a later message under the tag is held for the next recv', async () => {
  const { box } = mailbox();
  const t0 = Date.now();
  await assert.rejects(box.recv('bwd:1', 30), (err: unknown) => err instanceof AgentError && err.code === 'AGT_ERR_COLLECTIVE_TIMEOUT' && /'bwd:1' within 30 ms/.test(err.message));
  assert.ok(Date.now() - t0 >= 25);
  deliver(box, 'bwd:1', floats(4));
  assert.deepEqual(await box.recv('bwd:1', 1000), floats(4));
});

test('a second recv of a tag while the first still waits is refused', async () => {
  const { box } = mailbox();
  const first = box.recv('t', 1000);
  await assert.rejects(box.recv('t', 1000), (err: unknown) => err instanceof AgentError && err.code === 'AGT_ERR_GROUP');
  deliver(box, 't', floats(1));
  assert.deepEqual(await first, floats(1));
});

test('abort fails waiting recvs, drops held tensors, and fails every later send and recv with the same error', async () => {
  const { box, inbound } = mailbox({ limitBytes: 0 });
  const waiting = box.recv('a', 10_000);
  deliver(box, 'b', floats(1));
  assert.equal(inbound.paused, true);
  const err = new AgentError('AGT_ERR_LINK_CLOSED', 'inbound link closed');
  box.abort(err);
  await assert.rejects(waiting, (e) => e === err);
  await assert.rejects(box.recv('b', 1000), (e) => e === err);
  await assert.rejects(box.send('c', floats(1)), (e) => e === err);
  assert.equal(box.heldBytes, 0);
  assert.equal(inbound.paused, false, 'its pause is released');
  deliver(box, 'late', floats(1)); // data still in flight when the link went: dropped, not an error
  assert.equal(box.heldBytes, 0);
});

test('send waits for the write window before sending and for the flush before resolving', async () => {
  const { out, box } = mailbox();
  out.writable = false;
  out.autoFlush = false;
  let resolved = false;
  const sending = box.send('fwd:0', floats(1, 2)).then(() => (resolved = true));
  await tick();
  assert.equal(out.sent.length, 0, 'nothing is sent while the window is full');
  out.openWindow();
  await tick();
  assert.equal(out.sent.length, 1);
  assert.equal(resolved, false, 'not resolved before the socket has taken the bytes');
  out.flush();
  await sending;
  assert.equal(resolved, true);
});

test('a send waiting for the write window fails when the mailbox is aborted', async () => {
  const { out, box } = mailbox();
  out.writable = false;
  const sending = box.send('fwd:0', floats(1));
  const err = new AgentError('AGT_ERR_GROUP', 'group g1 was released');
  box.abort(err);
  await assert.rejects(sending, (e) => e === err);
  assert.equal(out.sent.length, 0);
});

test('held bytes beyond the limit pause the inbound link until recv drains them to the limit', async () => {
  const { box, inbound } = mailbox({ limitBytes: 16 });
  deliver(box, 'a', new Float32Array(2)); // 8
  deliver(box, 'b', new Float32Array(2)); // 16: at the limit, still reading
  assert.equal(inbound.paused, false);
  deliver(box, 'c', new Float32Array(2)); // 24: over
  assert.equal(inbound.paused, true);
  deliver(box, 'd', new Float32Array(2)); // already in flight when we paused: held, no second pause
  assert.equal(inbound.pauses, 1);
  await box.recv('a', 1000); // 24
  assert.equal(inbound.paused, true);
  await box.recv('d', 1000); // 16
  assert.equal(inbound.paused, false);
  assert.equal(inbound.resumes, 1);
  assert.equal(box.heldBytes, 16);
});

test('a message that goes straight to a waiting recv is never counted against the limit', async () => {
  const { box, inbound } = mailbox({ limitBytes: 4 });
  const waiting = box.recv('big', 1000);
  deliver(box, 'big', new Float32Array(1000));
  assert.equal((await waiting).length, 1000);
  assert.equal(inbound.pauses, 0);
});

test('bad tags and timeouts are refused before anything is sent', async () => {
  const { out, box } = mailbox();
  for (const tag of ['', 'has space', 'x'.repeat(65), 'ü', 'a/b']) {
    await assert.rejects(box.send(tag, floats(1)), RangeError);
    await assert.rejects(box.recv(tag, 1000), RangeError);
  }
  for (const ms of [0, -1, NaN]) await assert.rejects(box.recv('ok', ms), RangeError);
  assert.equal(out.sent.length, 0);
});

test('a mailbox in a ring of one has nobody to talk to and says so', async () => {
  const box = new LinkMailbox(null, null, { label: 'ring solo' });
  await assert.rejects(box.send('a', floats(1)), (err: unknown) => err instanceof AgentError && err.code === 'AGT_ERR_GROUP' && /ring solo has one member/.test(err.message));
  await assert.rejects(box.recv('a', 1000), (err: unknown) => err instanceof AgentError && err.code === 'AGT_ERR_GROUP');
});

test('two mailboxes joined by fake links pass tensors both ways, as two pipeline neighbours do', async () => {
  // A's out link delivers into B and the other way round, each on a later macrotask.
  const a = mailbox();
  const b = mailbox();
  const wire = (from: FakeOut, to: LinkMailbox) => {
    from.send = (m, payload) => {
      const copy = Buffer.from(payload);
      setImmediate(() => to.receive(m, copy));
    };
  };
  wire(a.out, b.box);
  wire(b.out, a.box);
  const acts = floats(0.5, 1.5, 2.5);
  const grads = floats(-1, -2, -3);
  await a.box.send('fwd:0', acts);
  acts.fill(9); // the sender may reuse its buffer once send resolves
  const [gotActs] = await Promise.all([b.box.recv('fwd:0', 1000), b.box.send('bwd:0', grads)]);
  assert.deepEqual(gotActs, floats(0.5, 1.5, 2.5));
  assert.deepEqual(await a.box.recv('bwd:0', 1000), floats(-1, -2, -3));
});
