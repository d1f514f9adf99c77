/**
 * Ring groups and the collectives run on them (../../cluster/groups.ts), and the self-check that forms a ring of
 * every agent and checks each collective (../../cluster/selfcheck.ts). Bodies are checked by ../schemas.ts; the
 * rules that relate two fields are checked here.
 *
 *   GET    /api/groups            ring groups
 *   POST   /api/groups            form a ring {size?|nodes?, segmentBytes?} (201)
 *   POST   /api/groups/:id/runs   run a collective {op, elements, seed?, root?, repeats?, verify?, returnResult?}
 *   DELETE /api/groups/:id        release a ring
 *   POST   /api/selfcheck         form a ring of the agents and check every collective {agents?, elements?, segmentBytes?}
 */
import type { FastifyPluginAsync } from 'fastify';
import { runSelfcheck } from '../../cluster/selfcheck.ts';
import { CoordinatorError } from '../../errors.ts';
import { FormGroupBody, MAX_RETURNED_ELEMENTS, RunBody, SelfcheckBody } from '../schemas.ts';
import type { ApiContext } from './context.ts';

type Id = { Params: { id: string } };

export const groupRoutes: FastifyPluginAsync<Pick<ApiContext, 'groups' | 'runner' | 'log' | 'segmentBytes'>> = async (app, { groups, runner, log, segmentBytes }) => {
  app.get('/api/groups', async () => ({ groups: groups.list() }));
  app.post<{ Body: FormGroupBody }>('/api/groups', { schema: { body: FormGroupBody } }, async (req, reply) => {
    if (req.body.size !== undefined && req.body.nodes !== undefined) {
      throw new CoordinatorError('CRD_ERR_BAD_REQUEST', 'give size or nodes, not both', { details: ['/size and /nodes are exclusive'] });
    }
    const info = await groups.form({
      ...(req.body.size !== undefined ? { size: req.body.size } : {}),
      ...(req.body.nodes ? { nodeIds: req.body.nodes } : {}),
      segmentBytes: req.body.segmentBytes ?? segmentBytes,
    });
    return reply.code(201).send(info);
  });
  app.post<Id & { Body: RunBody }>('/api/groups/:id/runs', { schema: { body: RunBody } }, async (req) => {
    const b = req.body;
    if (b.returnResult && b.elements > MAX_RETURNED_ELEMENTS) {
      throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `returnResult is limited to ${MAX_RETURNED_ELEMENTS} elements`, { details: [`/elements must be ≤ ${MAX_RETURNED_ELEMENTS} with returnResult`] });
    }
    return groups.run(req.params.id, {
      op: b.op,
      elements: b.elements,
      seed: b.seed ?? 1,
      ...(b.root !== undefined ? { root: b.root } : {}),
      repeats: b.repeats ?? 1,
      verify: b.verify ?? false,
      returnResult: b.returnResult ?? false,
    });
  });
  app.delete<Id>('/api/groups/:id', async (req) => {
    groups.get(req.params.id); // the 404 for an unknown group: release() alone would ignore it
    groups.release(req.params.id);
    return { released: req.params.id };
  });
  app.post<{ Body: SelfcheckBody }>('/api/selfcheck', { schema: { body: SelfcheckBody } }, async (req) => {
    const report = await runSelfcheck(groups, {
      ...(req.body.agents !== undefined ? { agents: req.body.agents } : {}),
      ...(req.body.elements ? { elements: req.body.elements } : {}),
      segmentBytes: req.body.segmentBytes ?? segmentBytes,
    }, (line) => log.info(`selfcheck: ${line}`));
    runner.observeSelfcheck(report); // the planner plans from the link bandwidth just measured
    return report;
  });
};
