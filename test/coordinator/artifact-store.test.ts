/**
 * coordinator/store/artifact-store.ts: the content-addressed store under a temp folder. Writes are atomic (temp file,
 * fsync, rename), reads are verified, digests are the only way to name a file (no path traversal).
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { ArtifactStore } from '../../coordinator/store/artifact-store.ts';
import { CoordinatorError, type CoordinatorErrorCode } from '../../coordinator/errors.ts';

const root = mkdtempSync(join(tmpdir(), 'meshtrain-artifacts-test-'));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshStore = () => new ArtifactStore(join(root, `store-${++n}`));
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function isCoordinatorError(code: CoordinatorErrorCode, messageIncludes?: string) {
  return (err: unknown) => {
    assert.ok(err instanceof CoordinatorError, `a CoordinatorError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (messageIncludes !== undefined) assert.ok(err.message.includes(messageIncludes), `"${err.message}" names ${messageIncludes}`);
    return true;
  };
}

describe('ArtifactStore', () => {
  test('put returns the sha256 of the bytes and get returns the same bytes', async () => {
    const store = freshStore();
    const bytes = randomBytes(10_000);
    const digest = await store.put(bytes);
    assert.equal(digest, sha256(bytes));
    assert.match(digest, /^[0-9a-f]{64}$/);
    assert.equal(store.has(digest), true);
    assert.deepEqual(await store.get(digest), bytes);
    assert.equal(store.pathOf(digest), join(store.dir, 'sha256', digest.slice(0, 2), digest));
    assert.equal(existsSync(store.pathOf(digest)), true);
  });

  test('putting the same bytes twice is idempotent: same digest, one file', async () => {
    const store = freshStore();
    const bytes = Buffer.from('the same content');
    const a = await store.put(bytes);
    const b = await store.put(Buffer.from(bytes));
    assert.equal(a, b);
    assert.deepEqual(readdirSync(join(store.dir, 'sha256', a.slice(0, 2))), [a]);
    assert.deepEqual(readdirSync(join(store.dir, 'tmp')), [], 'no temp files left behind');
  });

  test('an empty artifact is stored and read back', async () => {
    const store = freshStore();
    const digest = await store.put(new Uint8Array(0));
    assert.equal(digest, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    assert.equal((await store.get(digest)).length, 0);
  });

  test('a file corrupted on disk is refused with CRD_ERR_STORAGE naming its path', async () => {
    const store = freshStore();
    const digest = await store.put(Buffer.from('original bytes'));
    const path = store.pathOf(digest);
    writeFileSync(path, 'tampered bytes');
    await assert.rejects(store.get(digest), isCoordinatorError('CRD_ERR_STORAGE', path));
  });

  test('a missing digest is refused with CRD_ERR_NOT_FOUND', async () => {
    const store = freshStore();
    const digest = sha256(Buffer.from('never stored'));
    assert.equal(store.has(digest), false);
    await assert.rejects(store.get(digest), isCoordinatorError('CRD_ERR_NOT_FOUND', digest));
  });

  for (const bad of [
    '../../etc/passwd',
    '../' + 'a'.repeat(61),
    'a'.repeat(63),
    'a'.repeat(65),
    'A'.repeat(64),
    'g'.repeat(64),
    'a'.repeat(64) + '\n',
    'a'.repeat(62) + '/x',
    '',
  ]) {
    test(`the digest ${JSON.stringify(bad.length > 20 ? bad.slice(0, 20) + '…' : bad)} (${bad.length} chars) is refused with CRD_ERR_BAD_REQUEST`, async () => {
      const store = freshStore();
      await assert.rejects(store.get(bad), isCoordinatorError('CRD_ERR_BAD_REQUEST'));
      assert.throws(() => store.pathOf(bad), isCoordinatorError('CRD_ERR_BAD_REQUEST'));
      assert.throws(() => store.createReadStream(bad), isCoordinatorError('CRD_ERR_BAD_REQUEST'));
      assert.equal(store.has(bad), false);
    });
  }

  test('a path-traversal digest never reads a file outside the store', async () => {
    const store = freshStore();
    // A file the traversal would reach if the digest were joined into a path unchecked.
    const outside = join(store.dir, 'secret');
    writeFileSync(outside, 'secret');
    await assert.rejects(store.get('../secret'), isCoordinatorError('CRD_ERR_BAD_REQUEST'));
    await assert.rejects(store.get('../../secret'), isCoordinatorError('CRD_ERR_BAD_REQUEST'));
  });

  test('putStream of a multi-megabyte stream gives the same digest and bytes as put of the same bytes', async () => {
    const bytes = randomBytes(6 * 1024 * 1024 + 123);
    const streamed = freshStore();
    // Odd-sized chunks, so chunk boundaries do not line up with anything.
    const chunks: Buffer[] = [];
    for (let off = 0; off < bytes.length; off += 65_537) chunks.push(bytes.subarray(off, off + 65_537));
    const res = await streamed.putStream(Readable.from(chunks));
    assert.equal(res.bytes, bytes.length);
    assert.equal(res.digest, sha256(bytes));
    const direct = freshStore();
    assert.equal(await direct.put(bytes), res.digest);
    assert.equal((await streamed.get(res.digest)).equals(bytes), true);
    assert.deepEqual(readdirSync(join(streamed.dir, 'tmp')), []);
  });

  test('putStream of content already stored keeps one file and the same digest', async () => {
    const store = freshStore();
    const bytes = randomBytes(100_000);
    const digest = await store.put(bytes);
    const res = await store.putStream(Readable.from([bytes]));
    assert.equal(res.digest, digest);
    assert.deepEqual(readdirSync(join(store.dir, 'sha256', digest.slice(0, 2))), [digest]);
    assert.deepEqual(readdirSync(join(store.dir, 'tmp')), []);
  });

  test('a failing source stream leaves no temp file and stores nothing', async () => {
    const store = freshStore();
    const source = new Readable({
      read() {
        this.push(Buffer.alloc(1024, 1));
        this.destroy(new Error('source broke'));
      },
    });
    await assert.rejects(store.putStream(source), /source broke/);
    assert.deepEqual(readdirSync(join(store.dir, 'tmp')), []);
    assert.deepEqual(readdirSync(join(store.dir, 'sha256')), []);
  });

  test('temp files left over by a crash are removed when the store is constructed, stored artifacts are kept', async () => {
    const dir = join(root, `crash-${++n}`);
    const first = new ArtifactStore(dir);
    const digest = await first.put(Buffer.from('survivor'));
    // What a crash mid-write leaves: partial files (and maybe a folder) under tmp/.
    writeFileSync(join(dir, 'tmp', '12345-deadbeefdeadbeef'), 'partial write');
    mkdirSync(join(dir, 'tmp', 'nested'));
    writeFileSync(join(dir, 'tmp', 'nested', 'x'), 'partial');
    const second = new ArtifactStore(dir);
    assert.deepEqual(readdirSync(join(dir, 'tmp')), []);
    assert.equal((await second.get(digest)).toString(), 'survivor');
  });

  test('the read stream of a stored artifact yields its bytes', async () => {
    const store = freshStore();
    const bytes = randomBytes(300_000);
    const digest = await store.put(bytes);
    const parts: Buffer[] = [];
    for await (const chunk of store.createReadStream(digest)) parts.push(chunk as Buffer);
    assert.equal(Buffer.concat(parts).equals(bytes), true);
  });

  test('verify re-hashes a stored file as a stream: its size when intact, CRD_ERR_STORAGE when damaged, CRD_ERR_NOT_FOUND when absent', async () => {
    const store = freshStore();
    const bytes = randomBytes(9 << 20); // more than two 4 MiB reads
    const digest = await store.put(bytes);
    assert.equal(await store.verify(digest), bytes.length);
    writeFileSync(store.pathOf(digest), bytes.subarray(0, 1000));
    await assert.rejects(store.verify(digest), isCoordinatorError('CRD_ERR_STORAGE', digest));
    await assert.rejects(store.verify('0'.repeat(64)), isCoordinatorError('CRD_ERR_NOT_FOUND'));
  });

  test('putFile copies a file in under its sha256, skips one already stored, and refuses one that changed', async () => {
    const store = freshStore();
    const src = join(root, `src-${++n}`);
    const bytes = randomBytes(5 << 20);
    writeFileSync(src, bytes);
    assert.equal(await store.putFile(src), sha256(bytes));
    assert.ok((await store.get(sha256(bytes))).equals(bytes));
    assert.equal(await store.putFile(join(root, 'nowhere'), sha256(bytes)), sha256(bytes), 'already stored: the source is not even read');
    writeFileSync(src, Buffer.from('changed'));
    await assert.rejects(store.putFile(src, 'a'.repeat(64)), isCoordinatorError('CRD_ERR_STORAGE', src));
    assert.deepEqual(readdirSync(join(store.dir, 'tmp')), [], 'nothing left behind');
  });

  test('commitFile moves a file hashed elsewhere into the store, and drops it when the digest is stored already', async () => {
    const store = freshStore();
    const scratch = await store.scratchDir();
    const bytes = randomBytes(1000);
    writeFileSync(join(scratch, 'a'), bytes);
    await store.commitFile(join(scratch, 'a'), sha256(bytes));
    assert.ok((await store.get(sha256(bytes))).equals(bytes));
    writeFileSync(join(scratch, 'b'), bytes);
    await store.commitFile(join(scratch, 'b'), sha256(bytes));
    assert.deepEqual(readdirSync(scratch), []);
  });
});
