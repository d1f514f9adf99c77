/**
 * The agents the coordinator knows (../../cluster/agent-hub.ts), as the dashboard and `coordinator nodes` list them.
 *
 *   GET  /api/nodes              every known agent: status, capabilities, heartbeat age, role in a job, straggler
 *   GET  /api/nodes/:id          one agent with its last 50 status events
 *   POST /api/nodes/:id/revoke   revoke an agent's credential: disconnected, never admitted under that id again
 */
import type { FastifyPluginAsync } from 'fastify';
import { CoordinatorError } from '../../errors.ts';
import type { ApiContext } from './context.ts';

type Id = { Params: { id: string } };

export const nodeRoutes: FastifyPluginAsync<Pick<ApiContext, 'store' | 'hub' | 'bus' | 'nodeViews'>> = async (app, { store, hub, bus, nodeViews }) => {
  app.get('/api/nodes', async () => ({ nodes: nodeViews() }));
  app.get<Id>('/api/nodes/:id', async (req) => {
    const node = nodeViews().find((n) => n.id === req.params.id);
    if (!node) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no node ${req.params.id}`);
    return { node, events: store.nodeEvents(node.id, 50) };
  });
  app.post<Id>('/api/nodes/:id/revoke', async (req) => {
    if (!hub.revoke(req.params.id)) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no node ${req.params.id}`);
    bus.emit('node', { nodeId: req.params.id });
    return { node: nodeViews().find((n) => n.id === req.params.id) };
  });
};
