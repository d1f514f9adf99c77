/**
 * node scripts/run-tests.mjs integration/layouts
 *
 * One GPT trained under every data × pipeline × tensor layout on a real four-agent cluster. The single-agent run
 * (1×1×1) is the oracle: every other layout, ZeRO-1 included, must give its losses step for step, its held-out
 * losses, and its registered weights, as the full unsharded GPT-2 state dict. A job re-planned mid-run to another
 * layout resumes from its layout-free checkpoint and ends where the uninterrupted run ends. The plan endpoint and
 * `coordinator plan ID --json` say which layout ran where, and a layout too large for the cluster waits, saying why.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { startCluster, spawnProc, type LocalCluster } from '../../scripts/local-cluster.ts';
import type { JobRecord } from '../../coordinator/store/job-store.ts';
import type { PlanReport } from '../../coordinator/jobs/plan-report.ts';
import { paramLayout } from '../../model/params.ts';
import { readSafetensors, type TensorMap } from '../../model/safetensors.ts';
import { assertSameCurve, runToEnd, untilJob, writeCorpus, type JobView } from '../support/jobs.ts';

const COORDINATOR = new URL('../../bin/coordinator.js', import.meta.url).pathname;
const GATEWAY = new URL('../../bin/gateway.js', import.meta.url).pathname;

type Layout = { data: number; pipeline?: number; tensor?: number };

const MODEL = { vocabSize: 300, nCtx: 32, nLayer: 2, nHead: 2, nEmbd: 32 };
const STEPS = 8; // enough that a re-plan after the first checkpoint (step 2) lands well before the end
const TOL = 1e-4;

const layoutName = (l: Layout) => `${l.data}x${l.pipeline ?? 1}x${l.tensor ?? 1}`;

/** [step, held-out loss] of every evaluation recorded, in order. */
const evalLosses = (v: JobView) => v.metrics.filter((m) => m.kind === 'eval').map((m) => [m.step, m.values.loss!] as const);

