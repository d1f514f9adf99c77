/**
 * MessageConnection over real sockets: a ws server on 127.0.0.1 (the product's serverOptions, a 1 MB maxPayload)
 * wraps each connection with parsePeerMessage; raw ws clients send it bad input and must see the documented close
 * codes, while the server keeps serving.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { encodeMessage, type Envelope } from '../../protocol/codec.ts';
import { CloseCode } from '../../protocol/codes.ts';
import { MessageConnection } from '../../protocol/connection.ts';
import type { ProtocolError } from '../../protocol/errors.ts';
import { parsePeerMessage, type PeerMessage } from '../../protocol/peer.ts';
import { clientOptions, serverOptions } from '../../protocol/ws-options.ts';
import { silentLogger } from '../../common/log.ts';

const MAX_PAYLOAD = 1024 * 1024;
const MAX_ATTACHMENT = 512 * 1024;
const WAIT_MS = 5000;

let wss: WebSocketServer;
let url = '';
const clients = new Set<WebSocket>();
/** Server-side events: 'message' (msg, attachment), 'reject' (err), 'close' (code). */
const server = new EventEmitter();
const serverRejects: ProtocolError[] = [];
const serverErrors: unknown[] = [];
let connections = 0;

before(async () => {
  wss = new WebSocketServer({ host: '127.0.0.1', port: 0, ...serverOptions(MAX_PAYLOAD) });
  wss.on('error', (err) => serverErrors.push(err));
  wss.on('connection', (ws) => {
    connections++;
    new MessageConnection<PeerMessage, Envelope>(ws, {
      parse: parsePeerMessage,
      onMessage: (msg, attachment) => {
        server.emit('message', msg, attachment);
      },
      onReject: (err) => {
        serverRejects.push(err);
        server.emit('reject', err);
      },
      onClose: (code) => server.emit('close', code),
      label: `server#${connections}`,
      log: silentLogger,
      maxAttachmentBytes: MAX_ATTACHMENT,
    });
  });
  await once(wss, 'listening');
  url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`;
});

after(async () => {
  for (const client of clients) client.terminate();
  if (!wss) return;
  for (const ws of wss.clients) ws.terminate();
  await new Promise<void>((resolve) => wss.close(() => resolve()));
});

/** `promise`, or a rejection naming `what` after WAIT_MS; the timer never outlives the wait. */
async function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${WAIT_MS} ms`)), WAIT_MS);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function connect(): Promise<WebSocket> {
  const ws = new WebSocket(url, clientOptions(MAX_PAYLOAD));
  clients.add(ws);
  ws.on('error', () => {}); // a client may see ECONNRESET after the server closes on it; the close code is what we test
  await within(once(ws, 'open'), 'client open');
  return ws;
}

/** Resolves with the close code and reason the client sees. */
function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  const done = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.once('close', (code, reason) => {
      clients.delete(ws);
      resolve({ code, reason: reason.toString() });
    });
  });
  return within(done, 'client close');
}

function nextServerMessage(): Promise<[PeerMessage, Buffer | undefined]> {
  return within(once(server, 'message') as Promise<[PeerMessage, Buffer | undefined]>, 'server message');
}

/** Sends `frames` from a fresh raw client and returns how the server closed on it. */
async function sendAndAwaitClose(frames: Array<Buffer | string>): Promise<{ code: number; reason: string }> {
  const ws = await connect();
  const done = closed(ws);
  for (const frame of frames) ws.send(frame, { binary: typeof frame !== 'string' });
  return done;
}

test('garbage from a client closes its connection with 4001 (MALFORMED)', async () => {
  const before = serverRejects.length;
  const { code, reason } = await sendAndAwaitClose([Buffer.from([0xc1, 0x00, 0xff, 0x13, 0x37])]);
  assert.equal(code, CloseCode.MALFORMED);
  assert.match(reason, /not valid msgpack/);
  assert.equal(serverRejects.length, before + 1);
  assert.equal(serverRejects.at(-1)!.code, 'PRT_ERR_MALFORMED');
});

test('a text frame closes the connection with 4001 (MALFORMED)', async () => {
  const { code, reason } = await sendAndAwaitClose(['{"type":"peer.welcome","rank":1}']);
  assert.equal(code, CloseCode.MALFORMED);
  assert.match(reason, /text frames/);
});

test('a message of an unknown type closes the connection with 4002 (UNKNOWN_TYPE)', async () => {
  const { code, reason } = await sendAndAwaitClose([encodeMessage({ type: 'peer.bogus', rank: 1 })]);
  assert.equal(code, CloseCode.UNKNOWN_TYPE);
  assert.match(reason, /peer\.bogus/);
});

