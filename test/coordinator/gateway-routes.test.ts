/**
 * coordinator/api/routes/gateways.ts on its own: a route plugin gets everything it touches as its options
 * (routes/context.ts), so it runs on a bare fastify app with a GatewayDirectory whose fetch is a fake. A
 * well-formed announcement is kept and a well-formed promote or rollback is relayed to the gateway's /admin API
 * with its admin key, the body as sent; a malformed one never leaves the coordinator.
 *
 * Run: npx tsx --test test/coordinator/gateway-routes.test.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Fastify from 'fastify';
import { silentLogger } from '../../common/log.ts';
import { GatewayDirectory } from '../../coordinator/cluster/gateways.ts';
import { EventBus } from '../../coordinator/events.ts';
import { gatewayRoutes } from '../../coordinator/api/routes/gateways.ts';

test('the gateway routes run alone with a fake fetch: announcements are kept and only well-formed deployment calls are relayed', async (t) => {
  const calls: Array<{ url: string; auth: string; body: unknown }> = [];
  const fake: typeof fetch = async (url, init) => {
    calls.push({ url: String(url), auth: (init?.headers as Record<string, string>).authorization ?? '', body: init?.body === undefined ? undefined : JSON.parse(String(init.body)) });
    return new Response(JSON.stringify({ deployment: { name: 'chat' } }), { status: 200 });
  };
  const gateways = new GatewayDirectory({ fetch: fake });
  const bus = new EventBus(() => {});
  const changed: string[] = [];
  bus.on('gateway', (e) => void changed.push(e.name));
  const app = Fastify({ ajv: { customOptions: { allErrors: true, removeAdditional: false, coerceTypes: false } } });
  t.after(() => app.close());
  await app.register(gatewayRoutes, { gateways, bus, log: silentLogger });

  const post = (url: string, body: unknown) => app.inject({ method: 'POST', url, headers: { authorization: 'Bearer t' }, payload: body as object });
  assert.equal((await post('/api/gateways', { name: 'gw-1', url: 'http://10.0.0.7:8080', adminKey: 'ops-key' })).statusCode, 201);
  assert.deepEqual(gateways.list().map((g) => g.name), ['gw-1']);

  const promote = await post('/api/gateways/gw-1/deployments/chat/promote', { version: 'tiny@v2', reason: 'looks right' });
  assert.equal(promote.statusCode, 200);
  const rollback = await post('/api/gateways/gw-1/deployments/chat/rollback', { reason: 'back' });
  assert.equal(rollback.statusCode, 200);
  assert.deepEqual(calls, [
    { url: 'http://10.0.0.7:8080/admin/deployments/chat/promote', auth: 'Bearer ops-key', body: { version: 'tiny@v2', reason: 'looks right' } },
    { url: 'http://10.0.0.7:8080/admin/deployments/chat/rollback', auth: 'Bearer ops-key', body: { reason: 'back' } },
  ]);
  assert.deepEqual(changed, ['gw-1', 'gw-1', 'gw-1'], 'the announcement and each successful change told the live feed');

  for (const [url, body] of [
    ['/api/gateways/gw-1/deployments/chat/promote', { version: 'tiny@v2' }],
    ['/api/gateways/gw-1/deployments/chat/promote', { version: 'tiny@v2', reason: 'x', primary: 'evil@v1' }],
    ['/api/gateways/gw-1/deployments/chat/rollback', { reason: 'x'.repeat(100_000) }],
  ] as const) {
    assert.equal((await post(url, body)).statusCode, 400, JSON.stringify(body).slice(0, 80));
  }
  assert.equal(calls.length, 2, 'no malformed body was relayed');
});
