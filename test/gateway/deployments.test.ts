/** Named deployments: A/B arms by weight, the version header, exposures, switches and rollback, audit, start-up file. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { InjectOptions } from 'fastify';
import { silentLogger } from '../../common/log.ts';
import { runCli } from '../../gateway/cli.ts';
import { DeploymentManager, loadDeploymentsFile, type VersionResolver } from '../../gateway/deployments.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { FakeBackend, type FakeBackendOptions } from '../../gateway/fake-backend.ts';
import { createGateway } from '../../gateway/server.ts';
import { until } from '../support/until.ts';
import { MODEL } from './support.ts';

const ADMIN = 'adm-secret';
const API = 'sk-user';

/** Versions tiny@v1…v3 as FakeBackends; anything else fails like a registry miss. Counts loads. */
function fakeResolver(opts: { delayMs?: number; fake?: FakeBackendOptions } = {}) {
  const loads: string[] = [];
  const resolve: VersionResolver = async (model, version) => {
    if (opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs));
    if (model !== 'tiny' || version < 1 || version > 3) throw new GatewayError('GW_ERR_REGISTRY', `no model ${model} v${version} in the registry`);
    loads.push(`${model}@v${version}`);
    return new FakeBackend({ id: model, ...opts.fake });
  };
  return { resolve, loads };
}

function setup(t: TestContext, opts: { delayMs?: number; fake?: FakeBackendOptions; auditLogPath?: string; manager?: DeploymentManager } = {}) {
  const { resolve, loads } = fakeResolver(opts);
  const deployments = opts.manager ?? new DeploymentManager({ resolve, ...(opts.auditLogPath ? { auditLogPath: opts.auditLogPath } : {}) });
  const fake = new FakeBackend({ id: MODEL });
  const gateway = createGateway({ backends: new Map([[MODEL, fake]]), log: silentLogger, apiKey: API, adminKey: ADMIN, deployments });
  t.after(() => gateway.close());
  const admin = async (method: 'GET' | 'PUT' | 'POST', url: string, payload?: unknown, key = ADMIN) => {
    const o: InjectOptions = { method, url, headers: key ? { authorization: `Bearer ${key}` } : {} };
    if (payload !== undefined) o.payload = payload as InjectOptions['payload'];
    const res = await gateway.app.inject(o);
    return { status: res.statusCode, json: res.json() };
  };
  const complete = async (body: Record<string, unknown>, headers: Record<string, string> = {}) => {
    const res = await gateway.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'chat', prompt: 'hi', max_tokens: 1, ...body }, headers: { authorization: `Bearer ${API}`, ...headers } });
    return { status: res.statusCode, version: res.headers['x-meshtrain-version'] as string | undefined, body: res.body };
  };
  const put = (body: Record<string, unknown>, name = 'chat') => admin('PUT', `/admin/deployments/${name}`, { reason: 'test', ...body });
  return { gateway, deployments, loads, admin, complete, put };
}

const v = (version: number) => ({ model: 'tiny', version });

test('a deployment splits traffic by weight, sticky on the key header, the user field, or a header of its own', async (t) => {
  const { put, complete } = setup(t);
  assert.equal((await put({ primary: v(1), arms: [{ ...v(2), weight: 0.3 }] })).status, 200);
  let onArm = 0;
  const N = 400;
  for (let i = 0; i < N; i++) if ((await complete({}, { 'x-meshtrain-key': `user-${i}` })).version === 'tiny@v2') onArm++;
  assert.ok(Math.abs(onArm / N - 0.3) < 0.08, `arm share ${onArm / N}, want ≈ 0.3`);
  for (const key of ['alice', 'bob', 'carol']) {
    const first = (await complete({}, { 'x-meshtrain-key': key })).version;
    for (let i = 0; i < 5; i++) assert.equal((await complete({}, { 'x-meshtrain-key': key })).version, first, key);
    assert.equal((await complete({ user: key })).version, first, 'the user field is the key when the header is absent');
  }
  assert.equal((await put({ primary: v(1), arms: [{ ...v(2), weight: 0.5 }], stickyHeader: 'X-Session' })).status, 200);
  const bySession = (await complete({}, { 'x-session': 'dave' })).version;
  for (let i = 0; i < 5; i++) assert.equal((await complete({ user: `noise-${i}` }, { 'x-session': 'dave' })).version, bySession);
});

