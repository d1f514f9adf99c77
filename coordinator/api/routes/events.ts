/**
 * GET /api/events: the dashboard's live feed as server-sent events. The stream itself (snapshots, coalescing, the
 * slow-reader cut-off) is ../live-stream.ts; this route only caps how many are open and hands the socket over.
 */
import type { FastifyPluginAsync } from 'fastify';
import { CoordinatorError } from '../../errors.ts';
import { MAX_STREAMS } from '../live-stream.ts';
import type { ApiContext } from './context.ts';

export const eventRoutes: FastifyPluginAsync<Pick<ApiContext, 'streams'>> = async (app, { streams }) => {
  app.get('/api/events', async (_req, reply) => {
    if (streams.size >= MAX_STREAMS) throw new CoordinatorError('CRD_ERR_CONFLICT', `already ${MAX_STREAMS} live streams open; close a dashboard tab`);
    reply.hijack(); // the response is a stream fastify must not end or serialize
    streams.serve(reply.raw);
  });
};
