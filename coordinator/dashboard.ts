/** The web dashboard's static files (STUB: being written). */
import type { FastifyPluginAsync } from 'fastify';

export const dashboardRoutes: FastifyPluginAsync = async () => {};