test('the response names the serving version in x-meshtrain-version, streams included, and plain models have none', async (t) => {
  const { put, complete, gateway } = setup(t);
  await put({ primary: v(2) });
  const res = await complete({});
  assert.equal(res.status, 200);
  assert.equal(res.version, 'tiny@v2');
  assert.equal(JSON.parse(res.body).model, 'chat');
  assert.equal((await complete({ stream: true })).version, 'tiny@v2');
  assert.equal((await complete({ model: MODEL })).version, undefined);
  const models = (await gateway.app.inject({ url: '/v1/models', headers: { authorization: `Bearer ${API}` } })).json();
  assert.deepEqual(models.data.map((m: { id: string }) => m.id), ['chat', MODEL]);
});

test('exposures are counted per deployment and version in meshtrain_gateway_deployment_exposures_total', async (t) => {
  const { put, complete, gateway } = setup(t);
  await put({ primary: v(1), arms: [{ ...v(3), weight: 1 }] });
  for (let i = 0; i < 3; i++) await complete({ user: `u${i}` });
  await put({ primary: v(1) });
  for (let i = 0; i < 2; i++) await complete({});
  await complete({ max_tokens: -1 }); // refused: not an exposure
  const text = (await gateway.app.inject({ url: '/metrics' })).body;
  assert.match(text, /meshtrain_gateway_deployment_exposures_total\{deployment="chat",version="tiny@v3"\} 3/);
  assert.match(text, /meshtrain_gateway_deployment_exposures_total\{deployment="chat",version="tiny@v1"\} 2/);
});

