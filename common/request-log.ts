/**
 * One log line per HTTP request, for the coordinator's and the gateway's fastify servers:
 *
 *   const app = Fastify({ ...requestLogging(log), … });
 *   app.addHook('onResponse', logRequest);
 *
 * gives `… INFO  [coordinator] request method=GET route=/api/jobs/:id status=200 ms=3.1 reqId=req-1c`.
 * The route is the pattern the router matched (routeOptions.url), never the raw URL, and no header, query or body
 * is logged, so a bearer token, a session cookie or a `?token=` cannot reach the line; pino's redaction list
 * (common/log.ts REDACTED_PATHS) is the second lock for anything else fastify logs about a request.
 */
import { LogController, type FastifyReply, type FastifyRequest } from 'fastify';
import { pinoOf, type Logger } from './log.ts';

/** Fastify constructor options: our logger as fastify's, without fastify's own two lines per request. */
export function requestLogging(log: Logger) {
  return { loggerInstance: pinoOf(log), logController: new LogController({ disableRequestLogging: true }) } as const;
}

/** An onResponse hook: method, matched route, status and duration of the request. */
export async function logRequest(req: FastifyRequest, reply: FastifyReply): Promise<void> {
  req.log.info({ method: req.method, route: req.routeOptions.url ?? '(no route)', status: reply.statusCode, ms: Math.round(reply.elapsedTime * 10) / 10 }, 'request');
}
