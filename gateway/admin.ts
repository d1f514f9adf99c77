/**
 * Admin routes, registered under `/admin` by gatewayPlugin. They need no guard of their own: the gateway's access
 * hook (auth.ts, server.ts) lets only the admin key through to anything under /admin, and refuses everyone when no
 * admin key is configured. Add later admin routes here.
 *
 *   GET  /admin/status                        the served models and a summary of the gateway's safety settings (never the keys)
 *   GET  /admin/deployments                   every deployment (deployments.ts)
 *   GET  /admin/deployments/:name             one, with the version a rollback would go back to
 *   PUT  /admin/deployments/:name             create or switch: {primary, arms?, shadows?, stickyHeader?, rollout?, reason}; 400 when invalid
 *   POST /admin/deployments/:name/promote     {version: "model@vN", reason}: a shadow or arm becomes the primary
 *   POST /admin/deployments/:name/rollback    {reason}: the previous primary back, arms dropped
 *   GET  /admin/deployments/:name/comparison  each shadow's comparison with the primary, its SPRT decision, the guard
 *   GET  /admin/deployments/:name/audit       every change: who, when, old → new, why
 */
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { parseDeployment } from './deployment-spec.ts';
import type { DeploymentManager } from './deployments.ts';
import { GatewayError } from './errors.ts';
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
  deployments: DeploymentManager;
  /** Who made a change: the admin key's short sha256 id (never the key). */
  who: (req: FastifyRequest) => string;
}

type Named = { Params: { name: string } };

export const adminPlugin: FastifyPluginAsync<AdminOptions> = async (app, { backends, status, deployments, who }) => {
  app.get('/status', async (): Promise<AdminStatus> => ({
    models: [...backends.values()].map((b) => ({ id: b.info.id, version: b.info.version ?? null, contextLength: b.info.contextLength })),
    ...status(),
  }));
  const found = (name: string) => {
    const d = deployments.get(name);
    if (!d) throw new GatewayError('GW_ERR_DEPLOYMENT_NOT_FOUND', `no deployment '${name}'; GET /admin/deployments lists them`);
    return d;
  };
  app.get('/deployments', async () => ({ deployments: deployments.list() }));
  app.get<Named>('/deployments/:name', async (req) => found(req.params.name));
  app.get<Named>('/deployments/:name/audit', async (req) => {
    found(req.params.name);
    return { audit: deployments.audit(req.params.name) };
  });
  app.put<Named>('/deployments/:name', async (req) => {
    const { deployment, reason } = parseDeployment(req.params.name, req.body, { requireReason: true });
    if (backends.has(deployment.name)) throw new GatewayError('GW_ERR_BAD_DEPLOYMENT', `'${deployment.name}' is a served model's name; a deployment needs a name of its own`);
    return { deployment: await deployments.put(deployment, who(req), reason) };
  });
  app.get<Named>('/deployments/:name/comparison', async (req) => {
    found(req.params.name);
    return deployments.comparison(req.params.name);
  });
  app.post<Named>('/deployments/:name/promote', async (req) => {
    const body = (req.body ?? {}) as { version?: unknown; reason?: unknown };
    const reason = reasonOf(body);
    if (typeof body.version !== 'string' || !/^[^@]+@v[1-9][0-9]*$/.test(body.version)) {
      throw new GatewayError('GW_ERR_BAD_DEPLOYMENT', `version is required as "model@vN" (one of the deployment's shadows or arms), got ${JSON.stringify(body.version)}`);
    }
    return { deployment: await deployments.promote(req.params.name, body.version, who(req), reason) };
  });
  app.post<Named>('/deployments/:name/rollback', async (req) => {
    return { deployment: await deployments.rollback(req.params.name, who(req), reasonOf(req.body)) };
  });
};

function reasonOf(body: unknown): string {
  const reason = (body as { reason?: unknown } | undefined)?.reason;
  if (typeof reason !== 'string' || reason.trim() === '') throw new GatewayError('GW_ERR_BAD_DEPLOYMENT', 'reason is required: {"reason": "why"} (it goes in the audit log)');
  return reason;
}
