/**
 * Request logging (common/request-log.ts, common/log.ts): a real coordinator and a real gateway, listening on a
 * port, log one line per request with its method, matched route, status and duration, and no token, key or cookie
 * they were sent — in a header, a cookie, the query string or a JSON body — ever reaches the log.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, formatRecord, pinoOf } from '../../common/log.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import { createCoordinator, type Coordinator } from '../../coordinator/api/server.ts';
import { createGateway, type Gateway } from '../../gateway/server.ts';
import { FakeBackend } from '../../gateway/fake-backend.ts';

const CLUSTER_TOKEN = 'cluster-token-Zq81xKp0';
const COOKIE_SECRET = 'session-cookie-Vb37mLq2';
const QUERY_SECRET = 'query-token-Hn55tRw9';
const BODY_SECRET = 'body-token-Jc02sYe4';
const API_KEY = 'sk-api-key-Pd64uFa7';
const SECRETS = [CLUSTER_TOKEN, COOKIE_SECRET, QUERY_SECRET, BODY_SECRET, API_KEY];

interface RequestLine {
  line: string;
  fields: Record<string, string>;
}

/** The `request` lines of a captured log, with their key=value fields. */
function requestLines(lines: string[]): RequestLine[] {
  return lines
    .filter((l) => / request /.test(l))
    .map((line) => ({ line, fields: Object.fromEntries([...line.matchAll(/ (\w+)=(\S+)/g)].map((m) => [m[1]!, m[2]!])) }));
}

function assertNoSecret(lines: string[]): void {
  const text = lines.join('');
  for (const secret of SECRETS) assert.ok(!text.includes(secret), `the log must not contain ${secret}:\n${text}`);
  assert.ok(!/bearer/i.test(text), 'no Authorization header in the log');
}

describe('the coordinator logs each request', () => {
  const lines: string[] = [];
  let dir: string, c: Coordinator, base: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'request-log-'));
    const log = createLogger('coordinator', { level: 'info', write: (line) => void lines.push(line) });
    c = createCoordinator(resolveConfig({ dataDir: dir, token: CLUSTER_TOKEN, port: 0, host: '127.0.0.1' }), log);
    const { port } = await c.listen();
    base = `http://127.0.0.1:${port}`;
  });
  after(async () => {
    await c.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('one line per request names the method, the matched route, the status and the duration, and no secret', async () => {
    const auth = { authorization: `Bearer ${CLUSTER_TOKEN}` };
    const sent: string[][] = [];
    const call = async (route: string, url: string, init: RequestInit = {}) => {
      const res = await fetch(`${base}${url}`, init);
      await res.arrayBuffer();
      sent.push([init.method ?? 'GET', route, String(res.status)]);
      return res.status;
    };
    assert.equal(await call('/api/jobs', '/api/jobs', { headers: auth }), 200);
    await call('/api/jobs/:id', `/api/jobs/job-nope?token=${QUERY_SECRET}`, { headers: auth }); // 404, or 400 for the query
    assert.equal(await call('/api/session', '/api/session', { headers: { cookie: `meshtrain_session=${COOKIE_SECRET}` } }), 200);
    const login = { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: BODY_SECRET }) };
    assert.equal(await call('/api/login', '/api/login', login), 401);
    assert.equal(await call('/api/nodes', `/api/nodes?key=${QUERY_SECRET}`), 401);

    const got = requestLines(lines);
    assert.deepEqual(got.map((r) => [r.fields.method, r.fields.route, r.fields.status]), sent, lines.join(''));
    for (const r of got) {
      assert.match(r.line, /^\d{4}-\d\d-\d\dT\S+Z INFO  \[coordinator\] request /);
      assert.ok(Number.isFinite(Number(r.fields.ms)) && Number(r.fields.ms) >= 0, `ms is a duration: ${r.line}`);
    }
    assertNoSecret(lines);
  });
});

describe('the gateway logs each request', () => {
  const lines: string[] = [];
  let gw: Gateway, base: string;

  before(async () => {
    const log = createLogger('gateway', { level: 'info', write: (line) => void lines.push(line) });
    gw = createGateway({ backends: new Map([['fake-char', new FakeBackend({ id: 'fake-char' })]]), log, apiKey: API_KEY });
    const { port } = await gw.listen({ port: 0, host: '127.0.0.1' });
    base = `http://127.0.0.1:${port}`;
  });
  after(() => gw.close());

  test('one line per request with the matched route, and neither the API key nor a query or body key', async () => {
    const auth = { authorization: `Bearer ${API_KEY}` };
    assert.equal((await fetch(`${base}/v1/models`, { headers: auth })).status, 200);
    assert.equal((await fetch(`${base}/v1/models/fake-char?key=${QUERY_SECRET}`, { headers: { ...auth, cookie: `session=${COOKIE_SECRET}` } })).status, 200);
    const completion = await fetch(`${base}/v1/completions?token=${QUERY_SECRET}`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'fake-char', prompt: 'Hi', max_tokens: 2, key: BODY_SECRET }),
    });
    assert.equal(completion.status, 400); // unknown fields are refused
    assert.equal((await fetch(`${base}/v1/models`, { headers: { authorization: `Bearer ${BODY_SECRET}` } })).status, 401);

    const got = requestLines(lines);
    assert.deepEqual(
      got.map((r) => [r.fields.method, r.fields.route, r.fields.status]),
      [
        ['GET', '/v1/models', '200'],
        ['GET', '/v1/models/:model', '200'],
        ['POST', '/v1/completions', '400'],
        ['GET', '/v1/models', '401'],
      ],
      lines.join(''),
    );
    for (const r of got) assert.match(r.line, /^\S+ INFO  \[gateway\] request method=\S+ route=\S+ status=\d+ ms=[\d.]+/);
    assertNoSecret(lines);
  });
});

test('fields named like credentials are redacted whoever logs them', () => {
  const lines: string[] = [];
  const log = createLogger('x', { level: 'debug', write: (line) => void lines.push(line) });
  log.info('plain message');
  assert.match(lines[0]!, /^\S+ INFO  \[x\] plain message\n$/);
  pinoOf(log).warn({ headers: { authorization: `Bearer ${CLUSTER_TOKEN}`, cookie: COOKIE_SECRET }, token: QUERY_SECRET, body: { key: BODY_SECRET }, route: '/v1/models' }, 'odd');
  assert.match(lines[1]!, /WARN  \[x\] odd headers=\{"authorization":"\[redacted\]","cookie":"\[redacted\]"\} token=\[redacted\] body=\{"key":"\[redacted\]"\} route=\/v1\/models/);
  assertNoSecret(lines);
  assert.equal(
    formatRecord({ level: 30, time: 0, scope: 's', msg: 'm', route: '/a/:id', note: 'two words' }),
    '1970-01-01T00:00:00.000Z INFO  [s] m route=/a/:id note="two words"\n',
  );
});
