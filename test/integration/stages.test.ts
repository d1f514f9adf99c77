/**
 * The model's stages as job kinds on real processes: a pre-trained base, SFT from it (data parallel), DPO from
 * the SFT version (a 2-stage pipeline, so the frozen reference runs on the last stage only), and distillation of
 * the SFT version into a smaller student. Each is a registered version whose lineage names what it came from.
 * Small and short: the mechanics, not the quality (`npm run bench -- stages` shows the quality).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, type LocalCluster } from '../../scripts/local-cluster.ts';
import { loraLayout, loraSpec } from '../../model/lora.ts';
import { readSafetensorsHeader } from '../../model/safetensors.ts';
import { assertSameCurve, runToEnd, trainLosses, writeCorpus, type JobView } from '../support/jobs.ts';
import { greetRecords, preferenceRecords, reversalRecords, reversalTasks, writeJsonl } from '../support/synthetic-tasks.ts';

const MODEL = { vocabSize: 320, nCtx: 64, nLayer: 2, nHead: 2, nEmbd: 32 };

describe('stage jobs: pretrain → sft → dpo, and distill', () => {
  let cluster: LocalCluster;
  let dir: string;
  let sftData: string, prefData: string, corpus: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'stages-'));
    corpus = writeCorpus(dir, 0, 8);
    sftData = join(dir, 'sft.jsonl');
    prefData = join(dir, 'pref.jsonl');
    writeJsonl(sftData, [...reversalRecords(reversalTasks(120, 3)), ...greetRecords(5, 2)]);
    writeJsonl(prefData, preferenceRecords(4));
    cluster = await startCluster({ agents: 2, agentArgs: ['--backend', 'wasm'] });
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const training = (steps: number, extra: object = {}) => ({ steps, batchSize: 8, seqLen: 48, lr: 3e-3, evalBatches: 1, ...extra });

  test('each stage starts from the version before it, trains its objective and registers a version with lineage', async () => {
    const base = await runToEnd(cluster, { name: 'base', model: MODEL, data: { corpus, heldOutFraction: 0.2 }, training: training(4, { seqLen: 32 }), parallel: { data: 1 } });
    assert.equal(base.job.state, 'succeeded', base.job.stateReason);

    const sft = await runToEnd(cluster, {
      name: 'chat', kind: 'sft', init: { from: 'base' }, model: MODEL, data: { corpus: sftData, heldOutFraction: 0.1 },
      training: training(12, { checkpointEvery: 6 }), parallel: { data: 2 }, eval: { maxNewTokens: 8, maxExamples: 8, every: 6, pass: { maxPerplexity: 1e6 } },
    });
    assert.equal(sft.job.state, 'succeeded', sft.job.stateReason);
    assert.equal(sft.job.spec.init?.from, 'base@1', 'the reference was pinned when the job was accepted');
    const sftLoss = trainLosses(sft);
    assert.equal(sftLoss.length, 12);
    assert.ok(sftLoss.at(-1)![1] < sftLoss[0]![1], `the response loss falls: ${sftLoss[0]![1]} → ${sftLoss.at(-1)![1]}`);
    assert.ok(sft.metrics.some((m) => m.kind === 'eval' && m.values.perplexity! > 1), 'held-out loss and perplexity are reported');
    const chat = await version(cluster, 'chat', 1);
    assert.deepEqual(chat.lineage.parent, { name: 'base', version: 1 });
    const sftEval = finalEval(sft);
    assert.ok(sftEval.exactMatch! >= 0 && sftEval.exactMatch! <= 1 && sftEval.examples! > 0 && sftEval.loss! > 0, `exact match joins the held-out loss: ${JSON.stringify(sftEval)}`);
    assert.equal(chat.lineage.metrics.exactMatch, sftEval.exactMatch, 'the suite is in the lineage');
    await untilEval(cluster, sft.job.id, 6, 'exactMatch'); // eval.every: the suite on the checkpoint of step 6 too

    const dpo = await runToEnd(cluster, {
      name: 'chat-dpo', kind: 'dpo', init: { from: 'chat@1' }, dpo: { beta: 0.5 }, model: MODEL, data: { corpus: prefData, heldOutFraction: 0.1 },
      training: training(6, { batchSize: 4 }), parallel: { data: 1, pipeline: 2 }, eval: { maxExamples: 8 },
    });
    assert.equal(dpo.job.state, 'succeeded', dpo.job.stateReason);
    const dpoLoss = trainLosses(dpo);
    // At step 1 the policy IS the reference: every margin is 0 and the loss is exactly −log σ(0) = ln 2.
    assert.ok(Math.abs(dpoLoss[0]![1] - Math.LN2) < 1e-4, `first DPO loss ${dpoLoss[0]![1]} is ln 2`);
    assert.ok(dpoLoss.at(-1)![1] < Math.LN2 - 0.01, `DPO loss falls below ln 2: ${dpoLoss.map(([, l]) => l.toFixed(4)).join(' ')}`);
    assert.deepEqual((await version(cluster, 'chat-dpo', 1)).lineage.parent, { name: 'chat', version: 1 });
    const dpoEval = finalEval(dpo);
    for (const k of ['winRate', 'rewardAccuracy', 'rewardMargin', 'perplexityIncrease']) assert.ok(Number.isFinite(dpoEval[k]), `${k} in ${JSON.stringify(dpoEval)}`);
    assert.ok(dpoEval.rewardMargin! > 0, `the policy moved towards the chosen replies: ${JSON.stringify(dpoEval)}`);

    const student = { ...MODEL, nLayer: 1 };
    const distill = await runToEnd(cluster, {
      name: 'chat-small', kind: 'distill', distill: { teacher: 'chat', temperature: 2, alpha: 0.5, initFromTeacher: true }, model: student,
      data: { corpus: sftData, heldOutFraction: 0.1 }, training: training(8), parallel: { data: 2 }, eval: { maxNewTokens: 8, maxExamples: 8 },
    });
    assert.equal(distill.job.state, 'succeeded', distill.job.stateReason);
    assert.equal(distill.job.spec.distill?.teacher, 'chat@1');
    const dl = trainLosses(distill);
    assert.ok(dl.at(-1)![1] < dl[0]![1], `the distillation loss falls: ${dl[0]![1]} → ${dl.at(-1)![1]}`);
    assert.deepEqual((await version(cluster, 'chat-small', 1)).lineage.teacher, { name: 'chat', version: 1 });
    const distillEval = finalEval(distill);
    for (const k of ['scoreRatio', 'studentScore', 'teacherScore']) assert.ok(Number.isFinite(distillEval[k]), `${k} in ${JSON.stringify(distillEval)}`);
  });

  test('a LoRA job trains only its adapter on the frozen base, alike under tensor and pipeline parallelism, and registers the adapter alone', async () => {
    const lora = { rank: 4, alpha: 8, dropout: 0, targets: ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'] };
    const spec = (name: string, parallel: object) => ({
      name, kind: 'sft', init: { from: 'base@1' }, lora, model: MODEL, data: { corpus: sftData, heldOutFraction: 0.1 },
      training: training(6, { checkpointEvery: 3 }), parallel, eval: { maxNewTokens: 8, maxExamples: 4 },
    });
    const reference = await runToEnd(cluster, spec('lora-ref', { data: 1 }));
    assert.equal(reference.job.state, 'succeeded', reference.job.stateReason);
    const losses = trainLosses(reference);
    assert.ok(losses.at(-1)![1] < losses[0]![1], `the adapter learns: ${losses.map(([, l]) => l.toFixed(4)).join(' ')}`);
    // Tensor parallelism cuts each adapter like the weight it adapts and sums the replicated factor's gradient over
    // the group; pipeline parallelism gives each stage its blocks' adapters: both train the same adapter.
    for (const [name, parallel] of [['lora-tp', { data: 1, tensor: 2 }], ['lora-pp', { data: 1, pipeline: 2 }]] as const) {
      const run = await runToEnd(cluster, spec(name, parallel));
      assert.equal(run.job.state, 'succeeded', run.job.stateReason);
      assertSameCurve(run, reference, 6);
    }
    // The checkpoint holds the adapter and AdamW moments for it alone: nothing of the frozen base.
    const checkpoint = reference.checkpoints.find((c) => c.step === 6)!;
    const optimizer = await fetch(`${cluster.url}/api/artifacts/${checkpoint.files['optimizer.safetensors']}`, { headers: { authorization: `Bearer ${cluster.token}` } });
    const names = [...readSafetensorsHeader(new Uint8Array(await optimizer.arrayBuffer())).tensors.keys()];
    const adapterNames = loraLayout(MODEL, loraSpec(lora, MODEL)).specs.map((p) => p.name);
    assert.deepEqual(names.sort(), [...adapterNames.map((n) => `exp_avg.${n}`), ...adapterNames.map((n) => `exp_avg_sq.${n}`)].sort());
    const v = await cluster.api<{ files: Record<string, unknown>; lineage: { adapter?: boolean; base?: unknown; metrics: Record<string, number> } }>('GET', '/api/models/lora-ref/versions/1');
    assert.ok('adapter_model.safetensors' in v.files && 'adapter_config.json' in v.files && !('model.safetensors' in v.files), `adapter files only: ${Object.keys(v.files)}`);
    assert.equal(v.lineage.adapter, true);
    assert.deepEqual(v.lineage.base, { name: 'base', version: 1 });
    assert.ok(Number.isFinite(v.lineage.metrics.exactMatch), `the suite judged base + adapter: ${JSON.stringify(v.lineage.metrics)}`);
  });

  test('a stage that misses its pass criteria fails with each unmet criterion and registers no version', async () => {
    const job = await cluster.api<{ id: string }>('POST', '/api/jobs', {
      name: 'strict', kind: 'sft', init: { from: 'base@1' }, model: MODEL, data: { corpus: sftData, heldOutFraction: 0.1 }, training: training(2),
      parallel: { data: 1 }, eval: { maxNewTokens: 4, maxExamples: 4, pass: { minExactMatch: 1, maxEvalLoss: 0.001 } },
    });
    const deadline = Date.now() + 60_000;
    let v: JobView;
    do {
      await new Promise((r) => setTimeout(r, 100));
      v = await cluster.api<JobView>('GET', `/api/jobs/${job.id}`);
      assert.ok(Date.now() < deadline, `still ${v.job.state}: ${v.job.stateReason}`);
    } while (v.job.state !== 'failed' && v.job.state !== 'succeeded');
    assert.equal(v.job.state, 'failed');
    assert.match(v.job.stateReason, /pass criteria not met, no version registered: evalLoss \S+ > maxEvalLoss 0.001; exactMatch 0\S* < minExactMatch 1/);
    const { models } = await cluster.api<{ models: Array<{ name: string }> }>('GET', '/api/models');
    assert.ok(models.some((m) => m.name === 'base') && !models.some((m) => m.name === 'strict'), 'no version was registered');
  });

  test('early stopping ends a job whose held-out loss stops improving, registering the checkpoint of that step', async () => {
    // minDelta 100: no evaluation after the first can improve enough, so patience 1 stops at the second (step 2).
    const stopped = await runToEnd(cluster, {
      name: 'early', model: MODEL, data: { corpus, heldOutFraction: 0.2 }, training: training(8, { seqLen: 32, evalEvery: 1, checkpointEvery: 1 }),
      parallel: { data: 1 }, eval: { earlyStopping: { patience: 1, minDelta: 100 } },
    });
    assert.match(stopped.job.stateReason, /registered early v1 \(stopped early at step 2\)/);
    const { lineage } = await version(cluster, 'early', 1);
    assert.equal(lineage.metrics.earlyStopped, 2);
    assert.equal(lineage.metrics.steps, 2);
    assert.equal(lineage.metrics.loss, trainLosses(stopped)[1]![1], 'the train loss of the step the model is from');
  });

  test('a stage job naming a missing version, or one whose config differs, is refused with every reason', async () => {
    const refused = async (spec: object) => {
      const err = await cluster.api('POST', '/api/jobs', spec).then(() => assert.fail('accepted'), (e: { status: number; body: { error: { code: string; message: string } } }) => e);
      assert.equal(err.status, 400);
      assert.equal(err.body.error.code, 'CRD_ERR_BAD_REQUEST');
      return err.body.error.message;
    };
    assert.match(await refused({ name: 'x', kind: 'sft', init: { from: 'nope@3' }, model: MODEL, data: { corpus: sftData }, training: training(2) }), /nope/);
    assert.match(await refused({ name: 'y', kind: 'dpo', model: MODEL, data: { corpus: prefData }, training: training(2) }), /init\.from/);
    assert.match(await refused({ name: 'z', kind: 'sft', init: { from: 'base@1' }, model: { ...MODEL, nEmbd: 64 }, data: { corpus: sftData }, training: training(2) }), /nEmbd 64 ≠ 32/);
  });
});

async function version(cluster: LocalCluster, name: string, v: number) {
  return cluster.api<{ lineage: { parent?: unknown; teacher?: unknown; metrics: Record<string, number> } }>('GET', `/api/models/${name}/versions/${v}`);
}

/** The 'eval' row of the job's final step: held-out loss and the stage's suite. */
function finalEval(v: JobView): Record<string, number> {
  return v.metrics.find((m) => m.kind === 'eval' && m.step === v.job.spec.training.steps)?.values ?? {};
}

/** Waits for the 'eval' row of `step` to hold `key` (a periodic suite may finish after its job). */
async function untilEval(cluster: LocalCluster, jobId: string, step: number, key: string): Promise<void> {
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 100))) {
    const v = await cluster.api<JobView>('GET', `/api/jobs/${jobId}`);
    if (v.metrics.some((m) => m.kind === 'eval' && m.step === step && m.values[key] !== undefined)) return;
  }
  assert.fail(`no ${key} recorded at step ${step}`);
}
