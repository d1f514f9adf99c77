/**
 * Training jobs: submission, the list, one job's record and metrics, its live view and plan, a re-plan, a cancel.
 * `jobSubmitter` is the one door a job comes in by, for POST /api/jobs and for each sweep trial
 * (../../tracking/sweeps.ts), so both are validated, pinned and recorded the same way.
 *
 *   POST /api/jobs               submit a training job (protocol/job-spec.ts); 400 names every bad field (201)
 *   GET  /api/jobs               jobs, newest first
 *   GET  /api/jobs/:id[?after=S] one job with its metrics history (rows past step S) and checkpoints
 *   GET  /api/jobs/:id/live      the job as it runs: layout and who holds what, per-rank step breakdown, links, straggler
 *   GET  /api/jobs/:id/plan      the layout the planner chose, the candidates it weighed, predicted vs measured step time
 *   POST /api/jobs/:id/replan    {parallel}: change the layout; a running job resumes from its last checkpoint under it
 *   POST /api/jobs/:id/cancel    cancel a job that has not finished
 *
 * The job spec is validated by validateJobSpec (its TypeBox schema plus the rules between fields), not by a route
 * schema: its messages name each field the way the CLI and dashboard show them.
 */
import type { FastifyPluginAsync } from 'fastify';
import type { Logger } from '../../../common/log.ts';
import { validateJobSpec } from '../../../protocol/job-spec.ts';
import { CoordinatorError } from '../../errors.ts';
import type { EventBus } from '../../events.ts';
import { planReport } from '../../jobs/plan-report.ts';
import type { JobRunner } from '../../jobs/runner.ts';
import { pinVersionRefs } from '../../jobs/stage-inputs.ts';
import type { ModelRegistry } from '../../registry/registry.ts';
import { FINAL_STATES, type JobRecord, type JobStore } from '../../store/job-store.ts';
import type { RunStore } from '../../store/run-store.ts';
import { JobQuery, ReplanBody } from '../schemas.ts';
import type { ApiContext } from './context.ts';

export interface JobSubmitterOptions {
  jobs: JobStore;
  runs: RunStore;
  registry: ModelRegistry;
  runner: JobRunner;
  bus: EventBus;
  log: Logger;
  /** What this process runs (../../code-version.ts), recorded with every job. */
  codeVersion: string;
}

/** Validates a raw job spec, stores the job with its registry references pinned, and wakes the runner. */
export function jobSubmitter(o: JobSubmitterOptions): (raw: unknown) => JobRecord {
  return (raw) => {
    const res = validateJobSpec(raw);
    if (!res.ok) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `invalid job spec: ${res.errors.join('; ')}`, { details: res.errors });
    const job = o.jobs.create(pinVersionRefs(res.spec, o.registry), Date.now()); // "chat" → "chat@4": what it trains from never moves
    o.runs.create(job.id, o.codeVersion);
    o.log.info(`job ${job.id} (${job.name}) submitted`);
    o.bus.emit('job', { jobId: job.id, state: job.state });
    queueMicrotask(() => void o.runner.tick()); // after the caller's transaction (a sweep records its trial with the job)
    return job;
  };
}

type Id = { Params: { id: string } };

export const jobRoutes: FastifyPluginAsync<Pick<ApiContext, 'jobs' | 'runner' | 'submitJob' | 'jobSummaries'>> = async (app, { jobs, runner, submitJob, jobSummaries }) => {
  const jobOf = (id: string): JobRecord => {
    const job = jobs.get(id);
    if (!job) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no job ${id}`);
    return job;
  };

  app.post('/api/jobs', async (req, reply) => reply.code(201).send(submitJob(req.body)));
  app.get('/api/jobs', async () => ({ jobs: jobSummaries() }));
  app.get<Id>('/api/jobs/:id/live', async (req) => {
    const live = runner.live(req.params.id);
    if (!live) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no job ${req.params.id}`);
    return live;
  });
  app.get<Id>('/api/jobs/:id/plan', async (req) => {
    const job = jobOf(req.params.id);
    return planReport(job, jobs.metrics(job.id));
  });
  app.get<Id & { Querystring: JobQuery }>('/api/jobs/:id', { schema: { querystring: JobQuery } }, async (req) => {
    const job = jobOf(req.params.id);
    const { plan: _plan, ...rest } = job; // the plan has its own endpoint (it lists every candidate)
    // the schema lets only an integer of up to 15 digits through
    return { job: rest, metrics: jobs.metrics(job.id, Number(req.query.after ?? -1)), checkpoints: jobs.checkpoints(job.id) };
  });
  app.post<Id & { Body: ReplanBody }>('/api/jobs/:id/replan', { schema: { body: ReplanBody } }, async (req) => {
    const { plan: _plan, ...job } = runner.replan(req.params.id, req.body.parallel); // checks the layout against the job's model
    return job;
  });
  app.post<Id>('/api/jobs/:id/cancel', async (req) => {
    const job = jobOf(req.params.id);
    if (FINAL_STATES.has(job.state)) throw new CoordinatorError('CRD_ERR_CONFLICT', `job ${job.id} already ${job.state}`);
    runner.cancel(job.id, 'cancelled by request');
    return jobs.get(job.id);
  });
};
