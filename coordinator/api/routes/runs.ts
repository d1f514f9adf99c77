/**
 * Experiment tracking and sweeps over HTTP: every job is a run with its code version, dataset and metrics
 * (../../tracking/runs.ts), and a sweep submits trial jobs through the same door as POST /api/jobs
 * (../../tracking/sweeps.ts).
 *
 *   GET  /api/runs[?name=N|N*&state=S&kind=K]   every run (job), newest first: state, steps, final losses, tokens/s, model, code version
 *   GET  /api/runs/compare?ids=A,B[,…]          runs side by side: spec differences, summaries, losses by step on one axis
 *   GET  /api/runs/:id/export?format=json|csv   a run's spec, code version, artifacts and full metrics history, as a download
 *   POST /api/sweeps                            start a hyper-parameter sweep (protocol/sweep-spec.ts); 400 lists every problem (201)
 *   GET  /api/sweeps                            sweeps, newest first, with their trials and best trial
 *   GET  /api/sweeps/:id                        one sweep
 *   POST /api/sweeps/:id/cancel                 cancel a sweep and its unfinished trials
 *
 * Query strings are checked by ../schemas.ts (a repeated key or an unknown state is a 400, not a crash); a sweep
 * spec by its own parser, whose details name each field.
 */
import type { FastifyPluginAsync } from 'fastify';
import { CoordinatorError } from '../../errors.ts';
import type { JobRecord } from '../../store/job-store.ts';
import { compareRuns, digestMetrics, metricsCsv, runSummary, type RunExport } from '../../tracking/runs.ts';
import { CompareQuery, ExportQuery, RunsQuery } from '../schemas.ts';
import type { ApiContext } from './context.ts';

/** Most runs one comparison draws: more curves than this on one chart are unreadable anyway. */
export const MAX_COMPARED = 10;

export const runsRoutes: FastifyPluginAsync<Pick<ApiContext, 'jobs' | 'runs' | 'registry' | 'sweeps'>> = async (app, { jobs, runs, registry, sweeps }) => {
  const jobOf = (id: string): JobRecord => {
    const job = jobs.get(id);
    if (!job) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no run ${id.slice(0, 100)}`);
    return job;
  };

  app.get<{ Querystring: RunsQuery }>('/api/runs', { schema: { querystring: RunsQuery } }, async (req) => {
    const { name, state, kind } = req.query;
    const byName = name === undefined ? () => true : name.endsWith('*') ? (n: string) => n.startsWith(name.slice(0, -1)) : (n: string) => n === name;
    const tracked = runs.all();
    const list = jobs.list()
      .filter((j) => byName(j.name) && (state === undefined || j.state === state))
      .map((j) => runSummary(j, digestMetrics(jobs.metrics(j.id)), tracked.get(j.id)))
      .filter((r) => kind === undefined || r.kind === kind);
    return { runs: list };
  });

  app.get<{ Querystring: CompareQuery }>('/api/runs/compare', { schema: { querystring: CompareQuery } }, async (req) => {
    const ids = [...new Set(req.query.ids.split(',').map((s) => s.trim()).filter(Boolean))];
    if (ids.length < 2 || ids.length > MAX_COMPARED) {
      throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `compare takes 2 to ${MAX_COMPARED} different run ids: ?ids=job-a,job-b`, { details: ['/ids'] });
    }
    const missing = ids.filter((id) => !jobs.get(id));
    if (missing.length) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no run ${missing.map((m) => m.slice(0, 100)).join(', ')}`, { details: missing.map((m) => `/ids ${m.slice(0, 100)}`) });
    return compareRuns(ids.map((id) => ({ job: jobs.get(id)!, metrics: jobs.metrics(id), run: runs.get(id) })));
  });

  app.get<{ Params: { id: string }; Querystring: ExportQuery }>('/api/runs/:id/export', { schema: { querystring: ExportQuery } }, async (req, reply) => {
    const format = req.query.format ?? 'json';
    const job = jobOf(req.params.id);
    const metrics = jobs.metrics(job.id);
    reply.header('content-disposition', `attachment; filename="${job.id}.${format}"`);
    if (format === 'csv') return reply.type('text/csv; charset=utf-8').send(metricsCsv(metrics));
    const run = runs.get(job.id);
    const model = job.modelVersion === null ? null : registry.get(job.name, job.modelVersion);
    const out: RunExport = {
      format: 'meshtrain-run/1',
      run: runSummary(job, digestMetrics(metrics), run),
      spec: job.spec,
      codeVersion: run?.codeVersion ?? null,
      artifacts: {
        dataset: run?.data ?? null,
        checkpoints: jobs.checkpoints(job.id),
        model: model ? { name: model.name, version: model.version, files: model.files } : null,
      },
      metrics,
    };
    return reply.type('application/json; charset=utf-8').send(out);
  });

  app.post('/api/sweeps', async (req, reply) => reply.code(201).send(sweeps.create(req.body)));
  app.get('/api/sweeps', async () => ({ sweeps: sweeps.list() }));
  app.get<{ Params: { id: string } }>('/api/sweeps/:id', async (req) => {
    const view = sweeps.view(req.params.id);
    if (!view) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no sweep ${req.params.id.slice(0, 100)}`);
    return view;
  });
  app.post<{ Params: { id: string } }>('/api/sweeps/:id/cancel', async (req) => sweeps.cancel(req.params.id));
};