test('an invalid PUT is a 400 that says what is wrong, and changes nothing', async (t) => {
  const { put, admin, complete } = setup(t);
  await put({ primary: v(1) });
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['chat', { primary: v(2), reason: undefined }, /reason is required/],
    ['chat', { primary: v(9) }, /tiny@v9 cannot be served: no model tiny v9/],
    ['chat', { primary: v(1), arms: [{ model: 'other', version: 1, weight: 0.1 }] }, /other@v1 cannot be served/],
    ['chat', { primary: v(1), arms: [{ ...v(2), weight: 0.6 }, { ...v(3), weight: 0.6 }] }, /sum to 1.2; they must sum to ≤ 1/],
    ['chat', { primary: v(1), arms: [{ ...v(2), weight: 1.5 }] }, /arms\[0\].weight must be a number in \[0, 1\]/],
    ['chat', { primary: v(1), arms: [{ ...v(1), weight: 0.1 }] }, /tiny@v1 appears twice/],
    ['chat', { primary: { model: 'tiny', version: 0 } }, /primary.version must be an integer ≥ 1/],
    ['chat', { primary: v(1), colour: 'red' }, /unknown field 'colour'/],
    ['chat', { name: 'other', primary: v(1) }, /differs from the URL's 'chat'/],
    ['chat', { primary: v(1), stickyHeader: 'bad header' }, /stickyHeader must be a header name/],
    [MODEL, { primary: v(1) }, /is a served model's name/],
  ];
  for (const [name, body, message] of cases) {
    const res = await put(body, name);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(res.json.error.type, 'invalid_request_error');
    assert.match(res.json.error.message, message);
  }
  assert.equal((await complete({})).version, 'tiny@v1', 'still the first deployment');
  assert.equal((await admin('GET', '/admin/deployments/nope')).status, 404);
  assert.equal((await admin('POST', '/admin/deployments/chat/rollback', { reason: 'x' })).status, 409, 'only one primary so far');
  assert.equal((await admin('POST', '/admin/deployments/chat/rollback', {})).status, 400, 'rollback needs a reason');
});

test('rollback restores the previous primary at once, without loading anything', async (t) => {
  const { put, admin, complete, loads } = setup(t, { delayMs: 300 });
  await put({ primary: v(1) });
  await put({ primary: v(2), arms: [{ ...v(3), weight: 0.2 }] });
  assert.equal((await admin('GET', '/admin/deployments/chat')).json.rollbackTo.version, 1);
  const loaded = loads.length;
  const started = performance.now();
  const res = await admin('POST', '/admin/deployments/chat/rollback', { reason: 'v2 is worse' });
  const ms = performance.now() - started;
  assert.equal(res.status, 200);
  const { rollout: _, ...deployment } = res.json.deployment;
  assert.deepEqual(deployment, { name: 'chat', primary: v(1), arms: [], shadows: [], stickyHeader: 'x-meshtrain-key' });
  assert.equal(loads.length, loaded, `nothing loaded (a load takes 300 ms; the rollback took ${ms.toFixed(0)} ms)`);
  for (let i = 0; i < 10; i++) assert.equal((await complete({ user: `u${i}` })).version, 'tiny@v1');
  assert.equal((await admin('POST', '/admin/deployments/chat/rollback', { reason: 'again' })).status, 409);
});

test('no request fails while deployments are switched and rolled back under concurrent load', async (t) => {
  const { put, admin, complete } = setup(t, { delayMs: 15, fake: { delayMsPerToken: 2 } });
  await put({ primary: v(1) });
  let running = true;
  const statuses = new Map<number, number>();
  const versions = new Set<string>();
  const answered: string[] = []; // the serving version of each answer, in order
  const client = async (c: number) => {
    for (let i = 0; running; i++) {
      const res = await complete({ max_tokens: 3, ...(i % 4 === 0 ? { stream: true } : {}) }, { 'x-meshtrain-key': `c${c}-${i}` });
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      if (res.version) versions.add(res.version);
      answered.push(res.version ?? 'none');
    }
  };
  // Each state is held until requests were answered in it, however slowly a loaded machine gets there.
  const servedSince = (from: number, ...wanted: string[]) => async () => wanted.every((w) => answered.slice(from).includes(w));
  const clients = Array.from({ length: 8 }, (_, c) => client(c));
  for (let round = 0; round < 4; round++) {
    let from = answered.length;
    assert.equal((await put({ primary: v(2), arms: [{ ...v(3), weight: 0.5 }] })).status, 200);
    await until(`round ${round}: answers from v2 and its arm v3 after the switch`, servedSince(from, 'tiny@v2', 'tiny@v3'), 30_000, 5);
    from = answered.length;
    assert.equal((await admin('POST', '/admin/deployments/chat/rollback', { reason: 'load test' })).status, 200);
    await until(`round ${round}: an answer from v1 after the rollback`, servedSince(from, 'tiny@v1'), 30_000, 5);
  }
  await until('50 answers under load', async () => answered.length > 50, 30_000, 5);
  running = false;
  await Promise.all(clients);
  assert.deepEqual([...statuses.keys()], [200], `statuses ${JSON.stringify([...statuses])}`);
  assert.ok(statuses.get(200)! > 50, `only ${statuses.get(200)} requests`);
  assert.deepEqual([...versions].sort(), ['tiny@v1', 'tiny@v2', 'tiny@v3']);
});

test('a request in flight finishes on the version it started with', async (t) => {
  const { put, complete, gateway } = setup(t, { fake: { delayMsPerToken: 20 } });
  await put({ primary: v(1) });
  const slow = complete({ max_tokens: 25 }); // at least 500 ms in flight
  // Routed (and counted as an exposure of v1) before the switch: seen in /metrics rather than slept for.
  const exposed = async () => /^meshtrain_gateway_deployment_exposures_total\{deployment="chat",version="tiny@v1"\} 1$/m.test((await gateway.app.inject({ method: 'GET', url: '/metrics' })).body);
  await until('the slow request to be routed to tiny@v1', exposed, 10_000, 5);
  await put({ primary: v(2) });
  const res = await slow;
  assert.equal(res.status, 200);
  assert.equal(res.version, 'tiny@v1');
  assert.equal((await complete({})).version, 'tiny@v2');
});

test('every change is audited with who, when, old → new and why, in memory and in the JSONL file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-audit-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'audit.jsonl');
  const { put, admin } = setup(t, { auditLogPath: file });
  await put({ primary: v(1), reason: 'first release' });
  await put({ primary: v(2), reason: 'new model' });
  await admin('POST', '/admin/deployments/chat/rollback', { reason: 'regression' });
  const { audit } = (await admin('GET', '/admin/deployments/chat/audit')).json;
  assert.deepEqual(audit.map((e: any) => [e.action, e.old?.primary.version ?? null, e.new.primary.version, e.reason]), [
    ['put', null, 1, 'first release'],
    ['put', 1, 2, 'new model'],
    ['rollback', 2, 1, 'regression'],
  ]);
  for (const e of audit) {
    assert.match(e.who, /^admin:[0-9a-f]{12}$/);
    assert.ok(!JSON.stringify(e).includes(ADMIN), 'never the key itself');
    assert.ok(Math.abs(Date.parse(e.at) - Date.now()) < 60_000);
  }
  const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(lines, audit);
});

