/**
 * Admin routes, registered under `/admin` by gatewayPlugin. They need no guard of their own: the gateway's access
 * hook (auth.ts, server.ts) lets only the admin key through to anything under /admin, and refuses everyone when no
 * admin key is configured. Add later admin routes here.
 *
 *   GET /admin/status   the served models and a summary of the gateway's safety settings (never the keys)
 */
import type { FastifyPluginAsync } from 'fastify';
import type { InferenceBackend } from './inference-backend.ts';
import type { RateLimit } from './rate-limit.ts';

export interface AdminStatus {
  models: Array<{ id: string; version: number | null; contextLength: number }>;
  config: {
    apiKeys: number; // how many API keys are accepted (0 = /v1 is open)
    maxBodyBytes: number;
    maxPromptTokens: number | null; // null = each model's context
    rateLimit: RateLimit | null; // per client; null = off
  };
  draining: boolean;
}

export interface AdminOptions {
  backends: ReadonlyMap<string, InferenceBackend>;
  status: () => Omit<AdminStatus, 'models'>;
}

export const adminPlugin: FastifyPluginAsync<AdminOptions> = async (app, { backends, status }) => {
  app.get('/status', async (): Promise<AdminStatus> => ({
    models: [...backends.values()].map((b) => ({ id: b.info.id, version: b.info.version ?? null, contextLength: b.info.contextLength })),
    ...status(),
  }));
};
