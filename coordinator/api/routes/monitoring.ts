/**
 * What load balancers, orchestrators and Prometheus ask without credentials (both are on ../access.ts
 * PUBLIC_ROUTES): node counts and figures, never a secret.
 *
 *   GET /healthz   liveness: cluster id, uptime, agents by status
 *   GET /metrics   Prometheus exposition (../../metrics.ts)
 */
import type { FastifyPluginAsync } from 'fastify';
import type { ApiContext } from './context.ts';

export const monitoringRoutes: FastifyPluginAsync<Pick<ApiContext, 'hub' | 'clusterId' | 'metrics'>> = async (app, { hub, clusterId, metrics }) => {
  app.get('/healthz', async () => {
    const nodes = hub.views();
    return {
      status: 'ok',
      clusterId,
      uptimeSeconds: Math.round(process.uptime()),
      nodes: Object.fromEntries((['alive', 'dead', 'left', 'revoked'] as const).map((s) => [s, nodes.filter((n) => n.status === s).length])),
    };
  });
  app.get('/metrics', async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
};