test('a start-up file installs deployments, audited as startup-file, and a bad one is refused', async (t) => {
  const { resolve } = fakeResolver();
  const manager = new DeploymentManager({ resolve });
  await loadDeploymentsFile(manager, JSON.stringify([{ name: 'chat', primary: v(1), arms: [{ ...v(2), weight: 0.25 }] }]), 'deploy.json');
  const { complete, admin } = setup(t, { manager });
  assert.match((await complete({ user: 'x' })).version!, /^tiny@v[12]$/);
  const { audit } = (await admin('GET', '/admin/deployments/chat/audit')).json;
  assert.equal(audit[0].who, 'startup-file');
  assert.deepEqual((await admin('GET', '/admin/deployments')).json.deployments.map((d: { name: string }) => d.name), ['chat']);
  const fresh = new DeploymentManager({ resolve });
  await assert.rejects(loadDeploymentsFile(fresh, '{"name": "chat"}', 'f.json'), { code: 'GW_ERR_BAD_ARGS', message: /must hold a JSON array/ });
  await assert.rejects(loadDeploymentsFile(fresh, JSON.stringify([{ name: 'chat', primary: v(7) }]), 'f.json'), { code: 'GW_ERR_BAD_ARGS', message: /f.json\[0\]: tiny@v7 cannot be served/ });
});

test('deployment admin routes need the admin key', async (t) => {
  const { admin } = setup(t);
  const body = { primary: v(1), reason: 'x' };
  assert.equal((await admin('PUT', '/admin/deployments/chat', body, '')).status, 401);
  assert.equal((await admin('PUT', '/admin/deployments/chat', body, API)).status, 403);
  assert.equal((await admin('GET', '/admin/deployments', undefined, API)).status, 403);
  assert.equal((await admin('POST', '/admin/deployments/chat/rollback', { reason: 'x' }, 'wrong')).status, 401);
  assert.equal((await admin('PUT', '/admin/deployments/chat', body)).status, 200);
});

test('gateway deploy and gateway rollback drive the admin API', async (t) => {
  const { gateway, complete } = setup(t);
  const { port } = await gateway.listen({ port: 0 });
  const url = `http://127.0.0.1:${port}`;
  const out: string[] = [];
  const errs: string[] = [];
  const cli = (args: string[]) => runCli(args, { out: (l) => out.push(l), err: (e) => errs.push(e) });
  assert.equal(await cli(['deploy', '--url', url, '--admin-key', ADMIN, 'chat', '--primary', 'tiny@v1', '--reason', 'first']), 0, errs.join(''));
  assert.equal(await cli(['deploy', '--url', url, '--admin-key', ADMIN, 'chat', '--primary', 'tiny@v2', '--arm', 'tiny@v3:0.1', '--reason', 'next']), 0, errs.join(''));
  assert.equal((await complete({ user: 'someone' })).version?.startsWith('tiny@v'), true);
  assert.equal(await cli(['rollback', '--url', url, '--admin-key', ADMIN, 'chat', '--reason', 'bad']), 0, errs.join(''));
  assert.equal((await complete({})).version, 'tiny@v1');
  assert.equal(await cli(['deploy', '--url', url, '--admin-key', ADMIN, 'chat', '--primary', 'tiny@v9', '--reason', 'x']), 1);
  assert.match(errs.join(''), /GW_ERR_ADMIN_CALL: PUT \/admin\/deployments\/chat: 400 tiny@v9 cannot be served/);
  assert.equal(await cli(['deploy', '--url', url, '--admin-key', ADMIN, 'chat', '--primary', 'tiny', '--reason', 'x']), 2);
});
