/**
 * The inference gateways serving this cluster's models (../../cluster/gateways.ts). A gateway announces itself
 * with the cluster token and its admin key; the dashboard's deployment calls are relayed to that gateway's /admin
 * API with the key, which never reaches a browser. The gateway's answer and status come back as they are.
 *
 *   POST /api/gateways                                    a gateway announces itself {name, url, adminKey} (cluster token only) (201)
 *   GET  /api/gateways                                    the gateways that announced themselves
 *   GET  /api/gateways/:gw/deployments                    relayed to the gateway's GET /admin/deployments
 *   GET  /api/gateways/:gw/deployments/:name[/comparison] relayed likewise
 *   POST /api/gateways/:gw/deployments/:name/promote      {version: "model@vN", reason}, relayed
 *   POST /api/gateways/:gw/deployments/:name/rollback     {reason}, relayed
 *
 * Relayed bodies are checked here too (../schemas.ts), so a malformed or oversized body is refused before it
 * travels with the admin key; the gateway still checks what it receives.
 */
import type { FastifyPluginAsync } from 'fastify';
import { announcementProblems } from '../../cluster/gateways.ts';
import { CoordinatorError } from '../../errors.ts';
import { GatewayAnnouncementBody, PromoteBody, RollbackBody } from '../schemas.ts';
import type { ApiContext } from './context.ts';

type Relayed = { Params: { gw: string; name?: string } };

const deploymentPath = (name: string | undefined, tail = '') => `/deployments${name === undefined ? '' : `/${encodeURIComponent(name)}`}${tail}`;

export const gatewayRoutes: FastifyPluginAsync<Pick<ApiContext, 'gateways' | 'bus' | 'log'>> = async (app, { gateways, bus, log }) => {
  app.post<{ Body: GatewayAnnouncementBody }>('/api/gateways', {
    schema: { body: GatewayAnnouncementBody },
    // Before the body is validated: a dashboard session is refused as such, whatever it sent.
    preValidation: async (req) => {
      if (!req.headers.authorization) throw new CoordinatorError('CRD_ERR_FORBIDDEN', 'gateways announce themselves with the cluster token, not a dashboard session');
    },
  }, async (req, reply) => {
    const problems = announcementProblems(req.body); // the URL's form: http(s)://host:port, no path, query or credentials
    if (problems.length) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `invalid gateway announcement: ${problems.join('; ')}`, { details: problems });
    const a = req.body;
    if (gateways.announce(a)) {
      log.info(`gateway ${a.name} at ${a.url} announced itself`);
      bus.emit('gateway', { name: a.name });
    }
    return reply.code(201).send({ ok: true });
  });
  app.get('/api/gateways', async () => ({ gateways: gateways.list() }));

  for (const tail of ['', '/:name', '/:name/comparison']) {
    app.get<Relayed>(`/api/gateways/:gw/deployments${tail}`, async (req, reply) => {
      const r = await gateways.relay(req.params.gw, 'GET', deploymentPath(req.params.name, tail.endsWith('/comparison') ? '/comparison' : ''));
      return reply.code(r.status).send(r.body);
    });
  }
  for (const [action, body] of [['promote', PromoteBody], ['rollback', RollbackBody]] as const) {
    app.post<Relayed>(`/api/gateways/:gw/deployments/:name/${action}`, { schema: { body } }, async (req, reply) => {
      const r = await gateways.relay(req.params.gw, 'POST', deploymentPath(req.params.name, `/${action}`), req.body);
      if (r.status < 300) bus.emit('gateway', { name: req.params.gw });
      return reply.code(r.status).send(r.body);
    });
  }
};
