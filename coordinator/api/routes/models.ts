/**
 * The model registry over HTTP (../../registry/): versions with their files and lineage, and the three ways a
 * version is made from outside a training job: an INT8 variant, an import of uploaded Hugging Face GPT-2 files, and
 * a LoRA adapter folded into its base. A version is named by number (`3` or `v3`) or `latest`.
 *
 *   GET  /api/models                                   registered models with their version counts
 *   GET  /api/models/:name/versions                    every version: files with sha256, lineage (job, spec, metrics)
 *   GET  /api/models/:name/versions/:v                 one version
 *   GET  /api/models/:name/versions/:v/lineage         the version and its parents back to the first: job, data digests, code version, metrics
 *   GET  /api/models/:name/versions/:v/files/:file     a file of a version, checked against its sha256
 *   POST /api/models/:name/versions/:v/quantize        {scheme?: "int8"}: register its INT8 variant as a new version (201)
 *   POST /api/models/:name/versions/:v/merge           fold a LoRA adapter version into its base: a new full version (201)
 *   POST /api/models/:name/import                      {files: {name: sha256}, source?}: register uploaded files as a new version (201)
 *
 * The quantize and import bodies are checked by their own parsers (../../registry/quantize.ts, import.ts), which
 * name each bad field in the words the CLI shows; merge takes no body.
 */
import type { FastifyPluginAsync } from 'fastify';
import { CoordinatorError } from '../../errors.ts';
import { mergeAdapter } from '../../registry/adapters.ts';
import { importVersion, parseImportBody } from '../../registry/import.ts';
import { parseQuantizeBody, quantizeVersion } from '../../registry/quantize.ts';
import type { ModelRegistry } from '../../registry/registry.ts';
import { lineageChain } from '../../tracking/lineage.ts';
import type { ApiContext } from './context.ts';

type Name = { Params: { name: string } };
type Version = { Params: { name: string; v: string } };

/** `latest`, `3` or `v3` → a version number; 404 for `latest` of an unknown model, 400 for anything else. */
function versionOf(registry: ModelRegistry, name: string, v: string): number {
  if (v === 'latest') {
    const latest = registry.models().find((m) => m.name === name)?.latest;
    if (latest === undefined) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no model ${name}`);
    return latest;
  }
  const n = Number(v.replace(/^v/, ''));
  if (!Number.isInteger(n) || n < 1) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `version '${v.slice(0, 20)}' is not a positive integer or 'latest'`);
  return n;
}

export const modelRoutes: FastifyPluginAsync<Pick<ApiContext, 'registry' | 'artifacts' | 'bus' | 'log'>> = async (app, { registry, artifacts, bus, log }) => {
  const versionIn = (req: { params: Version['Params'] }) => versionOf(registry, req.params.name, req.params.v);

  app.get('/api/models', async () => ({ models: registry.models() }));
  app.get<Name>('/api/models/:name/versions', async (req) => {
    const versions = registry.versions(req.params.name);
    if (versions.length === 0) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no model ${req.params.name}`);
    return { name: req.params.name, versions };
  });
  app.get<Version>('/api/models/:name/versions/:v', async (req) => registry.get(req.params.name, versionIn(req)));
  app.get<Version>('/api/models/:name/versions/:v/lineage', async (req) => {
    const version = versionIn(req);
    return { name: req.params.name, version, ...lineageChain(registry, req.params.name, version) };
  });
  app.get<{ Params: Version['Params'] & { file: string } }>('/api/models/:name/versions/:v/files/:file', async (req, reply) => {
    const bytes = registry.readFile(req.params.name, versionIn(req), req.params.file);
    return reply.type(req.params.file.endsWith('.json') ? 'application/json' : 'application/octet-stream').send(bytes);
  });
  app.post<Version>('/api/models/:name/versions/:v/quantize', async (req, reply) => {
    const { scheme } = parseQuantizeBody(req.body);
    const created = await quantizeVersion(registry, req.params.name, versionIn(req), scheme);
    log.info(`model ${created.name} v${created.version}: ${scheme} variant of v${created.lineage.parent?.version}`);
    return reply.code(201).send(created);
  });
  app.post<Name>('/api/models/:name/import', async (req, reply) => {
    const created = await importVersion(registry, artifacts, req.params.name, parseImportBody(req.body));
    const imported = created.lineage.imported as { source?: string };
    log.info(`model ${created.name} v${created.version}: imported${imported.source ? ` from ${imported.source}` : ''}`);
    bus.emit('model', { name: created.name, version: created.version });
    return reply.code(201).send(created);
  });
  app.post<Version>('/api/models/:name/versions/:v/merge', async (req, reply) => {
    const created = await mergeAdapter(registry, req.params.name, versionIn(req));
    log.info(`model ${created.name} v${created.version}: adapter v${created.lineage.parent?.version} merged into its base`);
    return reply.code(201).send(created);
  });
};
