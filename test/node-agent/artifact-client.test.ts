import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { createCoordinator } from '../../coordinator/api/server.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import { silentLogger } from '../../common/log.ts';
import { ArtifactClient, sha256Hex } from '../../node-agent/artifact-client.ts';

async function setup(t: import('node:test').TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'artifact-client-'));
  const coordinator = createCoordinator(resolveConfig({ dataDir: join(dir, 'coord'), token: 'artifact-token', host: '127.0.0.1', port: 0 }), silentLogger);
  const { port } = await coordinator.listen();
  t.after(async () => {
    await coordinator.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const client = new ArtifactClient({ baseUrl: `http://127.0.0.1:${port}`, token: 'artifact-token', cacheDir: join(dir, 'cache'), retries: 1 });
  return { dir, coordinator, client, port };
}

test('uploaded bytes download identical, and the second download comes from the cache', async (t) => {
  const { client, dir, coordinator } = await setup(t);
  const bytes = randomBytes(200_000);
  const digest = await client.put(bytes);
  assert.equal(digest, sha256Hex(bytes));
  assert.ok((await client.get(digest)).equals(bytes));
  await coordinator.close(); // the cache must serve it now
  assert.ok((await client.get(digest)).equals(bytes));
  assert.deepEqual(readdirSync(join(dir, 'cache')), [digest]);
});

test('a corrupted cache entry is ignored and fetched again', async (t) => {
  const { client, dir } = await setup(t);
  const digest = await client.put(Buffer.from('checkpoint bytes'));
  await client.get(digest);
  writeFileSync(join(dir, 'cache', digest), 'garbage');
  assert.equal((await client.get(digest)).toString(), 'checkpoint bytes');
});

test('a missing artifact fails at once with AGT_ERR_ARTIFACT naming it', async (t) => {
  const { client } = await setup(t);
  const missing = 'a'.repeat(64);
  await assert.rejects(client.get(missing), (err: Error & { code?: string }) => err.code === 'AGT_ERR_ARTIFACT' && err.message.includes(missing));
});

test('a wrong token is refused without retrying forever', async (t) => {
  const { port, dir } = await setup(t);
  let requests = 0; // counted rather than timed: a retry is a second request, however fast or slow the machine
  const counting: typeof fetch = (input, init) => (requests++, fetch(input, init));
  const client = new ArtifactClient({ baseUrl: `http://127.0.0.1:${port}`, token: 'wrong', cacheDir: join(dir, 'c2'), retries: 5, fetch: counting });
  await assert.rejects(client.put(Buffer.from('x')), /HTTP 401/);
  assert.equal(requests, 1, 'a 401 is not retried');
});

test('uploadFile streams a file of several pieces; each attempt reads the file again, and the wrong digest is refused', async (t) => {
  const { client, dir, port } = await setup(t);
  const bytes = randomBytes(3 * (1 << 20) + 12_345); // 4 pieces of at most 1 MiB
  const path = join(dir, 'model.safetensors');
  writeFileSync(path, bytes);
  await client.uploadFile(path, sha256Hex(bytes));
  assert.ok((await client.get(sha256Hex(bytes))).equals(bytes));

  // The first attempt's connection fails mid-way: the retry must send the whole file from its first byte.
  let attempts = 0;
  const flaky: typeof fetch = async (input, init) => {
    attempts++;
    if (attempts === 1) {
      const reader = (init!.body as ReadableStream<Uint8Array>).getReader();
      await reader.read(); // one piece consumed, then the "network" drops
      throw new TypeError('fetch failed');
    }
    return fetch(input, init);
  };
  const other = randomBytes((1 << 20) + 7);
  writeFileSync(path, other);
  const retrying = new ArtifactClient({ baseUrl: `http://127.0.0.1:${port}`, token: 'artifact-token', cacheDir: join(dir, 'c3'), retries: 2, fetch: flaky });
  await retrying.uploadFile(path, sha256Hex(other));
  assert.equal(attempts, 2);
  assert.ok((await client.get(sha256Hex(other))).equals(other));

  await assert.rejects(client.uploadFile(path, 'b'.repeat(64)), /HTTP 4\d\d/);
  await assert.rejects(client.uploadFile(join(dir, 'missing'), 'c'.repeat(64)), /ENOENT/);
});

test('uploadFile does not keep what it sent: a 256 MB upload holds a few pieces at a time, not the file', async (t) => {
  const { client, dir } = await setup(t);
  const path = join(dir, 'big.bin');
  const piece = randomBytes(1 << 20);
  const hash = createHash('sha256');
  const fd = openSync(path, 'w');
  for (let i = 0; i < 256; i++) {
    writeSync(fd, piece);
    hash.update(piece);
  }
  closeSync(fd);
  let peak = 0;
  const sample = () => (peak = Math.max(peak, process.memoryUsage().arrayBuffers));
  const timer = setInterval(sample, 20);
  const base = process.memoryUsage().arrayBuffers;
  try {
    await client.uploadFile(path, hash.digest('hex'));
  } finally {
    clearInterval(timer);
  }
  sample();
  // fetch following redirects tees the body, and the unread branch kept every piece: the whole 256 MB.
  assert.ok(peak - base < 128e6, `array buffers peaked ${((peak - base) / 1e6).toFixed(0)} MB above where they started`);
});
