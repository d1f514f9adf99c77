/**
 * How a job's training ends well: held-out evaluation and the version it produces. A held-out loss may stop the job
 * early (eval-criteria.ts decideEarlyStop); a merged checkpoint at a multiple of `eval.every` runs the stage's
 * evaluation suite (evaluator.ts) off the training path; and when every rank has finished (or early stopping
 * chose a step) the model is built from that step's merged canonical checkpoint, judged by the suite and the spec's
 * pass criteria, and registered as a new version of the job's model with its lineage (a LoRA job: its adapter
 * alone, on its frozen base). Checkpoint retention happens as checkpoints land (checkpoint-intake.ts).
 */
import { flatFromStateDict, paramLayout } from '../../model/params.ts';
import type { LoraSpec } from '../../model/lora.ts';
import { exportHf } from '../../model/hf-format.ts';
import { Tokenizer } from '../../model/tokenizer.ts';
import { registerAdapter } from '../registry/adapters.ts';
import type { VersionFile } from '../registry/registry.ts';
import type { JobRecord } from '../store/job-store.ts';
import { jobLineage, parentOf } from '../tracking/lineage.ts';
import type { Attempt, RunnerContext } from './attempt.ts';
import { hfFilesAround } from './checkpoint-shards.ts';
import { decideEarlyStop, passCheck } from './eval-criteria.ts';
import { evaluateStage, hasSuite } from './evaluator.ts';
import { checkpointLayouts, refOf, trainedWeights } from './stage-inputs.ts';

/** A held-out loss arrived: with eval.earlyStopping, end the job at this step when the loss stopped improving (decideEarlyStop). */
export function considerEarlyStop(ctx: RunnerContext, attempt: Attempt, step: number): void {
  const job = ctx.jobs.get(attempt.jobId)!;
  const rule = job.spec.eval?.earlyStopping;
  if (!rule || attempt.earlyStopAt !== undefined || attempt.stopping || step >= job.spec.training.steps) return;
  if (!decideEarlyStop(evalLosses(ctx, job.id, step).map(([, loss]) => loss), rule)) return;
  // The job spec makes evalEvery a multiple of checkpointEvery, so this step's checkpoint is on its way (it is
  // sent after the progress report). No reshape, stall check or rank report may end the attempt meanwhile.
  attempt.earlyStopAt = step;
  attempt.stopping = true;
  ctx.log.info(`job ${job.id}: held-out loss has not improved by more than ${rule.minDelta ?? 0} in ${rule.patience} evaluations; stopping early at step ${step}`);
  if (attempt.merged.has(step)) stopEarly(ctx, attempt, step);
}

/** Stops the agents and registers the model from the checkpoint of the early-stopping step (once it is merged). */
export function stopEarly(ctx: RunnerContext, attempt: Attempt, step: number): void {
  const reason = `stopped early at step ${step}: no held-out improvement`;
  attempt.merged.get(step)!.then(
    () => {
      for (const nodeId of attempt.nodeIds) if (ctx.hub.isConnected(nodeId)) ctx.hub.send(nodeId, { type: 'job.stop', jobId: attempt.jobId, reason });
      return complete(ctx, attempt, step);
    },
    (err: Error) => ctx.attemptFailed(attempt, `early stopping at step ${step}: its checkpoint could not be merged (${err.message})`),
  );
}

/** eval.every: the suite on a merged checkpoint at a multiple of it, off the training path; skipped while one runs. */
export function periodicEval(ctx: RunnerContext, attempt: Attempt, job: JobRecord, step: number): void {
  const every = job.spec.eval?.every ?? 0;
  if (!(every > 0) || step % every !== 0 || step >= job.spec.training.steps || !hasSuite(job.spec) || attempt.evaluating || !attempt.data) return;
  attempt.evaluating = true;
  void attempt.merged.get(step)!
    .then(async () => {
      const suite = await evaluateStage({ spec: job.spec, data: attempt.data!, model: filesForWorker((await trained(ctx, attempt, job, step)).files), artifacts: ctx.artifacts, registry: ctx.registry, backend: ctx.backend ?? 'cpu' });
      if (suite) recordSuite(ctx, job.id, step, suite.values);
    })
    .catch((err: Error) => ctx.log.warn(`job ${job.id}: evaluation at step ${step} failed: ${err.message}`))
    .finally(() => (attempt.evaluating = false));
}

/**
 * Registers the model from the checkpoint of `step` (the final one, or the early-stopping one), after the stage's
 * evaluation suite: its numbers are recorded and go into the lineage, and a spec's unmet pass criterion fails
 * the job instead, with nothing registered.
 */
