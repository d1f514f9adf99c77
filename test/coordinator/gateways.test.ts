import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { announcementProblems, GATEWAY_SILENT_MS, GatewayDirectory, MAX_GATEWAYS } from '../../coordinator/cluster/gateways.ts';
import { CoordinatorError } from '../../coordinator/errors.ts';

const good = { name: 'gw-1', url: 'http://10.0.0.7:8080', adminKey: 'k' };

describe('announcementProblems', () => {
  test('accepts a well-formed announcement', () => {
    assert.deepEqual(announcementProblems(good), []);
  });
  const bad: Array<[string, unknown, RegExp]> = [
    ['a body that is not an object', [1], /^\/ must be an object/],
    ['a name with a slash', { ...good, name: 'a/b' }, /^\/name/],
    ['a URL with a path (the relay appends /admin/…)', { ...good, url: 'http://h:1/x' }, /^\/url/],
    ['a URL that is not http', { ...good, url: 'file:///etc/passwd' }, /^\/url/],
    ['a URL with credentials', { ...good, url: 'http://u:p@h:1' }, /^\/url/],
    ['a missing admin key', { name: 'g', url: 'http://h:1' }, /^\/adminKey/],
    ['an unknown field', { ...good, extra: 1 }, /^\/extra is not a field/],
  ];
  for (const [what, body, want] of bad) {
    test(`refuses ${what}`, () => {
      const problems = announcementProblems(body);
      assert.ok(problems.some((p) => want.test(p)), problems.join('; '));
    });
  }
});

describe('GatewayDirectory', () => {
  test('lists gateways with whether they were heard from lately', () => {
    let now = 1000;
    const d = new GatewayDirectory({ now: () => now });
    assert.equal(d.announce(good), true);
    assert.equal(d.announce(good), false); // the same again is not news
    assert.deepEqual(d.list(), [{ name: 'gw-1', url: 'http://10.0.0.7:8080', lastSeenMs: 1000, alive: true }]);
    now += GATEWAY_SILENT_MS;
    assert.equal(d.list()[0]!.alive, false);
  });

  test('refuses more than MAX_GATEWAYS distinct gateways', () => {
    const d = new GatewayDirectory();
    for (let i = 0; i < MAX_GATEWAYS; i++) d.announce({ ...good, name: `g${i}` });
    assert.throws(() => d.announce({ ...good, name: 'one-more' }), (e: CoordinatorError) => e.code === 'CRD_ERR_CONFLICT');
  });

  test('relays a call to the gateway\'s /admin API with its admin key and passes its answer on', async () => {
    const calls: Array<[string, RequestInit | undefined]> = [];
    const fake: typeof fetch = async (url, init) => {
      calls.push([String(url), init]);
      return new Response(JSON.stringify({ error: { code: 'GW_ERR_CONFLICT', message: 'nothing to roll back to' } }), { status: 409 });
    };
    const d = new GatewayDirectory({ fetch: fake });
    d.announce({ ...good, url: 'http://10.0.0.7:8080/' });
    const r = await d.relay('gw-1', 'POST', '/deployments/chat/rollback', { reason: 'r' });
    assert.equal(r.status, 409);
    assert.deepEqual(r.body, { error: { code: 'GW_ERR_CONFLICT', message: 'nothing to roll back to' } });
    assert.equal(calls[0]![0], 'http://10.0.0.7:8080/admin/deployments/chat/rollback');
    assert.equal((calls[0]![1]!.headers as Record<string, string>).authorization, 'Bearer k');
    assert.equal(calls[0]![1]!.body, '{"reason":"r"}');
  });

  test('reports a gateway that refuses its own admin key, or does not answer, as unreachable', async () => {
    const refusing = new GatewayDirectory({ fetch: async () => new Response('{}', { status: 401 }) });
    refusing.announce(good);
    await assert.rejects(refusing.relay('gw-1', 'GET', '/deployments'), (e: CoordinatorError) => e.code === 'CRD_ERR_GATEWAY_UNREACHABLE' && /refused the admin key/.test(e.message));
    const down = new GatewayDirectory({ fetch: async () => { throw new TypeError('fetch failed'); } });
    down.announce(good);
    await assert.rejects(down.relay('gw-1', 'GET', '/deployments'), (e: CoordinatorError) => e.code === 'CRD_ERR_GATEWAY_UNREACHABLE' && e.statusCode === 502);
    await assert.rejects(down.relay('nope', 'GET', '/deployments'), (e: CoordinatorError) => e.code === 'CRD_ERR_NOT_FOUND');
  });
});
