/**
 * Every route of the three programs, asked as a stranger would. The routes are enumerated from the code itself (the
 * coordinator's route table, the gateway plugin's routes through fastify's onRoute hook, the agent's peer-port
 * table), then each is asked on real processes over loopback: a coordinator with one agent, and a gateway with an
 * API key and an admin key. Each route is spelled as written and as an attacker would re-spell it (percent-encoded
 * letters, doubled slashes, dot segments, a trailing slash, changed case), with no credentials, a wrong token, and
 * the secret of a revoked node (as a bearer token and as a session cookie). None may answer 2xx or start a stream;
 * each gets 401, 403 or 404. Public routes are checked to be exactly the documented list.
 *
 * Run: npx tsx --test test/integration/route-access.test.ts
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Agent, request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify from 'fastify';
import WebSocket from 'ws';
import { silentLogger } from '../../common/log.ts';
import { PUBLIC_ROUTES as COORDINATOR_PUBLIC, UPGRADE_ROUTES } from '../../coordinator/api/access.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import { createCoordinator } from '../../coordinator/api/server.ts';
import { PUBLIC_ROUTES as GATEWAY_PUBLIC } from '../../gateway/auth.ts';
import { FakeBackend } from '../../gateway/fake-backend.ts';
import { gatewayPlugin } from '../../gateway/server.ts';
import { AGENT_HTTP_ROUTES } from '../../node-agent/http-endpoints.ts';
import { decodeFrame, encodeMessage, type Envelope } from '../../protocol/codec.ts';
import { spawnProc, startCluster, waitForLine, type LocalCluster, type Proc } from '../../scripts/local-cluster.ts';
import { agentExamples } from '../protocol/fixtures.ts';
import { until } from '../support/until.ts';

const GATEWAY = new URL('../../bin/gateway.js', import.meta.url).pathname;
const API_KEY = 'route-access-api-key';
const ADMIN_KEY = 'route-access-admin-key';

/** A concrete path for a route pattern: each `:param` gets a value of the shape its handler expects. */
function concretePath(pattern: string): string {
  const values: Record<string, string> = { digest: 'a'.repeat(64), v: '1', file: 'config.json', model: 'fake-char', name: 'm' };
  return pattern.replace(/:(\w+)/g, (_m, p: string) => values[p] ?? `${p}1`);
}

const encodeLetters = (s: string, all: boolean) =>
  s.split('/').map((seg) => seg.replace(all ? /[a-z]/gi : /^[a-z]/i, (c) => `%${c.charCodeAt(0).toString(16)}`)).join('/');

/** The path as written and as an attacker re-spells it; every one of them must be refused the same. */
export function spellings(path: string): string[] {
  const segs = path.split('/').slice(1); // path starts with '/'
  const first = segs[0] ?? '';
  const rest = segs.slice(1).join('/');
  const tail = rest ? `/${rest}` : '';
  return [
    path,
    encodeLetters(path, false), // /%61pi/%6eodes
    encodeLetters(path, true), // every letter escaped
    `/${first.replace(/^./, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)}${tail}`, // upper-case hex
    `/${path}`, // //api/nodes
    `/${first}/${tail}`, // /api//nodes
    `/${first}/.${tail}`, // /api/./nodes
    `/${first}/zz/..${tail}`, // /api/zz/../nodes
    `/${first}/%2e${tail}`, // /api/%2e/nodes
    `/./${path.slice(1)}`, // /./api/nodes
    `${path}/`, // trailing slash
    path.toUpperCase(),
    `/${first.charAt(0).toUpperCase()}${first.slice(1)}${tail}`, // /Api/nodes
    `/${first}%2f${rest}`, // an escaped slash
    `${path}?token=x`,
  ];
}

interface Answer {
  status: number;
  type: string;
  body: string;
}

const keepAlive = new Agent({ keepAlive: true, maxSockets: 8 });

