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
import { runToEnd, trainLosses, writeCorpus } from '../support/jobs.ts';
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
      name: 'chat', kind: 'sft', init: { from: 'base' }, model: MODEL, data: { corpus: sftData, heldOutFraction: 0.1 }, training: training(12), parallel: { data: 2 },
    });
    assert.equal(sft.job.state, 'succeeded', sft.job.stateReason);
    assert.equal(sft.job.spec.init?.from, 'base@1', 'the reference was pinned when the job was accepted');
    const sftLoss = trainLosses(sft);
    assert.equal(sftLoss.length, 12);
    assert.ok(sftLoss.at(-1)![1] < sftLoss[0]![1], `the response loss falls: ${sftLoss[0]![1]} → ${sftLoss.at(-1)![1]}`);
    assert.ok(sft.metrics.some((m) => m.kind === 'eval' && m.values.perplexity! > 1), 'held-out loss and perplexity are reported');
    const chat = await version(cluster, 'chat', 1);
    assert.deepEqual(chat.lineage.parent, { name: 'base', version: 1 });

    const dpo = await runToEnd(cluster, {
      name: 'chat-dpo', kind: 'dpo', init: { from: 'chat@1' }, dpo: { beta: 0.5 }, model: MODEL, data: { corpus: prefData, heldOutFraction: 0.1 },
      training: training(6, { batchSize: 4 }), parallel: { data: 1, pipeline: 2 },
    });
    assert.equal(dpo.job.state, 'succeeded', dpo.job.stateReason);
    const dpoLoss = trainLosses(dpo);
    // At step 1 the policy IS the reference: every margin is 0 and the loss is exactly −log σ(0) = ln 2.
    assert.ok(Math.abs(dpoLoss[0]![1] - Math.LN2) < 1e-4, `first DPO loss ${dpoLoss[0]![1]} is ln 2`);
    assert.ok(dpoLoss.at(-1)![1] < Math.LN2 - 0.01, `DPO loss falls below ln 2: ${dpoLoss.map(([, l]) => l.toFixed(4)).join(' ')}`);
    assert.deepEqual((await version(cluster, 'chat-dpo', 1)).lineage.parent, { name: 'chat', version: 1 });

    const student = { ...MODEL, nLayer: 1 };
    const distill = await runToEnd(cluster, {
      name: 'chat-small', kind: 'distill', distill: { teacher: 'chat', temperature: 2, alpha: 0.5 }, model: student,
      data: { corpus: sftData, heldOutFraction: 0.1 }, training: training(8), parallel: { data: 2 },
    });
    assert.equal(distill.job.state, 'succeeded', distill.job.stateReason);
    assert.equal(distill.job.spec.distill?.teacher, 'chat@1');
    const dl = trainLosses(distill);
    assert.ok(dl.at(-1)![1] < dl[0]![1], `the distillation loss falls: ${dl[0]![1]} → ${dl.at(-1)![1]}`);
    assert.deepEqual((await version(cluster, 'chat-small', 1)).lineage.teacher, { name: 'chat', version: 1 });
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
  return cluster.api<{ lineage: { parent?: unknown; teacher?: unknown } }>('GET', `/api/models/${name}/versions/${v}`);
}
