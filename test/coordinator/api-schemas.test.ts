/**
 * The request schemas of the coordinator's API (coordinator/api/schemas.ts) on a real coordinator app, over
 * app.inject: each route whose body or query string a schema checks refuses malformed input — wrong types,
 * missing fields, unknown or oversized fields, repeated query keys — with 400 CRD_ERR_BAD_REQUEST and one
 * `details` line per problem, before its handler runs; well-formed input still reaches the handler.
 *
 * Run: npx tsx --test test/coordinator/api-schemas.test.ts
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../common/log.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import { createCoordinator, type Coordinator } from '../../coordinator/api/server.ts';
import type { JobRecord } from '../../coordinator/store/job-store.ts';

const TOKEN = 'api-schemas-token';
const auth = { authorization: `Bearer ${TOKEN}` };
const huge = 'x'.repeat(200_000); // well under the 1 MiB body limit: the schema, not the limit, refuses it
const spec = {
  name: 'schema-job',
  model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
  data: { corpus: 'demo' },
  training: { steps: 3, batchSize: 4, seqLen: 16 },
};

interface ErrorBody {
  error: { code: string; message: string; details?: string[] };
}

describe('the API refuses malformed request bodies and query strings with 400 CRD_ERR_BAD_REQUEST', () => {
  let dir: string;
  let c: Coordinator;
  let job: JobRecord;

  const send = async (method: 'GET' | 'POST', url: string, payload?: unknown, headers: Record<string, string> = auth) => {
    const res = await c.app.inject({
      method,
      url,
      headers: { ...headers, ...(payload !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(payload !== undefined ? { payload: JSON.stringify(payload) } : {}),
    });
    return { status: res.statusCode, headers: res.headers, json: () => res.json() as ErrorBody };
  };

  /** Each input is refused with a 400 whose details are non-empty; returns every details line, for further checks. */
  const refused = async (method: 'GET' | 'POST', url: string, payloads: unknown[]): Promise<string[]> => {
    const all: string[] = [];
    for (const payload of payloads) {
      const res = await send(method, url, payload);
      const what = `${method} ${url} ${JSON.stringify(payload)?.slice(0, 80)}`;
      assert.equal(res.status, 400, what);
      const { error } = res.json();
      assert.equal(error.code, 'CRD_ERR_BAD_REQUEST', what);
      assert.ok(Array.isArray(error.details) && error.details.length > 0 && error.details.every((d) => typeof d === 'string'), `${what}: ${JSON.stringify(error)}`);
      assert.ok(error.details.every((d) => error.message.includes(d)), `${what}: the message repeats each detail`);
      all.push(...error.details);
    }
    return all;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'api-schemas-'));
    c = createCoordinator(resolveConfig({ dataDir: dir, token: TOKEN }), silentLogger);
    const res = await send('POST', '/api/jobs', spec);
    assert.equal(res.status, 201);
    job = res.json() as unknown as JobRecord;
  });
  after(async () => {
    await c?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('POST /api/login refuses a body that is not {token: string}, and still answers a wrong token with 401', async () => {
    const details = await refused('POST', '/api/login', [
      undefined, // no body at all
      {},
      { token: 12345 },
      { token: ['a'] },
      { token: '' },
      { token: 'x'.repeat(1025) },
      { token: TOKEN, extra: huge },
      [TOKEN],
      'a string',
    ]);
    assert.ok(details.includes("/ must have required property 'token'"), details.join(' | '));
    assert.ok(details.includes("/ must NOT have additional properties 'extra'"), details.join(' | '));
    assert.ok(details.includes('/token must be string'), details.join(' | '));
    const wrong = await send('POST', '/api/login', { token: 'not-the-cluster-token' }, {});
    assert.equal(wrong.status, 401);
    assert.equal(wrong.json().error.code, 'CRD_ERR_UNAUTHORIZED');
    assert.equal(wrong.headers['set-cookie'], undefined);
    const right = await send('POST', '/api/login', { token: TOKEN }, {});
    assert.equal(right.status, 200);
    assert.match(String(right.headers['set-cookie']), /HttpOnly/);
  });

  test('POST /api/jobs/:id/replan refuses a missing, mistyped or out-of-range layout and leaves the job as it was', async () => {
    const url = `/api/jobs/${job.id}/replan`;
    const details = await refused('POST', url, [
      undefined,
      {},
      { parallel: 'manual' },
      { parallel: 4 },
      { parallel: { data: 0 } },
      { parallel: { data: '2' } },
      { parallel: { data: 2, pipeline: 1.5 } },
      { parallel: { data: 2, bogus: huge } },
      { parallel: 'auto', extra: 1 },
    ]);
    assert.ok(details.includes("/ must have required property 'parallel'"), details.join(' | '));
    assert.ok(details.includes('/parallel/data must be >= 1'), details.join(' | '));
    assert.deepEqual(c.jobs.get(job.id)!.spec.parallel, job.spec.parallel, 'no refused replan changed the job');
    // Well-formed, it reaches the handler: an unknown job is a 404.
    assert.equal((await send('POST', '/api/jobs/job-nope/replan', { parallel: { data: 1 } })).status, 404);
  });

  test('GET /api/jobs/:id refuses an ?after= that is not one integer step', async () => {
    const url = `/api/jobs/${job.id}`;
    for (const query of ['after=abc', 'after=1.5', 'after=', 'after=1e3', 'after=1&after=2', `after=${'9'.repeat(40)}`, 'bogus=1']) {
      await refused('GET', `${url}?${query}`, [undefined]);
    }
    assert.equal((await send('GET', `${url}?after=-1`)).status, 200);
    assert.equal((await send('GET', `${url}?after=2`)).status, 200);
  });

  test('POST /api/gateways refuses a malformed announcement and remembers nothing from it', async () => {
    const good = { name: 'gw-1', url: 'http://10.0.0.7:8080', adminKey: 'ops-key' };
    const details = await refused('POST', '/api/gateways', [
      undefined,
      {},
      { ...good, name: 5 },
      { ...good, name: '../etc' },
      { ...good, name: 'n'.repeat(65) },
      { ...good, url: `http://${huge}` },
      { ...good, adminKey: '' },
      { ...good, adminKey: { $gt: '' } },
      { ...good, extra: huge },
      { name: good.name, url: good.url }, // no admin key
    ]);
    assert.ok(details.includes("/ must have required property 'adminKey'"), details.join(' | '));
    assert.ok(details.includes("/ must NOT have additional properties 'extra'"), details.join(' | '));
    // What a schema cannot say (an http(s) URL with no path) is still the handler's check, with the same error.
    const pathUrl = await send('POST', '/api/gateways', { ...good, url: 'http://10.0.0.7:8080/admin' });
    assert.equal(pathUrl.status, 400);
    assert.equal(pathUrl.json().error.code, 'CRD_ERR_BAD_REQUEST');
    assert.match(pathUrl.json().error.message, /^invalid gateway announcement: \/url must be http\(s\):\/\/host:port/);
    assert.deepEqual((await send('GET', '/api/gateways')).json(), { gateways: [] }, 'no refused announcement was kept');
    assert.equal((await send('POST', '/api/gateways', good)).status, 201);
  });

  test('POST /api/gateways from a dashboard session is refused as such (403) before its body is looked at', async () => {
    const login = await send('POST', '/api/login', { token: TOKEN }, {});
    const cookie = String(login.headers['set-cookie']).split(';')[0]!;
    for (const body of [{}, { name: 'gw-2', url: 'http://10.0.0.8:8080', adminKey: 'k' }]) {
      const res = await send('POST', '/api/gateways', body, { cookie, 'x-requested-with': 'meshtrain' });
      assert.equal(res.status, 403, JSON.stringify(body));
      assert.equal(res.json().error.code, 'CRD_ERR_FORBIDDEN');
    }
  });

  test('the relayed promote and rollback refuse a malformed body before it travels to a gateway with its admin key', async () => {
    const promote = '/api/gateways/gw-x/deployments/chat/promote', rollback = '/api/gateways/gw-x/deployments/chat/rollback';
    const details = await refused('POST', promote, [
      undefined,
      {},
      { version: 'tiny@v2' }, // no reason
      { version: 'tiny', reason: 'r' },
      { version: 'tiny@v0', reason: 'r' },
      { version: 2, reason: 'r' },
      { version: 'tiny@v2', reason: '' },
      { version: 'tiny@v2', reason: huge },
      { version: 'tiny@v2', reason: 'r', primary: 'tiny@v9' },
    ]);
    assert.ok(details.includes("/ must have required property 'reason'"), details.join(' | '));
    await refused('POST', rollback, [undefined, {}, { reason: 5 }, { reason: ['r'] }, { reason: 'r', version: 'tiny@v1' }, { reason: huge }]);
    // Well-formed, they reach the relay: no gateway of that name announced itself.
    for (const [url, body] of [[promote, { version: 'tiny@v2', reason: 'r' }], [rollback, { reason: 'r' }]] as const) {
      const res = await send('POST', url, body);
      assert.equal(res.status, 404, url);
      assert.equal(res.json().error.code, 'CRD_ERR_NOT_FOUND');
    }
  });

  test('GET /api/runs refuses an unknown state or kind, a malformed or repeated name, and unknown parameters', async () => {
    const details: string[] = [];
    for (const query of ['state=done', 'kind=nope', 'name=a&name=b', 'state=queued&state=running', `name=${'n'.repeat(70)}`, 'name=a%20b', 'bogus=1']) {
      details.push(...(await refused('GET', `/api/runs?${query}`, [undefined])));
    }
    assert.ok(details.some((d) => d.startsWith('/state must be equal to one of the allowed values (queued, running, succeeded, failed, cancelled)')), details.join(' | '));
    assert.ok(details.includes('/name must be string'), `a repeated key is an array, refused rather than crashing the handler: ${details.join(' | ')}`);
    for (const query of ['', '?name=schema-*', '?state=queued', '?kind=pretrain', '?name=schema-job&state=queued&kind=pretrain']) {
      const res = await send('GET', `/api/runs${query}`);
      assert.equal(res.status, 200, query);
      assert.deepEqual((res.json() as unknown as { runs: Array<{ id: string }> }).runs.map((r) => r.id), [job.id], query);
    }
  });

  test('GET /api/runs/compare and /api/runs/:id/export refuse missing, repeated, oversized or unknown parameters', async () => {
    for (const query of ['', '?ids=', `?ids=${job.id}&ids=${job.id}`, `?ids=${'a'.repeat(3000)}`, `?ids=${job.id},b&x=1`]) {
      await refused('GET', `/api/runs/compare${query}`, [undefined]);
    }
    assert.equal((await send('GET', `/api/runs/compare?ids=${job.id}`)).status, 400, 'one run is still no comparison (the handler\'s check)');
    for (const query of ['?format=xml', '?format=json&format=csv', '?format=', '?as=csv']) {
      await refused('GET', `/api/runs/${job.id}/export${query}`, [undefined]);
    }
    assert.equal((await send('GET', `/api/runs/${job.id}/export?format=csv`)).status, 200);
    assert.equal((await send('GET', '/api/runs/job-nope/export?format=json')).status, 404);
  });
});
