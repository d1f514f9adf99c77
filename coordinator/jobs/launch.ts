/**
 * Launching an attempt: everything between the scheduler's "start" and the agents training. It prepares the dataset
 * (datasets.ts), forms a ring of the chosen agents (coordinator/cluster/groups.ts), gathers the inputs a stage
 * starts from (a version's weights, a frozen reference or teacher, a LoRA base: stage-inputs.ts), picks the newest
 * intact checkpoint and reshards it for the attempt's layout, and sends each agent its `job.start` with its rank,
 * the dataset's files, the plan and the files to resume from. Any step may fail; the runner decides what a failure
 * means for the job (isFatalStartError).
 */
import { jobRings, layoutName, type ParallelLayout } from '../../protocol/layout.ts';
import { isFatal } from '../../protocol/define-errors.ts';
import type { JobStart } from '../../protocol/control.ts';
import { allShards } from '../../model/shard-layout.ts';
import type { CheckpointRecord, JobRecord } from '../store/job-store.ts';
import type { Attempt, RunnerContext } from './attempt.ts';
import { checkpointKind, type FileSet } from './checkpoint-shards.ts';
import { prepareDataset } from './datasets.ts';
import type { Candidate } from './planner.ts';
import { initCheckpoint, refOf, startsFromVersion, tokenizerSource, versionFiles, versionTokenizer } from './stage-inputs.ts';
import { AttemptTelemetry } from './telemetry.ts';

/**
 * Carries `attempt` (already the job's running attempt) to the point where every rank has its job.start. Returns
 * early, having started nothing more, when the attempt is stopped meanwhile; throws when a step fails.
 */
export async function launchAttempt(ctx: RunnerContext, attempt: Attempt, job: JobRecord, chosen: Candidate): Promise<void> {
  const { jobs, groups, registry, artifacts, log } = ctx;
  const { nodeIds, layout, attempt: attemptNo } = attempt;
  const source = tokenizerSource(job.spec);
  const data = await prepareDataset(job.spec, ctx.dataDir, artifacts, log.child(job.id), source ? versionTokenizer(registry, source) : undefined);
  attempt.data = data;
  ctx.runs?.setData(job.id, { corpus: job.spec.data.corpus, files: data });
  if (attempt.stopping) return;
  ctx.setState(job.id, 'running', `attempt ${attemptNo}: linking ${nodeIds.length} agents`);
  const group = await groups.form({ nodeIds, segmentBytes: ctx.segmentBytes, rings: jobRings(layout) });
  attempt.groupId = group.id;
  if (attempt.stopping) return groups.release(group.id);
  const nodeOfRank = [...group.members].sort((a, b) => a.rank - b.rank).map((m) => m.nodeId);
  const names = new Map(ctx.hub.views().map((n) => [n.id, n.name])); // a node keeps its name while it holds its id
  attempt.telemetry = new AttemptTelemetry(layout, chosen.stages, nodeOfRank, (id) => names.get(id) ?? id);
  if (startsFromVersion(job.spec) && jobs.checkpoints(job.id).length === 0) {
    // Starting from a version is resuming from its weights at step 0 (stage-inputs.ts).
    jobs.putCheckpoint(job.id, { step: 0, attempt: attemptNo, files: await initCheckpoint(registry, artifacts, job.spec, job.id), createdMs: ctx.now() });
  }
  const frozenRef = job.spec.kind === 'dpo' ? refOf(job.spec.init!.from) : job.spec.kind === 'distill' ? refOf(job.spec.distill!.teacher) : null;
  const frozen = frozenRef ? { role: job.spec.kind === 'dpo' ? 'reference' as const : 'teacher' as const, files: await versionFiles(registry, artifacts, frozenRef) } : null;
  const base = job.spec.lora ? { files: await versionFiles(registry, artifacts, refOf(job.spec.init!.from)) } : null;
  const checkpoint = await lastGoodCheckpoint(ctx, job.id);
  const resume = checkpoint ? await resumeFiles(ctx, job, checkpoint.step, checkpoint.files, layout, chosen.stages) : null;
  if (attempt.stopping) return;
  // What attempts before this one recorded past the checkpoint is about to be recomputed: each step once.
  jobs.rewindTo(job.id, checkpoint?.step ?? 0, ctx.now());
  attempt.lastActivityMs = ctx.now();
  const plan: NonNullable<JobStart['plan']> = { layout, stages: chosen.stages, microBatches: chosen.microBatches, zero: job.spec.training.zero };
  for (const m of group.members) {
    const stage = Math.floor(m.rank / layout.tensor) % layout.pipeline, tp = m.rank % layout.tensor;
    ctx.hub.send(m.nodeId, {
      type: 'job.start',
      jobId: job.id,
      attempt: attemptNo,
      groupId: group.id,
      rank: m.rank,
      world: group.size,
      spec: job.spec,
      data,
      plan,
      ...(frozen ? { frozen } : {}),
      ...(base ? { base } : {}),
      ...(attempt.span.traceparent ? { trace: attempt.span.traceparent } : {}),
      ...(resume ? { resume: { step: checkpoint!.step, files: resume.get(`${stage}.${tp}`)! } } : {}),
    });
  }
  const from = checkpoint ? `resuming from step ${checkpoint.step}` : 'from scratch';
  ctx.setState(job.id, 'running', `attempt ${attemptNo}: ${layoutName(layout)} (data × pipeline × tensor) on ${group.size} agent${group.size === 1 ? '' : 's'}, ${from}`);
  log.info(`job ${job.id} attempt ${attemptNo} started as ${layoutName(layout)} on ${group.members.map((m) => m.nodeId).join(', ')} (${from})`);
  ctx.bus.emit('attempt', { jobId: job.id, attempt: attemptNo, phase: 'started', nodeIds });
  for (const nodeId of nodeIds) ctx.bus.emit('node', { nodeId });
}