test('a message with invalid fields closes the connection with 4003 (INVALID), the reason naming the field', async () => {
  const { code, reason } = await sendAndAwaitClose([encodeMessage({ type: 'peer.welcome', rank: -1 })]);
  assert.equal(code, CloseCode.INVALID);
  assert.match(reason, /\/rank/);
});

test('a header declaring more than maxAttachmentBytes closes with 4004 (TOO_LARGE); a wrong-length attachment with 4006 (UNEXPECTED)', async () => {
  const tooLarge = await sendAndAwaitClose([encodeMessage({ type: 'stream.data', seq: 1, attach: MAX_ATTACHMENT + 1 })]);
  assert.equal(tooLarge.code, CloseCode.TOO_LARGE);
  const wrong = await sendAndAwaitClose([encodeMessage({ type: 'stream.data', seq: 1, attach: 10 }), Buffer.alloc(9)]);
  assert.equal(wrong.code, CloseCode.UNEXPECTED);
});

test('a frame over maxPayload closes the connection with 1009, without reaching the protocol layer', async () => {
  const before = serverRejects.length;
  const { code } = await sendAndAwaitClose([Buffer.alloc(MAX_PAYLOAD + 1, 0x81)]);
  assert.equal(code, CloseCode.MESSAGE_TOO_BIG);
  assert.equal(serverRejects.length, before, 'ws rejects it before MessageConnection sees a frame');
});

test('a valid stream.data message with an attachment is delivered with exactly the bytes sent', async () => {
  const ws = await connect();
  const payload = randomBytes(MAX_ATTACHMENT);
  const received = nextServerMessage();
  ws.send(encodeMessage({ type: 'stream.data', seq: 7, attach: payload.byteLength }), { binary: true });
  ws.send(payload, { binary: true });
  const [msg, attachment] = await received;
  assert.deepStrictEqual(msg, { type: 'stream.data', seq: 7, attach: payload.byteLength });
  assert.ok(attachment, 'an attachment was delivered');
  assert.equal(attachment.byteLength, payload.byteLength);
  assert.ok(attachment.equals(payload), 'attachment bytes are identical');

  // The same through a client-side MessageConnection (which adds `attach` itself), twice in a row, then a clean close.
  const conn = new MessageConnection<PeerMessage, Envelope>(ws, {
    parse: parsePeerMessage,
    onMessage: () => {},
    label: 'client',
    log: silentLogger,
    maxAttachmentBytes: MAX_ATTACHMENT,
  });
  const small = randomBytes(1000);
  const got: Array<[PeerMessage, Buffer | undefined]> = [];
  const both = new Promise<void>((resolve) => {
    const onMessage = (msg: PeerMessage, attachment: Buffer | undefined) => {
      got.push([msg, attachment]);
      if (got.length === 2) {
        server.off('message', onMessage);
        resolve();
      }
    };
    server.on('message', onMessage);
  });
  conn.send({ type: 'stream.data', seq: 8 }, small);
  conn.send({ type: 'stream.data', seq: 9 }, new Uint8Array(0));
  await within(both, 'server gets both messages');
  assert.deepStrictEqual(got[0]![0], { type: 'stream.data', seq: 8, attach: 1000 });
  assert.ok(got[0]![1]!.equals(small));
  assert.deepStrictEqual(got[1]![0], { type: 'stream.data', seq: 9, attach: 0 });
  assert.equal(got[1]![1]!.byteLength, 0);
  await conn.flushed();

  const serverClosed = within(once(server, 'close'), 'server close');
  const done = closed(ws);
  conn.close(CloseCode.NORMAL, 'done');
  assert.equal((await done).code, CloseCode.NORMAL);
  assert.deepStrictEqual(await serverClosed, [CloseCode.NORMAL]);
});

test('after all these, the server still accepts new connections and serves them', async () => {
  const before = connections;
  const ws = await connect();
  const received = nextServerMessage();
  ws.send(encodeMessage({ type: 'peer.hello', protocol: '1.0', groupId: 'g1', token: 'group-token', rank: 1 }), { binary: true });
  const [msg, attachment] = await received;
  assert.equal(msg.type, 'peer.hello');
  assert.equal(attachment, undefined);
  assert.equal(connections, before + 1);
  // Several at once, too.
  const more = await Promise.all([connect(), connect(), connect()]);
  assert.equal(connections, before + 4);
  for (const c of [ws, ...more]) assert.equal(c.readyState, WebSocket.OPEN);
  const done = more.map(closed);
  for (const c of more) c.close(CloseCode.NORMAL);
  for (const result of await Promise.all(done)) assert.equal(result.code, CloseCode.NORMAL);
  assert.deepStrictEqual(serverErrors, []);
});