export async function complete(ctx: RunnerContext, attempt: Attempt, step = ctx.jobs.get(attempt.jobId)!.spec.training.steps): Promise<void> {
  const { jobs, registry, log } = ctx;
  const job = jobs.get(attempt.jobId)!;
  attempt.stopping = true; // training is over: no stall check or reshape may end the attempt while the suite runs
  try {
    const { files: bytes, adapter } = await trained(ctx, attempt, job, step);
    const metrics: Record<string, number> = { steps: step };
    if (attempt.lastProgress) metrics.loss = attempt.lastProgress.loss;
    const evalLoss = evalLosses(ctx, job.id, step).at(-1)?.[1] ?? attempt.lastEvalLoss;
    if (evalLoss !== null) {
      metrics.evalLoss = evalLoss;
      metrics.evalPerplexity = Math.exp(evalLoss);
    }
    if (attempt.earlyStopAt !== undefined) {
      metrics.earlyStopped = step;
      const trainedLoss = jobs.metrics(job.id, step - 1).find((r) => r.step === step && r.kind === 'train')?.values.loss;
      if (trainedLoss !== undefined) metrics.loss = trainedLoss; // training went on a little past the step the model is from
    }
    const suite = attempt.data && hasSuite(job.spec) ? await evaluateStage({ spec: job.spec, data: attempt.data, model: filesForWorker(bytes), artifacts: ctx.artifacts, registry, backend: ctx.backend ?? 'cpu' }) : null;
    if (suite) {
      recordSuite(ctx, job.id, step, suite.values);
      Object.assign(metrics, suite.values);
      for (const s of suite.samples) log.info(`job ${job.id}: sample ${JSON.stringify(s.prompt)} → ${JSON.stringify(s.got)} (expected ${JSON.stringify(s.expected)})`);
    }
    const unmet = passCheck(job.spec.eval?.pass, metrics);
    if (unmet.length) {
      ctx.endAttempt(attempt, 'failed', `pass criteria not met, no version registered: ${unmet.join('; ')}`);
      log.warn(`job ${job.id} failed its pass criteria: ${unmet.join('; ')}`);
      return;
    }
    const lineage = {
      ...jobLineage({ jobId: job.id, spec: job.spec, metrics, attempt: attempt.attempt, run: ctx.runs?.get(job.id), parent: parentOf(job.spec, registry) }),
      ...(job.spec.distill ? { teacher: refOf(job.spec.distill.teacher) } : {}),
    };
    // A LoRA job registers its adapter alone (PEFT files, a few percent of the base), on its frozen base.
    const version = adapter
      ? await registerAdapter(registry, { name: job.name, base: refOf(job.spec.init!.from), spec: job.spec.lora as LoraSpec, flat: adapter, lineage })
      : await registry.register(job.name, bytes, lineage);
    jobs.setModelVersion(job.id, version.version, ctx.now());
    ctx.bus.emit('model', { name: job.name, version: version.version });
    ctx.endAttempt(attempt, 'succeeded', `registered ${job.name} v${version.version}${attempt.earlyStopAt !== undefined ? ` (stopped early at step ${step})` : ''}`);
    log.info(`job ${job.id} succeeded: registered ${job.name} v${version.version}`);
  } catch (err) {
    ctx.endAttempt(attempt, 'failed', `could not register the model: ${(err as Error).message}`);
  }
}

/** The job's held-out losses recorded up to `step`, as [step, loss] in step order. */
function evalLosses(ctx: RunnerContext, jobId: string, step: number): Array<[number, number]> {
  return ctx.jobs.metrics(jobId).filter((r) => r.kind === 'eval' && r.step <= step && r.values.loss !== undefined).map((r) => [r.step, r.values.loss!]);
}

/** The suite's numbers join the step's 'eval' row (beside its held-out loss, which the row keeps). */
function recordSuite(ctx: RunnerContext, jobId: string, step: number, values: Record<string, number>): void {
  const existing = ctx.jobs.metrics(jobId, step - 1).find((r) => r.step === step && r.kind === 'eval')?.values ?? {};
  ctx.jobs.putMetrics(jobId, step, [{ kind: 'eval', atMs: ctx.now(), values: { ...existing, ...values } }]);
  ctx.log.info(`job ${jobId}: evaluation at step ${step}: ${Object.entries(values).map(([k, v]) => `${k} ${Number(v.toPrecision(4))}`).join(', ')}`);
}

/**
 * The model's files (config.json, model.safetensors, tokenizer.json) from the canonical checkpoint of `step`;
 * with LoRA the base with the adapter merged in (what the suites judge), and the
 * adapter's own values (what is registered).
 */
async function trained(ctx: RunnerContext, attempt: Attempt, job: JobRecord, step: number): Promise<{ files: Record<string, VersionFile>; adapter: Float32Array | null }> {
  const final = attempt.merged.get(step);
  if (!final) throw new Error(`no checkpoint of step ${step} arrived`);
  const checkpoint = await final;
  const tokenizerDigest = attempt.data?.['tokenizer.json'];
  if (!tokenizerDigest) throw new Error('the dataset has no tokenizer.json');
  const tokenizer = Tokenizer.fromJSON(JSON.parse(Buffer.from(await ctx.artifacts.get(tokenizerDigest)).toString('utf8')));
  // A whole-model checkpoint's model.safetensors is already the HF file exportHf would write: it is copied into
  // the version as it is, never loaded (for GPT-2-small, 500 MB the event loop would otherwise hash and copy).
  const asIs = job.spec.lora ? undefined : await ctx.sharder.hfModelFile(job.spec.model, checkpoint);
  if (asIs) return { files: hfFilesAround(job.spec.model, tokenizer, asIs), adapter: null };
  const canonical = await ctx.sharder.load(checkpoint);
  const layout = paramLayout(job.spec.model);
  const flat = trainedWeights(ctx.registry, job.spec, canonical.model);
  const adapter = job.spec.lora ? checkpointLayouts(job.spec).full : null;
  const files = { ...exportHf({ config: job.spec.model, layout }, tokenizer, flat) };
  return { files, adapter: adapter ? flatFromStateDict(canonical.model, adapter) : null };
}

/** A version's files as a worker thread takes them: small ones as bytes, stored ones by path (the worker reads them). */
function filesForWorker(files: Record<string, VersionFile>): Record<string, Uint8Array | string> {
  return Object.fromEntries(Object.entries(files).map(([name, f]) => [name, f instanceof Uint8Array ? f : f.path]));
}
