/** The dashboard's static routes on a real coordinator app, over app.inject (no sockets). */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../common/log.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import { CONTENT_SECURITY_POLICY, DASHBOARD_DIR } from '../../coordinator/dashboard/routes.ts';
import { createCoordinator, type Coordinator } from '../../coordinator/api/server.ts';

describe('the dashboard static routes', () => {
  let dir: string;
  let coordinator: Coordinator;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'dashboard-static-'));
    coordinator = createCoordinator(resolveConfig({ dataDir: dir, token: 'dashboard-static-token' }), silentLogger);
  });
  after(async () => {
    await coordinator?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const get = (url: string, token?: string) => coordinator.app.inject({ method: 'GET', url, ...(token ? { headers: { authorization: `Bearer ${token}` } } : {}) });

  test('the page is served at / without a token, with a strict policy and no caching', async () => {
    const res = await get('/');
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['content-type'], 'text/html; charset=utf-8');
    assert.equal(res.headers['cache-control'], 'no-cache');
    assert.equal(res.headers['content-security-policy'], CONTENT_SECURITY_POLICY);
    assert.match(String(res.headers['content-security-policy']), /script-src 'self'(;|$)/, 'no inline scripts');
    assert.doesNotMatch(String(res.headers['content-security-policy']), /unsafe-inline|unsafe-eval/);
    assert.match(res.body, /<script type="module" src="\/dashboard\/app\.js"><\/script>/);
  });

  test('the page holds no inline script or style, which the policy would block', async () => {
    const html = (await get('/')).body;
    assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'every script has a src');
    assert.doesNotMatch(html, /<style|\sstyle=|\son[a-z]+=/i, 'no inline styles or handlers');
  });

  test('every script and style file is served with its content type', async () => {
    const types: Record<string, string> = { js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8', html: 'text/html; charset=utf-8' };
    for (const name of readdirSync(DASHBOARD_DIR)) {
      const res = await get(`/dashboard/${name}`);
      assert.equal(res.statusCode, 200, name);
      assert.equal(res.headers['content-type'], types[name.split('.').pop()!], name);
      assert.equal(res.headers['x-content-type-options'], 'nosniff', name);
    }
  });

  test('uPlot is served from its npm package', async () => {
    const js = await get('/dashboard/vendor/uPlot.esm.js');
    assert.equal(js.statusCode, 200);
    assert.equal(js.headers['content-type'], 'text/javascript; charset=utf-8');
    assert.match(js.body, /export\s*\{\s*uPlot as default\s*\}|export default uPlot/);
    const css = await get('/dashboard/vendor/uPlot.min.css');
    assert.equal(css.statusCode, 200);
    assert.match(css.body, /\.uplot/);
  });

  test('no path outside the listed files is served: 404, or 401 to a stranger where no route matched (closed by default)', async () => {
    for (const url of [
      '/dashboard/../package.json',
      '/dashboard/..%2Fpackage.json',
      '/dashboard/%2e%2e%2fpackage.json',
      '/dashboard/vendor/..%2F..%2Fpackage.json',
      '/dashboard/vendor/uPlot.cjs.js',
      '/dashboard/.hidden.js',
      '/dashboard/missing.js',
      '/dashboard/',
    ]) {
      const stranger = await get(url);
      assert.ok([401, 404].includes(stranger.statusCode), `${url}: ${stranger.statusCode}`);
      const res = await get(url, 'dashboard-static-token');
      assert.equal(res.statusCode, 404, url);
      for (const body of [stranger.body, res.body]) assert.doesNotMatch(body, /"name":\s*"meshtrain"/, url);
    }
  });

  test('the API behind the page still needs a session or the token', async () => {
    const res = await get('/api/nodes');
    assert.equal(res.statusCode, 401);
  });
});
