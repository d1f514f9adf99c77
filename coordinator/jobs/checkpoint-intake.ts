/**
 * Checkpoints arriving from a running attempt. Data-parallel rank 0 of each stage shard sends its shard checkpoint;
 * when every shard of a step is in they are merged (checkpoint-shards.ts, in a worker) into the canonical
 * checkpoint the job records. A recorded checkpoint is the moment two other things happen: retention (the newest
 * `training.keepCheckpoints` stay, older ones and the consumed shard files go) and the elastic decision
 * (elastic.ts decideReshape: grow onto free agents, move work off a straggler, or keep going), since a restart
 * from the checkpoint just written costs nothing.
 */
import type { AgentMessage } from '../../protocol/control.ts';
import { FINAL_STATES, type JobRecord } from '../store/job-store.ts';
import type { Attempt, RunnerContext } from './attempt.ts';
import { checkpointKind, type FileSet } from './checkpoint-shards.ts';
import { decideReshape } from './elastic.ts';
import type { PlannerFeedback } from './planner-feedback.ts';

/**
 * Takes one shard checkpoint. Returns false while shards of its step are missing; true once all are in and the
 * merge of the step is under way (in `attempt.merged`; one merge at a time per attempt, in step order).
 */
export function takeShardCheckpoint(ctx: RunnerContext, feedback: PlannerFeedback, attempt: Attempt, msg: Extract<AgentMessage, { type: 'job.checkpoint' }>): boolean {
  const { layout } = attempt;
  const key = `${msg.shard?.stage ?? 0}.${msg.shard?.tp ?? 0}`;
  const got = attempt.shards.get(msg.step) ?? new Map<string, FileSet>();
  attempt.shards.set(msg.step, got.set(key, msg.files));
  const needed = layout.pipeline * layout.tensor;
  if (got.size < needed) return false;
  attempt.shards.delete(msg.step);
  const job = ctx.jobs.get(attempt.jobId)!;
  const previous = [...attempt.merged.values()].at(-1) ?? Promise.resolve({});
  const merged = previous.catch(() => ({})).then(async () => {
    const t0 = ctx.now();
    const files = needed === 1 ? msg.files : await ctx.sharder.mergeShards(checkpointKind(job.spec), [...got.values()], { layout: { ...layout } });
    const checkpoint = { step: msg.step, attempt: msg.attempt, files, createdMs: ctx.now() };
    ctx.jobs.putCheckpoint(msg.jobId, checkpoint);
    const bytes = Object.values(files).reduce((sum, digest) => sum + (ctx.artifacts.sizeOf(digest) ?? 0), 0);
    ctx.bus.emit('checkpoint', { jobId: msg.jobId, checkpoint, bytes, mergeMs: ctx.now() - t0, shards: needed });
    ctx.log.info(`job ${msg.jobId}: checkpoint at step ${msg.step}${needed > 1 ? ` (${needed} shards merged in ${ctx.now() - t0} ms)` : ''}`);
    // The shard files were only the way in: a merged checkpoint does not use them (one shard: it is them).
    await pruneCheckpoints(ctx, job, needed > 1 ? [...got.values()].flatMap((f) => Object.values(f)) : []);
    considerReshape(ctx, feedback, attempt, msg.step);
    return files;
  });
  merged.catch((err: Error) => ctx.log.warn(`job ${msg.jobId}: could not merge the checkpoint of step ${msg.step}: ${err.message}`));
  attempt.merged.set(msg.step, merged);
  return true;
}

/**
 * Retention: the newest `training.keepCheckpoints` checkpoints of the job stay (0: all), older ones are dropped
 * from the record and their files from the store, unless something still recorded (or a running attempt's
 * dataset) uses them. `extra` are more digests to drop on the same terms (shard files a merge has consumed).
 */
export async function pruneCheckpoints(ctx: RunnerContext, job: JobRecord, extra: string[]): Promise<void> {
  const { jobs, artifacts, log } = ctx;
  const keep = job.spec.training.keepCheckpoints;
  const old = keep > 0 ? jobs.checkpoints(job.id).slice(keep) : [];
  for (const cp of old) jobs.deleteCheckpoint(job.id, cp.step);
  const candidates = new Set([...old.flatMap((cp) => Object.values(cp.files)), ...extra]);
  if (candidates.size === 0) return;
  const used = jobs.checkpointDigests();
  for (const a of ctx.running()) for (const d of Object.values(a.data ?? {})) used.add(d);
  let removed = 0;
  for (const digest of candidates) {
    if (used.has(digest)) continue;
    await artifacts.delete(digest).then(() => removed++, (err: Error) => log.warn(`could not delete artifact ${digest}: ${err.message}`));
  }
  if (old.length) log.info(`job ${job.id}: pruned ${old.length} old checkpoint${old.length === 1 ? '' : 's'} (steps ${old.map((c) => c.step).join(', ')}; keepCheckpoints ${keep}), ${removed} files removed`);
}

/**
 * A checkpoint of a running attempt landed: grow onto free agents, move work off a straggler, or re-plan, as
 * decideReshape says; anything but 'keep' stops the attempt and queues the job to resume from this checkpoint.
 */
function considerReshape(ctx: RunnerContext, feedback: PlannerFeedback, attempt: Attempt, step: number): void {
  if (attempt.stopping || !ctx.isCurrent(attempt)) return;
  const job = ctx.jobs.get(attempt.jobId);
  if (!job || FINAL_STATES.has(job.state)) return;
  feedback.noteSlowdowns(attempt);
  const nodes = new Map(ctx.hub.availableNodes().map((n) => [n.id, n]));
  if (!attempt.nodeIds.every((id) => nodes.has(id))) return; // a member is going down: that path re-plans
  const busy = new Set([...ctx.running()].flatMap((a) => a.nodeIds));
  const decision = decideReshape({
    spec: job.spec,
    layout: attempt.layout,
    stages: attempt.stages,
    members: attempt.nodeIds.map((id) => feedback.plannerAgent(nodes.get(id)!)),
    free: feedback.freeAgents(busy),
    straggler: attempt.telemetry?.straggler()?.nodeId ?? null,
    step,
    steps: job.spec.training.steps,
    calibration: feedback.calibration,
  });
  if (decision.action === 'keep') return;
  const reason = `${decision.reason}; resuming from the checkpoint of step ${step}`;
  ctx.log.info(`job ${job.id}: ${reason}`);
  ctx.requeue(attempt, reason);
}
