import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStateStore } from '../../coordinator/store/state-store.ts';
import { ModelRegistry } from '../../coordinator/registry/registry.ts';
import { createCoordinator } from '../../coordinator/api/server.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import { silentLogger } from '../../common/log.ts';

const files = (tag: string) => ({
  'config.json': Buffer.from(JSON.stringify({ model_type: 'gpt2', tag })),
  'model.safetensors': Buffer.from(`weights-${tag}`),
  'tokenizer.json': Buffer.from('{}'),
});

function fresh(t: import('node:test').TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'registry-'));
  const state = new SqliteStateStore(join(dir, 'state.db'));
  t.after(() => {
    state.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { dir, state, registry: new ModelRegistry(join(dir, 'registry'), state.database) };
}

test('versions of a model are numbered from 1 and land as complete HF-style folders with lineage', async (t) => {
  const { registry } = fresh(t);
  const v1 = await registry.register('tiny', files('a'), { jobId: 'job-1', metrics: { loss: 2.5 } }, 1000);
  const v2 = await registry.register('tiny', files('b'), { jobId: 'job-2', parent: { name: 'tiny', version: 1 } }, 2000);
  assert.deepEqual([v1.version, v2.version], [1, 2]);
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'lineage.json']) assert.ok(existsSync(join(v2.path, f)), f);
  assert.deepEqual(JSON.parse(readFileSync(join(v2.path, 'lineage.json'), 'utf8')).parent, { name: 'tiny', version: 1 });
  assert.deepEqual(registry.models(), [{ name: 'tiny', versions: 2, latest: 2, updatedMs: 2000 }]);
  assert.equal(registry.readFile('tiny', 1, 'model.safetensors').toString(), 'weights-a');
});

test('a version without weights or config is refused, and so is a bad name', async (t) => {
  const { registry } = fresh(t);
  const { 'model.safetensors': _w, ...noWeights } = files('x');
  await assert.rejects(registry.register('tiny', noWeights, {}), /needs model.safetensors/);
  await assert.rejects(registry.register('../evil', files('x'), {}), { code: 'CRD_ERR_BAD_REQUEST' });
  await assert.rejects(registry.register('tiny', { ...files('x'), '../x': Buffer.from('') }, {}), /not allowed/);
  assert.deepEqual(registry.models(), []);
});

test('a registered file changed on disk is refused when read', async (t) => {
  const { registry } = fresh(t);
  const v = await registry.register('tiny', files('a'), {});
  writeFileSync(join(v.path, 'model.safetensors'), 'tampered');
  assert.throws(() => registry.readFile('tiny', 1, 'model.safetensors'), { code: 'CRD_ERR_STORAGE' });
});

test('a half-written version left by a crash is cleared on start and never listed', async (t) => {
  const { dir, state } = fresh(t);
  mkdirSync(join(dir, 'registry', '.tmp', 'deadbeef'), { recursive: true });
  writeFileSync(join(dir, 'registry', '.tmp', 'deadbeef', 'model.safetensors'), 'partial');
  const registry = new ModelRegistry(join(dir, 'registry'), state.database);
  assert.equal(existsSync(join(dir, 'registry', '.tmp', 'deadbeef')), false);
  assert.deepEqual(registry.models(), []);
});

