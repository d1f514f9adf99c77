/**
 * Who may call what. Routes fall in three classes by the route they matched: inference (`/v1/…`: an API key, when
 * any is configured), open (PUBLIC_ROUTES: `/healthz`, `/readyz`, `/metrics`) and admin (everything else: the admin key;
 * refused outright when none is configured, never open). `decideAccess` is the pure decision; `KeyRing` matches a
 * presented key in constant time; the gateway's onRequest hook (server.ts) applies both to every request, so a
 * route added anywhere is guarded without doing anything.
 *
 * Keys are kept only as sha256 digests and never logged or exported: a client is known by `clientId`, a short
 * digest prefix, which the rate limiter uses as its bucket name.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import type { GatewayErrorCode } from './errors.ts';

export type RouteClass = 'inference' | 'admin' | 'open';

/** What the request's `Authorization: Bearer` header holds, as far as the key ring can tell. */
export type KeyMatch = 'none' | 'api' | 'admin' | 'unknown';

export type AccessDecision = { allow: true } | { allow: false; code: GatewayErrorCode; message: string };

const MISSING = "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.";
const INCORRECT = 'Incorrect API key provided.';

/** The decision for one request: a route class, the key it presented, and which kinds of key are configured. */
export function decideAccess(route: RouteClass, key: KeyMatch, configured: { apiKeys: boolean; adminKey: boolean }): AccessDecision {
  if (route === 'open') return { allow: true };
  if (route === 'inference') {
    if (!configured.apiKeys || key === 'api') return { allow: true };
    return { allow: false, code: 'GW_ERR_UNAUTHORIZED', message: key === 'none' ? MISSING : INCORRECT };
  }
  if (!configured.adminKey) {
    return { allow: false, code: 'GW_ERR_ADMIN_DISABLED', message: 'Admin routes are disabled: start the gateway with --admin-key (or MESHTRAIN_GATEWAY_ADMIN_KEY) to use them.' };
  }
  if (key === 'admin') return { allow: true };
  if (key === 'api') return { allow: false, code: 'GW_ERR_FORBIDDEN', message: 'This API key may not use admin routes; they need the admin key.' };
  return { allow: false, code: 'GW_ERR_UNAUTHORIZED', message: key === 'none' ? MISSING : INCORRECT };
}

const under = (path: string, prefix: string) => path === prefix || path.startsWith(`${prefix}/`);

/**
 * The only routes that answer without a key, as "METHOD pattern". Everything else is inference or admin: a matched
 * route that is neither under /v1 nor on this list is treated as admin, so a route added later is closed until
 * someone decides otherwise.
 */
export const PUBLIC_ROUTES: readonly string[] = Object.freeze(['GET /healthz', 'HEAD /healthz', 'GET /readyz', 'HEAD /readyz', 'GET /metrics', 'HEAD /metrics']);
const PUBLIC = new Set(PUBLIC_ROUTES);

/**
 * The class of a request. A matched request is classed by the route the router matched (`routeOptions.url`, the
 * pattern, whatever the URL's spelling: the router decodes `/%61dmin/status` to /admin/status). An unmatched one
 * (headed for a 404) is classed by its path, raw and percent-decoded, so that a missing key never learns which
 * routes exist under /v1 or /admin.
 */
export function routeClassOf(req: Pick<FastifyRequest, 'url' | 'method' | 'routeOptions'>): RouteClass {
  const route = req.routeOptions.url;
  if (route !== undefined) {
    if (PUBLIC.has(`${req.method} ${route}`)) return 'open';
    return under(route, '/v1') ? 'inference' : 'admin';
  }
  const raw = req.url.split('?')[0]!;
  let decoded = raw;
  try {
    decoded = decodeURIComponent(raw);
  } catch {
    // a malformed escape: the router will not match it either
  }
  if (under(raw, '/admin') || under(decoded, '/admin')) return 'admin';
  if (under(raw, '/v1') || under(decoded, '/v1')) return 'inference';
  return 'open';
}

/** The key in `Authorization: Bearer <key>`, or '' when there is none. */
export function bearerToken(header: string | undefined): string {
  return header?.startsWith('Bearer ') ? header.slice(7).trim() : '';
}

const sha256 = (s: string) => createHash('sha256').update(s).digest();

export class KeyRing {
  readonly #apiKeys: Buffer[];
  readonly #adminKey: Buffer | undefined;

  constructor(apiKeys: readonly string[], adminKey: string | undefined) {
    this.#apiKeys = apiKeys.map(sha256);
    this.#adminKey = adminKey ? sha256(adminKey) : undefined;
  }

  get configured(): { apiKeys: boolean; adminKey: boolean } {
    return { apiKeys: this.#apiKeys.length > 0, adminKey: this.#adminKey !== undefined };
  }

  get apiKeyCount(): number {
    return this.#apiKeys.length;
  }

  /**
   * Which key `presented` is. Digests of equal length compared with timingSafeEqual, against every key without
   * stopping at a match, so the time taken says nothing about the keys.
   */
  match(presented: string): { key: KeyMatch; clientId: string | undefined } {
    if (!presented) return { key: 'none', clientId: undefined };
    const digest = sha256(presented);
    let api = false;
    for (const k of this.#apiKeys) api = timingSafeEqual(digest, k) || api;
    const admin = this.#adminKey ? timingSafeEqual(digest, this.#adminKey) : false;
    const key: KeyMatch = admin ? 'admin' : api ? 'api' : 'unknown';
    return { key, clientId: key === 'unknown' ? undefined : `key:${digest.subarray(0, 6).toString('hex')}` };
  }
}