/** A dataset that cannot be prepared (an error its table declares fatal, a corpus that is not there) will not fix itself; agents that failed to link may. */
export function isFatalStartError(err: unknown): boolean {
  return isFatal(err) || (err as NodeJS.ErrnoException).code === 'ENOENT';
}

/**
 * Each shard's resume files ("stage.tp" → files) for `layout`, cut from the canonical checkpoint. With one stage
 * and one tensor shard the canonical checkpoint is the shard checkpoint, so it goes as it is.
 */
async function resumeFiles(ctx: RunnerContext, job: JobRecord, step: number, files: FileSet, layout: ParallelLayout, stages: Array<[number, number]>): Promise<Map<string, FileSet>> {
  if (layout.pipeline === 1 && layout.tensor === 1) return new Map([['0.0', files]]);
  const t0 = ctx.now();
  const shards = allShards(stages, layout.tensor);
  const cut = await ctx.sharder.reshard(checkpointKind(job.spec), files, shards);
  const out = new Map(shards.map((shard, i) => [`${shard.stage}.${shard.tpRank}`, cut[i]!]));
  ctx.log.info(`job ${job.id}: checkpoint of step ${step} resharded for ${layoutName(layout)} (${out.size} shards, ${ctx.now() - t0} ms)`);
  return out;
}

/**
 * The newest checkpoint whose every file is intact in the artifact store (each read back and hashed); one that
 * fails is skipped, with the reason logged, in favour of the one before it.
 */
async function lastGoodCheckpoint(ctx: RunnerContext, jobId: string): Promise<CheckpointRecord | undefined> {
  for (const cp of ctx.jobs.checkpoints(jobId)) {
    try {
      for (const digest of Object.values(cp.files)) await ctx.artifacts.verify(digest); // streamed: no whole-file buffer
      return cp;
    } catch (err) {
      ctx.log.warn(`job ${jobId}: checkpoint of step ${cp.step} is unusable (${(err as Error).message}); trying the one before`);
    }
  }
  return undefined;
}