test('the models API lists models and versions and serves checked files', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'registry-api-'));
  const coordinator = createCoordinator(resolveConfig({ dataDir: dir, token: 'registry-test-token' }), silentLogger);
  t.after(async () => {
    await coordinator.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await coordinator.registry.register('tiny', files('a'), { jobId: 'job-1' });
  const auth = { authorization: 'Bearer registry-test-token' };
  const models = await coordinator.app.inject({ url: '/api/models', headers: auth });
  assert.equal(models.json().models[0].name, 'tiny');
  const versions = await coordinator.app.inject({ url: '/api/models/tiny/versions', headers: auth });
  assert.equal(versions.json().versions[0].lineage.jobId, 'job-1');
  const latest = await coordinator.app.inject({ url: '/api/models/tiny/versions/latest', headers: auth });
  assert.equal(latest.json().version, 1);
  const file = await coordinator.app.inject({ url: '/api/models/tiny/versions/1/files/model.safetensors', headers: auth });
  assert.equal(file.body, 'weights-a');
  assert.equal((await coordinator.app.inject({ url: '/api/models/nope/versions', headers: auth })).statusCode, 404);
  assert.equal((await coordinator.app.inject({ url: '/api/models/tiny/versions/zero', headers: auth })).statusCode, 400);
  assert.equal((await coordinator.app.inject({ url: '/api/models/tiny/versions/1/files/secret.txt', headers: auth })).statusCode, 404);
  assert.equal((await coordinator.app.inject({ url: '/api/models' })).statusCode, 401);
});

test('each version folder carries a manifest that verifies its files on their own', async (t) => {
  const { registry } = fresh(t);
  const v = await registry.register('tiny', files('a'), { jobId: 'job-1' });
  const manifest = JSON.parse(readFileSync(join(v.path, 'manifest.json'), 'utf8'));
  assert.equal(manifest.version, 1);
  assert.deepEqual(manifest.files, v.files);
  assert.equal(manifest.files['manifest.json'], undefined, 'a manifest does not list itself');
});

test('concurrent registrations of one name get distinct consecutive versions', async (t) => {
  const { registry } = fresh(t);
  const versions = await Promise.all([1, 2, 3, 4].map((i) => registry.register('tiny', files(String(i)), {})));
  assert.deepEqual(versions.map((v) => v.version).sort(), [1, 2, 3, 4]);
});

test('a version folder with no record (a crash between rename and record) is removed on start', async (t) => {
  const { dir, state } = fresh(t);
  mkdirSync(join(dir, 'registry', 'tiny', 'v1'), { recursive: true });
  writeFileSync(join(dir, 'registry', 'tiny', 'v1', 'model.safetensors'), 'orphan');
  const registry = new ModelRegistry(join(dir, 'registry'), state.database);
  assert.equal(existsSync(join(dir, 'registry', 'tiny', 'v1')), false);
  const v = await registry.register('tiny', files('a'), {});
  assert.equal(v.version, 1);
});

test('a file given by path is copied into the version and hashed from the copy, which must match the digest its caller recorded', async (t) => {
  const { dir, registry } = fresh(t);
  const weights = join(dir, 'big.safetensors');
  writeFileSync(weights, Buffer.alloc(9 << 20, 7)); // more than one 4 MiB hashing piece
  const { 'model.safetensors': _inMemory, ...rest } = files('p');
  const v = await registry.register('tiny', { ...rest, 'model.safetensors': { path: weights } }, {});
  assert.equal(v.files['model.safetensors']!.sha256, createHash('sha256').update(readFileSync(weights)).digest('hex'));
  assert.equal(v.files['model.safetensors']!.bytes, 9 << 20);
  assert.ok(registry.readFile('tiny', 1, 'model.safetensors').equals(readFileSync(weights)), 'a copy, checked against the recorded sha256');
  const again = await registry.register('tiny', { ...rest, 'model.safetensors': { path: weights, sha256: v.files['model.safetensors']!.sha256 } }, {});
  assert.equal(again.version, 2);
  await assert.rejects(registry.register('tiny', { ...rest, 'model.safetensors': { path: weights, sha256: 'a'.repeat(64) } }, {}), (err: Error & { code?: string }) =>
    err.code === 'CRD_ERR_STORAGE' && /changed since its sha256 was recorded/.test(err.message));
  await assert.rejects(registry.register('tiny', { ...rest, 'model.safetensors': { path: join(dir, 'missing') } }, {}), { code: 'CRD_ERR_STORAGE' });
  assert.deepEqual(registry.versions('tiny').map((x) => x.version), [1, 2], 'a failed copy registers nothing');
  assert.deepEqual(readdirSync(join(dir, 'registry', '.tmp')), [], 'and leaves nothing behind');
});
