/**
 * The coordinator's access decision (coordinator/api/access.ts) as a table: public routes, the cluster token, a
 * dashboard session and its CSRF header, and requests that matched no route.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decideAccess, isPublicRoute, stalePublicRoutes, PUBLIC_ROUTES, type AccessFacts } from '../../coordinator/api/access.ts';

const facts = (over: Partial<AccessFacts>): AccessFacts => ({
  method: 'GET', routeUrl: '/api/nodes', hasAuthorization: false, clusterToken: false, session: false, requestedWith: undefined, ...over,
});

test('decideAccess allows public routes, the cluster token and sessions, and refuses everything else', () => {
  const table: Array<[string, Partial<AccessFacts>, 'allow' | 'CRD_ERR_UNAUTHORIZED' | 'CRD_ERR_FORBIDDEN']> = [
    ['a stranger on a closed route', {}, 'CRD_ERR_UNAUTHORIZED'],
    ['a stranger on /healthz', { routeUrl: '/healthz' }, 'allow'],
    ['a stranger posting to /healthz (not on the list)', { method: 'POST', routeUrl: '/healthz' }, 'CRD_ERR_UNAUTHORIZED'],
    ['a stranger on a request that matched no route', { routeUrl: undefined }, 'CRD_ERR_UNAUTHORIZED'],
    ['the cluster token on a request that matched no route (then 404)', { routeUrl: undefined, hasAuthorization: true, clusterToken: true }, 'allow'],
    ['the cluster token', { hasAuthorization: true, clusterToken: true }, 'allow'],
    ['a wrong token', { hasAuthorization: true }, 'CRD_ERR_UNAUTHORIZED'],
    ['a wrong token beside a live session', { hasAuthorization: true, session: true }, 'CRD_ERR_UNAUTHORIZED'],
    ['a session reading', { session: true }, 'allow'],
    ['a session changing something without the CSRF header', { method: 'POST', routeUrl: '/api/jobs', session: true }, 'CRD_ERR_FORBIDDEN'],
    ['a session changing something with the CSRF header', { method: 'POST', routeUrl: '/api/jobs', session: true, requestedWith: 'meshtrain' }, 'allow'],
    ['the CSRF header alone', { method: 'POST', routeUrl: '/api/jobs', requestedWith: 'meshtrain' }, 'CRD_ERR_UNAUTHORIZED'],
  ];
  for (const [name, over, expected] of table) {
    const d = decideAccess(facts(over));
    assert.equal(d.allow ? 'allow' : d.code, expected, name);
  }
});

test('isPublicRoute matches the route pattern, never a path that merely starts like one', () => {
  assert.equal(isPublicRoute('GET', '/dashboard/:file'), true);
  assert.equal(isPublicRoute('GET', '/dashboard/app.js'), false, 'a concrete path is not a pattern');
  assert.equal(isPublicRoute('GET', '/api/session/x'), false);
  assert.equal(isPublicRoute('GET', undefined), false);
});

test('stalePublicRoutes names every public entry the route table lacks', () => {
  const all = new Set(PUBLIC_ROUTES.map((r) => `${r.method} ${r.url}`));
  assert.deepEqual(stalePublicRoutes(all), []);
  all.delete('POST /api/login');
  assert.deepEqual(stalePublicRoutes(all).map((r) => `${r.method} ${r.url}`), ['POST /api/login']);
});
