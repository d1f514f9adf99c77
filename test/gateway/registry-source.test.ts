/** Loading model versions from the coordinator's registry, as a folder and over its API, checked against sha256. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../common/log.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import { ModelRegistry } from '../../coordinator/registry/registry.ts';
import { createCoordinator } from '../../coordinator/api/server.ts';
import { SqliteStateStore } from '../../coordinator/store/state-store.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { DirRegistrySource, HttpRegistrySource, openRegistry } from '../../gateway/registry-source.ts';

const files = (tag: string) => ({
  'config.json': Buffer.from(JSON.stringify({ model_type: 'gpt2', n_ctx: 64, tag })),
  'model.safetensors': Buffer.from(`weights-${tag}`),
  'tokenizer.json': Buffer.from('{}'),
});
const text = (b: Uint8Array | undefined) => Buffer.from(b!).toString();
const sha = (b: string | Buffer) => createHash('sha256').update(b).digest('hex');

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'gw-registry-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A coordinator data folder with two versions of 'tiny', registered by the coordinator's own registry code. */
async function coordinatorData(t: TestContext): Promise<string> {
  const data = tempDir(t);
  const state = new SqliteStateStore(join(data, 'state.db'));
  const registry = new ModelRegistry(join(data, 'registry'), state.database);
  await registry.register('tiny', files('a'), { jobId: 'job-1' }, 1000);
  await registry.register('tiny', files('b'), { jobId: 'job-2', parent: { name: 'tiny', version: 1 } }, 2000);
  state.close();
  return data;
}

const refusedWith = (code: string, pattern: RegExp) => (err: unknown) => {
  assert.ok(err instanceof GatewayError, String(err));
  assert.equal(err.code, code);
  assert.match(err.message, pattern);
  return true;
};

test('a coordinator registry folder loads the latest version, verified against the coordinator\'s manifest', async (t) => {
  const data = await coordinatorData(t);
  const source = openRegistry(join(data, 'registry'));
  assert.ok(source instanceof DirRegistrySource);
  assert.deepEqual(await source.models(), ['tiny']);
  const { files: got, meta } = await source.load('tiny');
  assert.equal(meta.version, 2);
  assert.equal(meta.verified, true);
  assert.equal(meta.createdMs, 2000);
  assert.deepEqual(meta.lineage, { jobId: 'job-2', parent: { name: 'tiny', version: 1 } });
  assert.deepEqual([...got.keys()].sort(), ['config.json', 'lineage.json', 'model.safetensors', 'tokenizer.json']);
  assert.equal(text(got.get('model.safetensors')), 'weights-b');
  assert.equal(meta.manifest['model.safetensors']!.sha256, sha('weights-b'));
  assert.equal(text((await source.load('tiny', 1)).files.get('model.safetensors')), 'weights-a', 'an older version by number');
});

test('a file changed on disk since registration is refused, naming the file and both digests', async (t) => {
  const data = await coordinatorData(t);
  writeFileSync(join(data, 'registry', 'tiny', 'v2', 'model.safetensors'), 'weights-B'); // same size, other bytes
  await assert.rejects(new DirRegistrySource(join(data, 'registry')).load('tiny'), refusedWith('GW_ERR_CHECKSUM', new RegExp(`model.safetensors has sha256 ${sha('weights-B')}, the manifest says ${sha('weights-b')}`)));
});

/** A hand-built registry folder: DIR/NAME/vN/ with the files, manifest.json in the API's shape, and LATEST. */
function handBuilt(t: TestContext, opts: { manifest?: boolean } = {}): string {
  const dir = tempDir(t);
  const version = join(dir, 'demo', 'v3');
  mkdirSync(version, { recursive: true });
  const content = { ...files('c'), 'lineage.json': Buffer.from('{"jobId":"job-9"}') };
  for (const [name, bytes] of Object.entries(content)) writeFileSync(join(version, name), bytes);
  if (opts.manifest !== false) {
    const manifest = Object.fromEntries(Object.entries(content).map(([name, bytes]) => [name, { bytes: bytes.length, sha256: sha(bytes) }]));
    writeFileSync(join(version, 'manifest.json'), JSON.stringify({ files: manifest, createdMs: 5 }));
  }
  writeFileSync(join(dir, 'demo', 'LATEST'), 'v3\n');
  return dir;
}

