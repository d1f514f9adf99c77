/**
 * Dashboard sessions (../sessions.ts): a person trades the cluster token for an HttpOnly cookie once, so the token
 * never sits in the page. The three routes are public (../access.ts PUBLIC_ROUTES): login checks the token
 * itself, logout ends only the caller's own session, and session answers yes or no.
 *
 *   POST /api/login     {token}: a session cookie; 401 for a wrong token, 400 for a body that is not {token: string}
 *   POST /api/logout    ends the caller's session, if any
 *   GET  /api/session   {authenticated}
 */
import type { FastifyPluginAsync } from 'fastify';
import { CoordinatorError } from '../../errors.ts';
import { LoginBody } from '../schemas.ts';
import { clearedSessionCookie, sessionCookie, sessionIdOf } from '../sessions.ts';
import type { ApiContext } from './context.ts';

export const authRoutes: FastifyPluginAsync<Pick<ApiContext, 'sessions' | 'isClusterToken'>> = async (app, { sessions, isClusterToken }) => {
  app.post<{ Body: LoginBody }>('/api/login', { schema: { body: LoginBody } }, async (req, reply) => {
    if (!isClusterToken(req.body.token)) throw new CoordinatorError('CRD_ERR_UNAUTHORIZED', 'wrong cluster token: use the token `coordinator start` printed');
    return reply.header('set-cookie', sessionCookie(sessions.create(), req.protocol === 'https')).send({ ok: true });
  });
  app.post('/api/logout', async (req, reply) => {
    sessions.end(sessionIdOf(req.headers.cookie));
    return reply.header('set-cookie', clearedSessionCookie).send({ ok: true });
  });
  app.get('/api/session', async (req) => ({ authenticated: sessions.touch(sessionIdOf(req.headers.cookie)) }));
};