/** max |a − b| / max |b|: the weights' distance from the reference's, relative to the reference's scale. */
function relativeDistance(a: Float32Array, b: Float32Array): number {
  let diff = 0, scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

describe('training one GPT under every data × pipeline × tensor layout on four agents', () => {
  let cluster: LocalCluster;
  let dir: string;
  let corpus: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'layouts-'));
    corpus = writeCorpus(dir, 20, 28);
    cluster = await startCluster({ agents: 4, agentArgs: ['--backend', 'wasm'] });
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  // batchSize 8 with 2 micro-batches divides over up to 4 data-parallel replicas.
  const spec = (name: string, parallel: Layout, training: object = {}) => ({
    name,
    model: MODEL,
    data: { corpus, heldOutFraction: 0.2 },
    training: { steps: STEPS, batchSize: 8, microBatches: 2, seqLen: 32, lr: 3e-3, warmupSteps: 2, evalEvery: 4, evalBatches: 2, checkpointEvery: 2, ...training },
    parallel,
  });

  /** The registered model.safetensors of a finished job, checked to hold the full unsharded GPT-2 state dict. */
  function registeredWeights(v: JobView): TensorMap {
    assert.ok(v.job.modelVersion !== null, `${v.job.name} registered a model`);
    const file = join(cluster.dataDir, 'registry', v.job.name, `v${v.job.modelVersion}`, 'model.safetensors');
    const { tensors } = readSafetensors(readFileSync(file));
    const specs = paramLayout(MODEL).specs;
    assert.deepEqual(Object.keys(tensors).sort(), specs.map((s) => s.name).sort(), `${v.job.name}: every GPT-2 parameter, nothing else`);
    for (const s of specs) assert.deepEqual(tensors[s.name]!.shape, s.shape, `${v.job.name}: ${s.name} has its full shape`);
    return tensors;
  }

  /** Every parameter, in GPT-2 state-dict order, as one vector. */
  const flat = (tensors: TensorMap): Float32Array => {
    const specs = paramLayout(MODEL).specs;
    const out = new Float32Array(specs.reduce((n, s) => n + s.size, 0));
    for (const s of specs) out.set(tensors[s.name]!.data as Float32Array, s.offset);
    return out;
  };

  /** Losses, held-out losses and registered weights all equal the reference run's. */
  function assertSameRun(got: JobView, ref: JobView): void {
    assertSameCurve(got, ref, STEPS, TOL);
    const evals = evalLosses(got), refEvals = evalLosses(ref);
    assert.deepEqual(evals.map(([s]) => s), refEvals.map(([s]) => s), `${got.job.name}: held-out loss at the same steps`);
    evals.forEach(([step, loss], i) => {
      const want = refEvals[i]![1];
      assert.ok(Math.abs(loss - want) / Math.abs(want) <= TOL, `${got.job.name} held-out loss at step ${step}: ${loss} vs reference ${want}`);
    });
    const d = relativeDistance(flat(registeredWeights(got)), flat(registeredWeights(ref)));
    assert.ok(d <= TOL, `${got.job.name}: weights ${d.toExponential(2)} (max |a−b| / max |b|) from the reference's`);
  }

  // The 1×1×1 oracle, trained once and shared by every test that compares against it.
  let reference: Promise<JobView> | undefined;
  const referenceRun = () => (reference ??= runToEnd(cluster, spec('layout-1x1x1', { data: 1 })));

  const finished = new Map<string, JobView>(); // by layout name, for the gateway and plan tests
  async function trained(parallel: Layout, training: object = {}, suffix = ''): Promise<JobView> {
    const name = `layout-${layoutName(parallel)}${suffix}`;
    const v = await runToEnd(cluster, spec(name, parallel, training));
    finished.set(name, v);
    return v;
  }

  test('every layout, and ZeRO-1, gives the single-agent losses, held-out losses and registered weights', async () => {
    const ref = await referenceRun();
    for (const parallel of [{ data: 2, pipeline: 2 }, { data: 1, pipeline: 2, tensor: 2 }, { data: 2, tensor: 2 }]) {
      assertSameRun(await trained(parallel), ref);
    }
    const zero = await trained({ data: 2, pipeline: 2 }, { zero: 1 }, '-zero1');
    assertSameRun(zero, ref);

    // ZeRO-1 shards the AdamW moments over the two replicas: rank 0 keeps about half of the plain run's.
    const optimizerBytes = (v: JobView) => v.metrics.find((m) => m.kind === 'train')!.values.optimizerBytes!;
    const plain = optimizerBytes(finished.get('layout-2x2x1')!), sharded = optimizerBytes(zero);
    assert.ok(plain > 0 && Math.abs(sharded / plain - 0.5) < 0.05, `ZeRO-1 optimizer state ${sharded} B vs ${plain} B without`);
    const train = zero.metrics.filter((m) => m.kind === 'train');
    assert.ok(train.every((m) => m.values.paramCount! > 0 && m.values.pipelineMs! > 0 && m.values.stage0BusyMs! > 0 && m.values.stage1BusyMs! > 0));
  });

  test('the gateway serves a model trained with pipeline × tensor parallelism', async () => {
    const name = 'layout-1x2x2';
    const v = finished.get(name) ?? (await trained({ data: 1, pipeline: 2, tensor: 2 }));
    registeredWeights(v);
    const gw = spawn(process.execPath, [GATEWAY, 'serve', '--registry', join(cluster.dataDir, 'registry'), '--model', name, '--port', '0', '--host', '127.0.0.1'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, LOG_LEVEL: 'warn' },
    });
    const stderr: string[] = [];
    createInterface({ input: gw.stderr }).on('line', (l) => stderr.push(l));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        createInterface({ input: gw.stdout }).on('line', (l) => {
          const m = /gateway listening on (\S+)/.exec(l);
          if (m) resolve(m[1]!);
        });
        gw.on('exit', (code) => reject(new Error(`gateway exited ${code}:\n${stderr.join('\n')}`)));
      });
      const res = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: name, prompt: 'The Congress', max_tokens: 8, temperature: 0 }),
      });
      assert.equal(res.status, 200);
      const body = (await res.json()) as { choices: Array<{ text: string }> };
      assert.ok(body.choices[0]!.text.length > 0);
    } finally {
      gw.kill('SIGKILL');
    }
  });

  /**
   * Submits a job at `from`, re-plans it to `to` once its first checkpoint is recorded, and checks that the second
   * attempt resumed from a checkpoint under the new layout and ended as the uninterrupted single-agent run.
   */
  async function replanMidRun(from: Layout, to: Layout): Promise<void> {
    const ref = await referenceRun();
    const name = `replan-${layoutName(from)}-to-${layoutName(to)}`;
    const id = (await cluster.api<JobRecord>('POST', '/api/jobs', spec(name, from))).id;
    const mid = await untilJob(cluster, id, (v) => v.checkpoints.length >= 1);
    assert.ok(mid.job.state === 'running' && mid.job.step < STEPS, `still running when re-planned (${mid.job.state} at step ${mid.job.step})`);

    const replanned = await cluster.api<JobRecord>('POST', `/api/jobs/${id}/replan`, { parallel: to });
    assert.deepEqual(replanned.spec.parallel, { pipeline: 1, tensor: 1, minData: to.data, ...to }, 'the job now asks for the new layout');
    const resumed = await untilJob(cluster, id, (v) => /^attempt 2: .*resuming from step \d+/.test(v.job.stateReason) || v.job.state === 'succeeded');
    const m = /^attempt 2: (\d+)×(\d+)×(\d+) .*resuming from step (\d+)/.exec(resumed.job.stateReason);
    assert.ok(m, `the second attempt says it resumes from a checkpoint: ${resumed.job.stateReason}`);
    assert.deepEqual(m.slice(1, 4).map(Number), [to.data, to.pipeline ?? 1, to.tensor ?? 1], 'under the new layout');
    const from_ = Number(m[4]);
    assert.ok(from_ >= 2 && from_ % 2 === 0 && from_ < STEPS, `resumed from a checkpoint of the first attempt (step ${from_})`);

    const done = await untilJob(cluster, id, (v) => v.job.state === 'succeeded');
    assert.equal(done.job.attempt, 2, 'one re-plan, one more attempt');
    assert.ok(done.checkpoints.filter((c) => c.attempt === 2).every((c) => c.step > from_), 'the second attempt checkpoints only after where it resumed');
    assertSameRun(done, ref);
    const plan = await cluster.api<PlanReport>('GET', `/api/jobs/${id}/plan`);
    assert.deepEqual(plan.plan?.chosen?.layout, { pipeline: 1, tensor: 1, ...to });
  }

  test('a 2×2×1 job re-planned to 1×1×1 mid-run resumes from its checkpoint and ends as the uninterrupted run', async () => {
    await replanMidRun({ data: 2, pipeline: 2 }, { data: 1 });
  });

  test('a 1×1×1 job re-planned to 4×1×1 mid-run resumes from its checkpoint and ends as the uninterrupted run', async () => {
    await replanMidRun({ data: 1 }, { data: 4 });
  });

  test('the plan of a finished pinned job names its layout, stage bounds, four distinct agents and both step times', async () => {
    await referenceRun(); // ran before the 2×2×1 job in any order of these tests: its step times refit the agents
    const v = finished.get('layout-2x2x1') ?? (await trained({ data: 2, pipeline: 2 }));
    const report = await cluster.api<PlanReport>('GET', `/api/jobs/${v.job.id}/plan`);
    const chosen = report.plan?.chosen;
    assert.ok(chosen, 'a plan was chosen');
    assert.deepEqual(chosen.layout, { data: 2, pipeline: 2, tensor: 1 });
    assert.deepEqual(chosen.stages, [[0, 1], [1, 2]], 'one block per stage');
    assert.equal(chosen.placement.length, 4);
    assert.equal(new Set(chosen.placement).size, 4, 'four distinct agents');
    assert.ok(report.plan!.candidates.length >= 1 && report.plan!.candidates.some((c) => c.layout.data === 2 && c.layout.pipeline === 2));
    // each agent's own figures, from its join-time probe, refitted by the step times of the job before
    const figures = /(node-\S+) wasm [\d.]+ GFLOP\/s, [\d.]+ ns\/element, [\d.]+ ms\/block pass, [\d.]+ ms\/micro-batch \(probed at join, step-time refit ×([\d.]+)\)/g;
    const named = [...report.plan!.explanation.matchAll(figures)];
    assert.deepEqual(named.map((m) => m[1]).sort(), [...chosen.placement].sort(), report.plan!.explanation);
    assert.ok(named.every((m) => Number(m[2]) > 0.25 && Number(m[2]) < 4), 'a refit within its bounds');
    assert.ok(report.predictedStepMs! > 0, `predicted ${report.predictedStepMs} ms`);
    assert.ok(report.measuredStepMs! > 0 && report.measuredSteps >= 1, `measured ${report.measuredStepMs} ms over ${report.measuredSteps} steps`);
  });

  test('coordinator plan ID --json prints the plan the API returns', async () => {
    const v = finished.get('layout-2x2x1') ?? (await trained({ data: 2, pipeline: 2 }));
    const p = spawnProc([COORDINATOR, 'plan', v.job.id, '--json', '--url', cluster.url, '--token', cluster.token], { stderr: 'capture' });
    const code = await p.exited;
    const out = p.output.join('\n');
    assert.equal(code, 0, out);
    const api = await cluster.api<PlanReport>('GET', `/api/jobs/${v.job.id}/plan`);
    assert.deepEqual(JSON.parse(out), api);
  });

  test('a pinned layout larger than the cluster stays queued and says what it waits for', async () => {
    const job = await cluster.api<JobRecord>('POST', '/api/jobs', spec('layout-8x1x1', { data: 8 }, { microBatches: 1 }));
    let behind: JobRecord | undefined;
    try {
      const waiting = await untilJob(cluster, job.id, (v) => /waiting for 8 free agents/.test(v.job.stateReason), 30_000);
      assert.equal(waiting.job.state, 'queued');
      // A later scheduler pass, seen rather than slept for: a job submitted after this one is told it is queued
      // behind it, which the scheduler says only in a pass that found this one still unable to start.
      behind = await cluster.api<JobRecord>('POST', '/api/jobs', spec('layout-behind-8x1x1', { data: 1 }));
      await untilJob(cluster, behind.id, (v) => v.job.stateReason === `queued behind ${job.id}`, 30_000);
      const later = await cluster.api<JobView>('GET', `/api/jobs/${job.id}`);
      assert.equal(later.job.state, 'queued');
      assert.equal(later.job.attempt, 0, 'never started');
      assert.match(later.job.stateReason, /waiting for 8 free agents \(4 free\)/);
    } finally {
      // The one behind first: with the large one gone, it would start. A queued job would hold every job behind it.
      if (behind) await cluster.api('POST', `/api/jobs/${behind.id}/cancel`);
      await cluster.api('POST', `/api/jobs/${job.id}/cancel`);
    }
  });
});
