/**
 * The web dashboard's static files: `GET /` is the page, `GET /dashboard/<file>` its scripts and styles
 * (coordinator/dashboard/), `GET /dashboard/vendor/…` uPlot from node_modules. No build step: the browser loads the
 * ES modules as they are. These routes need no token (they hold no data); the page logs in and reads everything
 * from /api with its session cookie.
 *
 * Only files listed when the plugin starts are served, looked up by exact name, so no request path ever reaches
 * the file system: `/dashboard/../package.json` or `/dashboard/..%2Fx` name no listed file and get a 404.
 */
import { readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyPluginAsync, FastifyReply } from 'fastify';
import { CoordinatorError } from '../errors.ts';

export const DASHBOARD_DIR = fileURLToPath(new URL('./public/', import.meta.url));

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

/**
 * Scripts and styles from this origin only, nothing inline (so an injected `<script>` or `onclick=` never runs),
 * requests to this origin only, and no framing (clickjacking on the Cancel and Promote buttons).
 * uPlot sizes its elements through the CSSOM (`el.style.x = …`), which style-src does not govern.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

/** URL name → absolute path of every file the dashboard serves. */
function servedFiles(): Map<string, string> {
  const files = new Map<string, string>();
  for (const name of readdirSync(DASHBOARD_DIR)) {
    if (/^[a-z0-9-]+\.(html|js|css)$/.test(name)) files.set(name, join(DASHBOARD_DIR, name));
  }
  // uPlot is resolved like an import, so it is found wherever npm put it (hoisted or nested).
  const uplotDist = dirname(createRequire(import.meta.url).resolve('uplot/dist/uPlot.esm.js'));
  files.set('vendor/uPlot.esm.js', join(uplotDist, 'uPlot.esm.js'));
  files.set('vendor/uPlot.min.css', join(uplotDist, 'uPlot.min.css'));
  return files;
}

export const dashboardRoutes: FastifyPluginAsync = async (app) => {
  const files = servedFiles();

  const send = async (reply: FastifyReply, name: string) => {
    const path = files.get(name);
    if (!path) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no dashboard file ${name.slice(0, 100)}`);
    return reply
      .type(CONTENT_TYPES[extname(path)]!)
      // The files change with the coordinator's version: always revalidate, so an upgrade is never half-cached.
      .header('cache-control', 'no-cache')
      .header('content-security-policy', CONTENT_SECURITY_POLICY)
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .send(await readFile(path));
  };

  app.get('/', async (_req, reply) => send(reply, 'index.html'));
  app.get<{ Params: { file: string } }>('/dashboard/:file', async (req, reply) => send(reply, req.params.file));
  app.get<{ Params: { file: string } }>('/dashboard/vendor/:file', async (req, reply) => send(reply, `vendor/${req.params.file}`));
};
