/**
 * Experiment tracking and sweeps over HTTP, a fastify plugin registered by server.ts (behind its token check and
 * error handler):
 *   GET  /api/runs[?name=N|N*&state=S&kind=K]   every run (job), newest first: state, steps, final losses, tokens/s, model, code version
 *   GET  /api/runs/compare?ids=A,B[,…]          runs side by side: spec differences, summaries, losses by step on one axis
 *   GET  /api/runs/:id/export?format=json|csv   a run's spec, code version, artifacts and full metrics history, as a download
 *   POST /api/sweeps                            start a hyper-parameter sweep (protocol/sweep-spec.ts); 400 lists every problem
 *   GET  /api/sweeps                            sweeps, newest first, with their trials and best trial
 *   GET  /api/sweeps/:id                        one sweep
 *   POST /api/sweeps/:id/cancel                 cancel a sweep and its unfinished trials
 */
import type { FastifyPluginAsync } from 'fastify';
import { CoordinatorError } from '../errors.ts';
import { JOB_STATES, type JobRecord, type JobStore } from '../store/job-store.ts';
import type { ModelRegistry } from '../registry/registry.ts';
import type { RunStore } from '../store/run-store.ts';
import { compareRuns, digestMetrics, metricsCsv, runSummary, type RunExport } from '../tracking/runs.ts';
import type { SweepRunner } from '../tracking/sweeps.ts';

/** Most runs one comparison draws: more curves than this on one chart are unreadable anyway. */
export const MAX_COMPARED = 10;

export interface RunsApiOptions {
  jobs: JobStore;
  runs: RunStore;
  registry: ModelRegistry;
  sweeps: SweepRunner;
}

export function runsApi(o: RunsApiOptions): FastifyPluginAsync {
  const { jobs, runs, registry, sweeps } = o;
  const jobOf = (id: string): JobRecord => {
    const job = jobs.get(id);
    if (!job) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no run ${id.slice(0, 100)}`);
    return job;
  };

  return async (app) => {
    app.get<{ Querystring: { name?: string; state?: string; kind?: string } }>('/api/runs', async (req) => {
      const { name, state, kind } = req.query;
      if (state !== undefined && !(JOB_STATES as readonly string[]).includes(state)) {
        throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `state '${state.slice(0, 40)}' is not one of ${JOB_STATES.join(', ')}`, { details: ['/state'] });
      }
      const byName = name === undefined ? () => true : name.endsWith('*') ? (n: string) => n.startsWith(name.slice(0, -1)) : (n: string) => n === name;
      const tracked = runs.all();
      const list = jobs.list()
        .filter((j) => byName(j.name) && (state === undefined || j.state === state))
        .map((j) => runSummary(j, digestMetrics(jobs.metrics(j.id)), tracked.get(j.id)))
        .filter((r) => kind === undefined || r.kind === kind);
      return { runs: list };
    });

    app.get<{ Querystring: { ids?: string } }>('/api/runs/compare', async (req) => {
      const ids = [...new Set((req.query.ids ?? '').split(',').map((s) => s.trim()).filter(Boolean))];
      if (ids.length < 2 || ids.length > MAX_COMPARED) {
        throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `compare takes 2 to ${MAX_COMPARED} different run ids: ?ids=job-a,job-b`, { details: ['/ids'] });
      }
      const missing = ids.filter((id) => !jobs.get(id));
      if (missing.length) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no run ${missing.map((m) => m.slice(0, 100)).join(', ')}`, { details: missing.map((m) => `/ids ${m.slice(0, 100)}`) });
      return compareRuns(ids.map((id) => ({ job: jobs.get(id)!, metrics: jobs.metrics(id), run: runs.get(id) })));
    });

    app.get<{ Params: { id: string }; Querystring: { format?: string } }>('/api/runs/:id/export', async (req, reply) => {
      const format = req.query.format ?? 'json';
      if (format !== 'json' && format !== 'csv') {
        throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `format '${format.slice(0, 20)}' is not json or csv`, { details: ['/format'] });
      }
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
}
