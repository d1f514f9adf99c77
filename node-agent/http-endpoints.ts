/**
 * The plain-HTTP side of the agent's peer port: GET /metrics (Prometheus exposition) and GET /healthz. Everything
 * else a browser or scanner might send gets 404 (405 for a known path with another method); WebSocket upgrades
 * never come here, they go to the peer listener (peer-server.ts).
 *
 * Sharing the peer port means one port to open per agent, and it is the one the coordinator already knows (the
 * node's peerAddress), so a scraper can find every agent from GET /api/nodes. Neither route needs the cluster
 * token: like the coordinator's /metrics they carry no secrets (job ids and figures only).
 */
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';

const TEXT = 'text/plain; charset=utf-8';

/** The peer port's paths, matched exactly (no decoding, so no other spelling reaches them); each answers GET and HEAD. */
const PATHS = { '/metrics': 'metrics', '/healthz': 'healthz' } as const;
const METHODS = ['GET', 'HEAD'];

/**
 * Every HTTP route of the peer port, as "METHOD path", all public: the table the handler below routes by.
 * WebSocket upgrades are the peer links, authenticated by the group token.
 */
export const AGENT_HTTP_ROUTES: readonly string[] = Object.freeze(Object.keys(PATHS).flatMap((p) => METHODS.map((m) => `${m} ${p}`)));

export interface HttpEndpointsOptions {
  /** Served at GET /metrics; without it /metrics is 404. */
  registry?: Registry | undefined;
  /** The body of GET /healthz. */
  health(): Record<string, unknown>;
  onError?(err: unknown): void;
}

export function httpEndpoints(opts: HttpEndpointsOptions): RequestListener {
  return (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    const found = Object.prototype.hasOwnProperty.call(PATHS, path!) ? PATHS[path as keyof typeof PATHS] : null;
    const route = found === 'metrics' && !opts.registry ? null : found;
    // Plain-text refusals: these are for people poking at the port, and no script has a reason to match on them.
    if (!route) return send(res, 404, TEXT, `no route ${req.method} ${path}: this is a meshtrain agent's peer port (WebSocket links, GET /metrics, GET /healthz)\n`);
    if (!METHODS.includes(req.method ?? '')) {
      res.setHeader('allow', METHODS.join(', '));
      return send(res, 405, TEXT, `${path} answers GET only\n`);
    }
    if (route === 'healthz') return send(res, 200, 'application/json', JSON.stringify({ status: 'ok', ...opts.health() }), req.method === 'HEAD');
    opts.registry!.metrics().then(
      (text) => send(res, 200, opts.registry!.contentType, text, req.method === 'HEAD'),
      (err: unknown) => {
        opts.onError?.(err);
        send(res, 500, TEXT, 'collecting metrics failed\n');
      },
    );
  };
}

function send(res: ServerResponse, status: number, type: string, body: string, headOnly = false): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(headOnly ? undefined : body);
}