/** One raw HTTP request: node:http sends the path exactly as given (fetch would normalise dot segments). */
function ask(port: number, method: string, path: string, headers: Record<string, string>): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const body = method === 'POST' || method === 'PUT' ? JSON.stringify({ name: 'x', data: { corpus: '/etc/passwd' } }) : undefined;
    const req = request(
      { host: '127.0.0.1', port, method, path, agent: keepAlive, headers: { ...headers, ...(body ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {}) } },
      (res) => {
        const type = String(res.headers['content-type'] ?? '');
        if (type.startsWith('text/event-stream')) {
          res.destroy(); // a stream started: that alone fails the test
          return resolve({ status: res.statusCode!, type, body: '' });
        }
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, type, body: Buffer.concat(chunks).toString('utf8').slice(0, 300) }));
        res.on('error', reject);
      },
    );
    req.setTimeout(15_000, () => req.destroy(new Error(`${method} ${path}: no answer in 15 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** Sends a raw WebSocket upgrade for `path` (sent as given) and returns the status: 101 when it upgraded. */
function upgrade(port: number, path: string, extra: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1', port, path,
      headers: { ...extra, connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': randomBytes(16).toString('base64') },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode!);
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode!);
    });
    req.setTimeout(15_000, () => req.destroy(new Error(`upgrade ${path}: no answer in 15 s`)));
    req.on('error', reject);
    req.end();
  });
}

/** Asks every non-public route in every spelling with every credential; returns one line per wrong answer. */
async function refusals(port: number, routes: readonly string[], isPublic: (route: string) => boolean, credentials: Record<string, Record<string, string>>, allowed: ReadonlySet<number>): Promise<{ asked: number; wrong: string[] }> {
  const wrong: string[] = [];
  let asked = 0;
  for (const route of routes) {
    if (isPublic(route)) continue;
    const [method, pattern] = route.split(' ') as [string, string];
    for (const path of spellings(concretePath(pattern))) {
      for (const [who, headers] of Object.entries(credentials)) {
        const a = await ask(port, method, path, headers);
        asked++;
        if (!allowed.has(a.status) || a.type.startsWith('text/event-stream')) wrong.push(`${method} ${path} (${who}) → ${a.status} ${a.type} ${a.body}`);
      }
    }
  }
  return { asked, wrong };
}

/** The coordinator's routes, from its own route table (an in-process instance on a scratch folder, never listening). */
async function coordinatorRoutes(): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), 'routes-'));
  const c = createCoordinator(resolveConfig({ dataDir: dir, token: 'route-table-token' }), silentLogger);
  try {
    await c.app.ready();
    return c.routes();
  } finally {
    await c.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The gateway's routes: its plugin registered on a bare fastify that records every route (fastify's onRoute). */
async function gatewayRoutes(): Promise<string[]> {
  const app = Fastify();
  const routes: string[] = [];
  app.addHook('onRoute', (r) => {
    for (const m of [r.method].flat()) routes.push(`${m} ${r.url}`);
  });
  await app.register(gatewayPlugin, { backends: new Map([['fake-char', new FakeBackend()]]), apiKey: API_KEY, adminKey: ADMIN_KEY, log: silentLogger });
  await app.ready();
  await app.close();
  return routes.sort();
}

/** Joins the cluster as an agent over a raw WebSocket and returns the node id and secret of its welcome. */
async function joinRaw(cluster: LocalCluster): Promise<{ ws: WebSocket; nodeId: string; nodeSecret: string; closed: Promise<number> }> {
  const { nodeId: _id, nodeSecret: _s, ...hello } = agentExamples.hello;
  const ws = new WebSocket(`${cluster.wsUrl}/ws/agent`, { perMessageDeflate: false });
  ws.on('error', () => {});
  const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
  const welcome = await new Promise<Envelope>((resolve, reject) => {
    ws.on('open', () => ws.send(encodeMessage({ ...hello, name: 'route-access-raw', token: cluster.token } as Envelope)));
    ws.on('message', (data: Buffer) => {
      const msg = decodeFrame(data);
      if (msg.type === 'welcome') resolve(msg);
    });
    ws.on('close', (code) => reject(new Error(`closed with ${code} before a welcome`)));
  });
  const { nodeId, nodeSecret } = welcome as unknown as { nodeId: string; nodeSecret: string };
  return { ws, nodeId, nodeSecret, closed };
}

describe('every route of the coordinator, the gateway and the agent, asked as a stranger', () => {
  let cluster: LocalCluster;
  let gateway: Proc;
  let gatewayPort = 0;
  let revokedSecret = '';
  let revokedId = '';

  before(async () => {
    cluster = await startCluster({ agents: 1 });
    const raw = await joinRaw(cluster);
    revokedId = raw.nodeId;
    revokedSecret = raw.nodeSecret;
    await cluster.api('POST', `/api/nodes/${raw.nodeId}/revoke`);
    await raw.closed;
    gateway = spawnProc([GATEWAY, 'serve', '--fake', '--port', '0', '--host', '127.0.0.1', '--api-key', API_KEY, '--admin-key', ADMIN_KEY], { stderr: 'capture', env: { LOG_LEVEL: 'warn' } });
    gatewayPort = Number((await waitForLine(gateway, /gateway listening on http:\/\/127\.0\.0\.1:(\d+)/, 30_000))[1]);
  });

  after(async () => {
    keepAlive.destroy();
    if (gateway && gateway.child.exitCode === null) {
      gateway.child.kill('SIGTERM');
      await gateway.exited;
    }
    await cluster?.stop();
  });

  const strangers = () => ({
    'no credentials': {},
    'a wrong token': { authorization: 'Bearer not-the-cluster-token-0123456789' },
    "a revoked node's secret": { authorization: `Bearer ${revokedSecret}` },
    "a revoked node's secret as a session cookie": { cookie: `meshtrain_session=${encodeURIComponent(revokedSecret)}` },
  });

  test('the coordinator refuses every non-public route in every spelling: 401 without the cluster token, nothing runs', async () => {
    const routes = await coordinatorRoutes();
    assert.ok(routes.includes('POST /api/jobs') && routes.includes('GET /api/events') && routes.length > 50, `the route table is complete: ${routes.length} routes`);
    const publicRoutes = new Set(COORDINATOR_PUBLIC.map((r) => `${r.method} ${r.url}`));
    assert.deepEqual(
      routes.filter((r) => publicRoutes.has(r)),
      [...publicRoutes].sort(),
      'the public list names only routes that exist, and all of them',
    );
    const { asked, wrong } = await refusals(cluster.port, routes, (r) => publicRoutes.has(r), strangers(), new Set([401, 403, 404]));
    assert.deepEqual(wrong, [], `${wrong.length} of ${asked} requests were not refused`);
    // As written and without credentials, the answer is exactly the documented 401.
    for (const route of ['GET /api/nodes', 'GET /api/events', 'POST /api/jobs', 'GET /%61pi/jobs', 'POST /%61pi/nodes/x/revoke', 'GET /nothing-here']) {
      const [method, path] = route.split(' ') as [string, string];
      const a = await ask(cluster.port, method, path, {});
      assert.equal(a.status, 401, `${route}: ${a.body}`);
      assert.match(a.body, /CRD_ERR_UNAUTHORIZED/);
    }
    // Nothing the barrage sent took effect: no job was queued, the real agent is still alive.
    assert.deepEqual((await cluster.api<{ jobs: unknown[] }>('GET', '/api/jobs')).jobs, []);
    const nodes = (await cluster.api<{ nodes: Array<{ id: string; name: string; status: string }> }>('GET', '/api/nodes')).nodes;
    assert.equal(nodes.find((n) => n.name === 'agent-0')?.status, 'alive');
    assert.equal(nodes.find((n) => n.id === revokedId)?.status, 'revoked');
  });

  test('a re-spelled URL reaches the very route it names, so the 401s above came from the guard and not from a 404', async () => {
    const auth = { authorization: `Bearer ${cluster.token}` };
    for (const path of ['/%61pi/nodes', '/%61%70%69/%6e%6f%64%65%73', '/api/nodes?x=1']) {
      const a = await ask(cluster.port, 'GET', path, auth);
      assert.equal(a.status, 200, `${path} with the token: ${a.body}`);
      assert.match(a.body, /"nodes"/);
    }
    const noAuth = await ask(cluster.port, 'GET', '/%61pi/nodes', {});
    assert.equal(noAuth.status, 401, 'and without it, the same URL is refused');
  });

  test('the public routes are exactly the documented ones and answer without credentials', async () => {
    assert.deepEqual(COORDINATOR_PUBLIC.map((r) => `${r.method} ${r.url}`).sort(), [
      'GET /', 'GET /api/session', 'GET /dashboard/:file', 'GET /dashboard/vendor/:file', 'GET /healthz', 'GET /metrics',
      'HEAD /', 'HEAD /dashboard/:file', 'HEAD /dashboard/vendor/:file', 'HEAD /healthz', 'HEAD /metrics',
      'POST /api/login', 'POST /api/logout',
    ]);
    for (const path of ['/healthz', '/metrics', '/', '/api/session']) assert.equal((await ask(cluster.port, 'GET', path, {})).status, 200, path);
    assert.deepEqual([...GATEWAY_PUBLIC].sort(), ['GET /healthz', 'GET /metrics', 'GET /readyz', 'HEAD /healthz', 'HEAD /metrics', 'HEAD /readyz']);
    assert.deepEqual([...AGENT_HTTP_ROUTES].sort(), ['GET /healthz', 'GET /metrics', 'HEAD /healthz', 'HEAD /metrics']);
  });

  test('the coordinator upgrades only /ws/agent to a WebSocket, spelled exactly', async () => {
    const opened: string[] = [];
    for (const path of spellings('/ws/agent')) {
      const outcome = await upgrade(cluster.port, path);
      if (outcome === 101 && path !== '/ws/agent' && path !== '/ws/agent?token=x') opened.push(path);
      if (outcome !== 101 && outcome !== 404) opened.push(`${path} → ${outcome}`);
    }
    assert.deepEqual(opened, [], 'no other spelling reaches the agent endpoint');
    assert.equal(await upgrade(cluster.port, '/ws/agent'), 101, 'the exact path upgrades (the hello then carries the token)');
  });

  test('the relay endpoint upgrades no stranger: 401 on its exact path with any query or wrong credential, 404 on other spellings', async () => {
    assert.deepEqual(UPGRADE_ROUTES.map((r) => r.path), ['/ws/agent', '/ws/relay'], 'the WebSocket endpoints, both credentialed');
    assert.ok(!COORDINATOR_PUBLIC.some((r) => r.url.startsWith('/ws/')), 'no WebSocket endpoint is on the public list');
    const wrong: string[] = [];
    for (const path of spellings('/ws/relay')) {
      const exact = path.split('?')[0] === '/ws/relay';
      const outcome = await upgrade(cluster.port, path);
      if (outcome !== (exact ? 401 : 404)) wrong.push(`${path} → ${outcome}`);
    }
    const node = (await cluster.api<{ nodes: Array<{ id: string; name: string }> }>('GET', '/api/nodes')).nodes.find((n) => n.name === 'agent-0')!;
    for (const [query, headers] of [
      [`?to=${node.id}`, {}],
      [`?to=${node.id}`, { authorization: `Bearer ${cluster.token}` }], // the cluster token is not a relay ticket
      [`?to=${node.id}`, { authorization: `Bearer ${revokedSecret}` }],
      [`?to=${node.id}`, { authorization: 'Bearer not-a-ticket-0123456789' }],
      ['?session=rs-0123456789abcdef', { authorization: 'Bearer not-a-session-key' }],
    ] as const) {
      const outcome = await upgrade(cluster.port, `/ws/relay${query}`, headers);
      if (outcome !== 401) wrong.push(`/ws/relay${query} (${JSON.stringify(headers)}) → ${outcome}`);
    }
    assert.deepEqual(wrong, []);
  });

  test('the gateway refuses every admin and inference route in every spelling: 401 for strangers, 403 for an API key on admin routes', async () => {
    const routes = await gatewayRoutes();
    assert.ok(routes.includes('POST /v1/completions') && routes.some((r) => r.includes('/admin/deployments')), `the gateway's routes: ${routes.join(', ')}`);
    const publicRoutes = new Set(GATEWAY_PUBLIC);
    assert.deepEqual(routes.filter((r) => publicRoutes.has(r)), [...publicRoutes].sort());
    const { asked, wrong } = await refusals(gatewayPort, routes, (r) => publicRoutes.has(r), {
      'no credentials': {},
      'a wrong key': { authorization: 'Bearer not-a-gateway-key-0123456789' },
      "a revoked node's secret": { authorization: `Bearer ${revokedSecret}` },
    }, new Set([401, 403, 404]));
    assert.deepEqual(wrong, [], `${wrong.length} of ${asked} gateway requests were not refused`);
    const adminRoutes = routes.filter((r) => r.split(' ')[1]!.startsWith('/admin'));
    const withApiKey = await refusals(gatewayPort, adminRoutes, () => false, { 'an API key': { authorization: `Bearer ${API_KEY}` } }, new Set([403, 404]));
    assert.deepEqual(withApiKey.wrong, [], 'an API key never opens an admin route');
    const spelled = await ask(gatewayPort, 'GET', '/%61dmin/status', {});
    assert.equal(spelled.status, 401, spelled.body);
  });

  test("the agent's peer port serves only /metrics and /healthz, by exact path", async () => {
    const node = await until('the agent in /api/nodes', async () =>
      (await cluster.api<{ nodes: Array<{ name: string; peerAddress: string }> }>('GET', '/api/nodes')).nodes.find((n) => n.name === 'agent-0'));
    const port = Number(new URL(node.peerAddress).port);
    for (const route of AGENT_HTTP_ROUTES) {
      const [method, path] = route.split(' ') as [string, string];
      assert.equal((await ask(port, method, path, {})).status, 200, route);
    }
    const wrong: string[] = [];
    for (const path of ['/api/nodes', '/admin/status', '/v1/completions', '/', '/ws/agent', ...spellings('/metrics').slice(1, -1), ...spellings('/healthz').slice(1, -1)]) {
      for (const [who, headers] of Object.entries(strangers())) {
        const a = await ask(port, 'GET', path, headers);
        if (a.status !== 404) wrong.push(`GET ${path} (${who}) → ${a.status}`);
      }
    }
    assert.deepEqual(wrong, []);
  });
});
