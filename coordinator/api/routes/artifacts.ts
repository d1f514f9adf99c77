/**
 * Content-addressed bytes (../../store/artifact-store.ts): dataset shards, checkpoints and model files, under their
 * sha256. Agents upload checkpoints and download shards here. The bytes are streamed to and from disk, never
 * buffered: server.ts registers the application/octet-stream parser that hands a PUT its body as a stream, so no
 * JSON body limit applies, only the disk's.
 *
 *   PUT  /api/artifacts/:sha256   store bytes under their sha256 (checked while they stream in) (201)
 *   GET  /api/artifacts/:sha256   fetch stored bytes
 *   HEAD /api/artifacts/:sha256   does it exist, and its size
 */
import type { Readable } from 'node:stream';
import type { FastifyPluginAsync } from 'fastify';
import { CoordinatorError } from '../../errors.ts';
import type { ApiContext } from './context.ts';

type Digest = { Params: { digest: string } };

export const artifactRoutes: FastifyPluginAsync<Pick<ApiContext, 'artifacts'>> = async (app, { artifacts }) => {
  app.put<Digest>('/api/artifacts/:digest', async (req, reply) => {
    const expected = req.params.digest;
    artifacts.pathOf(expected); // validates the digest's form before reading a byte
    if (req.headers['content-type'] !== 'application/octet-stream') {
      throw new CoordinatorError('CRD_ERR_BAD_REQUEST', 'send artifacts as Content-Type: application/octet-stream');
    }
    const { digest, bytes } = await artifacts.putStream(req.body as Readable, expected);
    return reply.code(201).send({ digest, bytes });
  });
  app.route<Digest>({
    method: ['GET', 'HEAD'],
    url: '/api/artifacts/:digest',
    handler: async (req, reply) => {
      const size = artifacts.sizeOf(req.params.digest);
      if (size === undefined) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no artifact ${req.params.digest}`);
      reply.header('content-length', size).type('application/octet-stream');
      if (req.method === 'HEAD') return reply.send();
      return reply.send(artifacts.createReadStream(req.params.digest));
    },
  });
};
