/**
 * fetchTrusting (common/tls.ts), the fetch an agent started with --ca uses for artifacts: a stream body (how
 * checkpoints are uploaded) arrives whole and in order over HTTPS, and a stream that fails mid-way fails the
 * request instead of sending a short body. Before stream bodies were supported, such an agent could not upload a
 * checkpoint at all ("only string and byte bodies are supported").
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { fetchTrusting, loadTrust } from '../../common/tls.ts';
import { makeTestPki, type TestPki } from '../support/tls.ts';

let pki: TestPki;
let server: Server;
let url: string;
const received: Array<{ bytes: number; sha256: string; length: string | undefined; complete: boolean }> = [];

before(async () => {
  pki = makeTestPki();
  server = createServer({ cert: readFileSync(pki.cert), key: readFileSync(pki.key) }, (req, res) => {
    const hash = createHash('sha256');
    let bytes = 0;
    req.on('data', (c: Buffer) => {
      hash.update(c);
      bytes += c.length;
    });
    req.on('end', () => {
      received.push({ bytes, sha256: hash.digest('hex'), length: req.headers['content-length'], complete: true });
      res.end('stored');
    });
    req.on('aborted', () => received.push({ bytes, sha256: '', length: req.headers['content-length'], complete: false }));
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/upload`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((ok) => server.close(() => ok()));
  pki.remove();
});

function piecesOf(pieces: Uint8Array[], failAfter?: number): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (failAfter !== undefined && i === failAfter) return controller.error(new Error('the file ended early'));
      if (i >= pieces.length) return controller.close();
      controller.enqueue(pieces[i++]!);
    },
  }, { highWaterMark: 0 });
}

test('a stream body goes up whole, in order, with the caller\'s content-length', async () => {
  const pieces = Array.from({ length: 9 }, (_, k) => randomBytes(k === 8 ? 12_345 : 1 << 20));
  const all = Buffer.concat(pieces);
  const res = await fetchTrusting(loadTrust(pki.caCert))(url, {
    method: 'PUT', headers: { 'content-length': String(all.length) }, body: piecesOf(pieces), duplex: 'half',
  } as RequestInit);
  assert.equal(res.status, 200);
  assert.equal(await res.text(), 'stored');
  assert.deepEqual(received.at(-1), { bytes: all.length, sha256: createHash('sha256').update(all).digest('hex'), length: String(all.length), complete: true });
});

test('a stream that fails mid-way fails the request: the server never sees a complete body', async () => {
  const pieces = Array.from({ length: 4 }, () => randomBytes(1 << 20));
  const before = received.length;
  await assert.rejects(fetchTrusting(loadTrust(pki.caCert))(url, {
    method: 'PUT', headers: { 'content-length': String(4 << 20) }, body: piecesOf(pieces, 2), duplex: 'half',
  } as RequestInit), (err: Error) => err instanceof TypeError && err.message === 'fetch failed');
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(received.slice(before).every((r) => !r.complete), JSON.stringify(received.slice(before)));
});
