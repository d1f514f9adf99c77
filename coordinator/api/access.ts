/**
 * Who may call what on the coordinator's HTTP port, decided on the route the router matched, never on the URL's
 * spelling. The router decodes percent-escapes before it matches (`GET /%61pi/nodes` reaches `/api/nodes`), so a
 * check on `req.url` can be walked around; `req.routeOptions.url` is the route's own pattern, whatever the request
 * wrote.
 *
 * Closed by default: every route needs the cluster token (or a dashboard session) unless it is on PUBLIC_ROUTES,
 * so a route added tomorrow is guarded without anyone remembering to. A request that matches no route needs
 * credentials too before it learns that (401, then 404), so a stranger cannot map the API by its 404s.
 *
 * `decideAccess` is the pure decision; server.ts's onRequest hook gathers the facts (token match, session) and
 * applies it. `checkPublicRoutes` fails the start-up when an entry of the list names no registered route, so the
 * list cannot go stale silently.
 */
import type { CoordinatorErrorCode } from '../errors.ts';

export interface PublicRoute {
  method: 'GET' | 'HEAD' | 'POST';
  /** The route's pattern as registered (fastify's `routeOptions.url`), not a prefix. */
  url: string;
  /** Why a stranger may call it. */
  why: string;
}

/** The whole list of routes that answer without credentials. Nothing else does. */
export const PUBLIC_ROUTES: readonly PublicRoute[] = Object.freeze([
  { method: 'GET', url: '/healthz', why: 'liveness for load balancers and orchestrators; node counts only' },
  { method: 'HEAD', url: '/healthz', why: 'the same, headers only' },
  { method: 'GET', url: '/metrics', why: 'Prometheus scrapes without credentials; figures and job ids, no secrets' },
  { method: 'HEAD', url: '/metrics', why: 'the same, headers only' },
  { method: 'POST', url: '/api/login', why: 'trades the cluster token for a dashboard session; checks the token itself' },
  { method: 'POST', url: '/api/logout', why: 'ends the caller\'s own session, if any' },
  { method: 'GET', url: '/api/session', why: 'says whether the caller\'s cookie is a live session, nothing more' },
  { method: 'GET', url: '/', why: 'the dashboard page: static, shows nothing until the person logs in' },
  { method: 'HEAD', url: '/', why: 'the same, headers only' },
  { method: 'GET', url: '/dashboard/:file', why: 'the dashboard\'s scripts and styles, from a fixed list of files' },
  { method: 'HEAD', url: '/dashboard/:file', why: 'the same, headers only' },
  { method: 'GET', url: '/dashboard/vendor/:file', why: 'uPlot, the chart library the dashboard loads' },
  { method: 'HEAD', url: '/dashboard/vendor/:file', why: 'the same, headers only' },
]);

/** A WebSocket endpoint on the coordinator's port (upgrades bypass the route table and its hook: server.ts). */
export interface UpgradeRoute {
  /** The exact path; any other spelling gets 404. */
  path: string;
  /** What it takes to be let through, and where that is checked. Neither is public. */
  credential: string;
}

/** Every path that upgrades to a WebSocket. Both are credentialed; neither is on PUBLIC_ROUTES. */
export const UPGRADE_ROUTES: readonly UpgradeRoute[] = Object.freeze([
  { path: '/ws/agent', credential: "the cluster's join token in the agent's first message, `hello` (cluster/agent-hub.ts); wrong: closed 4005" },
  {
    path: '/ws/relay',
    credential:
      "Authorization: Bearer <a group's relay ticket> with ?to=NODE (a dialer), or <a one-time session key> with ?session=S " +
      '(the relayed agent calling back), checked before the upgrade (cluster/relay.ts); missing or wrong: 401',
  },
]);

const PUBLIC = new Set(PUBLIC_ROUTES.map((r) => `${r.method} ${r.url}`));

/** True when `method` on the matched route pattern `routeUrl` is on the public list; an unmatched request never is. */
export function isPublicRoute(method: string, routeUrl: string | undefined): boolean {
  return routeUrl !== undefined && PUBLIC.has(`${method} ${routeUrl}`);
}

/** What the hook knows about one request. */
export interface AccessFacts {
  method: string;
  /** The matched route's pattern; undefined when no route matched (the request is headed for the 404 handler). */
  routeUrl: string | undefined;
  /** An `Authorization` header was sent (whatever it holds). */
  hasAuthorization: boolean;
  /** It was `Bearer <the cluster token>`. */
  clusterToken: boolean;
  /** The request carries the cookie of a live dashboard session. */
  session: boolean;
  /** The `X-Requested-With` header's value. */
  requestedWith: string | undefined;
}

export type AccessDecision = { allow: true } | { allow: false; code: CoordinatorErrorCode; message: string };

const UNAUTHORIZED: AccessDecision = {
  allow: false,
  code: 'CRD_ERR_UNAUTHORIZED',
  message: 'missing or wrong cluster token: send Authorization: Bearer <token printed by coordinator start>, or log in to the dashboard',
};

const SAFE_METHODS = new Set(['GET', 'HEAD']);

export function decideAccess(f: AccessFacts): AccessDecision {
  if (isPublicRoute(f.method, f.routeUrl)) return { allow: true };
  // A header that is present decides on its own: a wrong token is refused even when a session cookie rides along,
  // so a script never acts with a person's session by accident.
  if (f.hasAuthorization) return f.clusterToken ? { allow: true } : UNAUTHORIZED;
  if (!f.session) return UNAUTHORIZED;
  // A cookie rides along with any request the browser makes, a forged cross-site form post included; a custom
  // header cannot be sent cross-site without a CORS preflight we never grant.
  if (!SAFE_METHODS.has(f.method) && f.requestedWith !== 'meshtrain') {
    return { allow: false, code: 'CRD_ERR_FORBIDDEN', message: 'a dashboard request that changes something must carry X-Requested-With: meshtrain' };
  }
  return { allow: true };
}

/** Every entry of PUBLIC_ROUTES that matches no registered route (`routes`: "METHOD url" strings). */
export function stalePublicRoutes(routes: ReadonlySet<string>): PublicRoute[] {
  return PUBLIC_ROUTES.filter((r) => !routes.has(`${r.method} ${r.url}`));
}
