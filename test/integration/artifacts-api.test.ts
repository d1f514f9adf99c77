/** Content-addressed artifacts over HTTP on a real coordinator process. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { startCluster, type LocalCluster } from '../../scripts/local-cluster.ts';

describe('the artifacts API', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await startCluster({ agents: 0 });
  });
  after(() => cluster?.stop());

  const put = (digest: string, body: Uint8Array, headers: Record<string, string> = {}) =>
    fetch(`${cluster.url}/api/artifacts/${digest}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${cluster.token}`, 'content-type': 'application/octet-stream', ...headers },
      body,
    });
  const get = (digest: string, method = 'GET') =>
    fetch(`${cluster.url}/api/artifacts/${digest}`, { method, headers: { authorization: `Bearer ${cluster.token}` } });

  test('bytes stored under their sha256 come back identical, and HEAD tells their size', async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 17); // larger than the JSON body limit: uploads stream
    const digest = createHash('sha256').update(bytes).digest('hex');
    const res = await put(digest, bytes);
    assert.equal(res.status, 201, await res.clone().text());
    assert.deepEqual(await res.json(), { digest, bytes: bytes.length });
    const back = Buffer.from(await (await get(digest)).arrayBuffer());
    assert.ok(back.equals(bytes));
    const head = await get(digest, 'HEAD');
    assert.equal(head.headers.get('content-length'), String(bytes.length));
  });

  test('an upload whose bytes do not match the digest in its path is refused and not stored', async () => {
    const claimed = createHash('sha256').update('something else').digest('hex');
    const res = await put(claimed, Buffer.from('these bytes'));
    assert.equal(res.status, 400);
    assert.match(((await res.json()) as { error: { message: string } }).error.message, /cut short or corrupted/);
    assert.equal((await get(claimed)).status, 404);
  });

  test('a malformed digest, an encoded path escape among them, is a 400 before any file is touched', async () => {
    for (const bad of ['abc', 'Z'.repeat(64), 'a'.repeat(63), '..%2F..%2F..%2Fetc%2Fpasswd']) {
      for (const method of ['GET', 'HEAD']) assert.equal((await get(bad, method)).status, 400, `${method} ${bad}`);
    }
  });

  test('artifacts need the cluster token', async () => {
    const res = await fetch(`${cluster.url}/api/artifacts/${'0'.repeat(64)}`);
    assert.equal(res.status, 401);
  });
});