test('a hand-built folder with a manifest.json loads verified; a corrupted or missing file is refused', async (t) => {
  const dir = handBuilt(t);
  const { files: got, meta } = await new DirRegistrySource(dir).load('demo');
  assert.deepEqual([meta.version, meta.verified, meta.createdMs, meta.lineage], [3, true, 5, { jobId: 'job-9' }]);
  assert.ok(!got.has('manifest.json'), 'the manifest is not a model file');
  writeFileSync(join(dir, 'demo', 'v3', 'tokenizer.json'), '{ }');
  await assert.rejects(new DirRegistrySource(dir).load('demo'), refusedWith('GW_ERR_CHECKSUM', /tokenizer.json is 3 bytes, the manifest says 2/));
  rmSync(join(dir, 'demo', 'v3', 'tokenizer.json'));
  await assert.rejects(new DirRegistrySource(dir).load('demo'), refusedWith('GW_ERR_CHECKSUM', /tokenizer.json is listed in the manifest but missing/));
});

test('a folder version without any manifest loads, marked unverified', async (t) => {
  const { meta } = await new DirRegistrySource(handBuilt(t, { manifest: false })).load('demo');
  assert.equal(meta.verified, false);
  assert.deepEqual(meta.manifest, {});
});

test('a missing model, a bad LATEST and a bad model name are registry errors that say what is wrong', async (t) => {
  const dir = handBuilt(t);
  const source = new DirRegistrySource(dir);
  await assert.rejects(source.load('other'), refusedWith('GW_ERR_REGISTRY', /no model other in/));
  await assert.rejects(source.load('demo', 9), refusedWith('GW_ERR_REGISTRY', /model demo v9: cannot read/));
  await assert.rejects(source.load('../etc'), refusedWith('GW_ERR_REGISTRY', /not a valid model name/));
  writeFileSync(join(dir, 'demo', 'LATEST'), 'three');
  await assert.rejects(source.load('demo'), refusedWith('GW_ERR_REGISTRY', /should hold a version like 'v3', not 'three'/));
});

test('over the coordinator API, files are downloaded with the cluster token and checked against the manifest', async (t) => {
  const data = await coordinatorData(t);
  const coordinator = createCoordinator(resolveConfig({ dataDir: data, token: 'cluster-token', host: '127.0.0.1', port: 0 }), silentLogger);
  t.after(() => coordinator.close());
  const { port } = await coordinator.listen();
  const url = `http://127.0.0.1:${port}`;

  const source = openRegistry(url, { token: 'cluster-token' });
  assert.ok(source instanceof HttpRegistrySource);
  assert.deepEqual(await source.models(), ['tiny']);
  const { files: got, meta } = await source.load('tiny');
  assert.deepEqual([meta.version, meta.verified, meta.createdMs], [2, true, 2000]);
  assert.equal(text(got.get('model.safetensors')), 'weights-b');
  assert.equal(meta.lineage.jobId, 'job-2');
  assert.equal(text((await source.load('tiny', 1)).files.get('model.safetensors')), 'weights-a');

  await assert.rejects(openRegistry(url, { token: 'wrong' }).models(), refusedWith('GW_ERR_REGISTRY', /401 CRD_ERR_UNAUTHORIZED.*pass the cluster token with --token/));
  await assert.rejects(source.load('nope'), refusedWith('GW_ERR_REGISTRY', /404/));

  // Bytes corrupted on the way (a proxy, a truncated download) are refused.
  const corrupting: typeof fetch = async (input, init) => {
    const res = await fetch(input, init);
    if (!String(input).endsWith('/files/model.safetensors')) return res;
    const bytes = Buffer.from(await res.arrayBuffer());
    bytes[0] = bytes[0]! ^ 1;
    return new Response(bytes, { status: 200 });
  };
  await assert.rejects(openRegistry(url, { token: 'cluster-token', fetch: corrupting }).load('tiny'), refusedWith('GW_ERR_CHECKSUM', /model.safetensors has sha256 .* refusing to serve it/));
});

test('an unreachable registry URL is a registry error naming the address', async () => {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  await new Promise((r) => server.close(r)); // a port nobody listens on
  await assert.rejects(openRegistry(`http://127.0.0.1:${port}`).models(), refusedWith('GW_ERR_REGISTRY', new RegExp(`cannot reach the registry at http://127.0.0.1:${port} \\(ECONNREFUSED\\)`)));
});
