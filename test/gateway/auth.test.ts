/** The gateway's route classes (gateway/auth.ts): decided on the matched route, closed by default. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { routeClassOf } from '../../gateway/auth.ts';

const req = (method: string, url: string, route: string | undefined) => ({ method, url, routeOptions: { url: route } }) as unknown as Parameters<typeof routeClassOf>[0];

test('routeClassOf classes a matched request by its route pattern and an unmatched one by its decoded path', () => {
  const table: Array<[string, string, string | undefined, string]> = [
    ['GET', '/healthz', '/healthz', 'open'],
    ['HEAD', '/metrics', '/metrics', 'open'],
    ['GET', '/readyz', '/readyz', 'open'],
    ['POST', '/readyz', '/readyz', 'admin'],
    ['POST', '/healthz', '/healthz', 'admin'], // only the listed method is public
    ['POST', '/v1/completions', '/v1/completions', 'inference'],
    ['POST', '/%761/completions', '/v1/completions', 'inference'],
    ['GET', '/%61dmin/status', '/admin/status', 'admin'],
    ['GET', '/debug/whatever', '/debug/whatever', 'admin'], // a route nobody classed is closed
    ['GET', '/%61dmin/nothing', undefined, 'admin'], // a 404 under /admin still needs the key first
    ['GET', '/v1/nothing', undefined, 'inference'],
    ['GET', '/nothing', undefined, 'open'], // then 404
  ];
  for (const [method, url, route, expected] of table) assert.equal(routeClassOf(req(method, url, route)), expected, `${method} ${url}`);
});
