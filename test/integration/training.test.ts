/**
 * Training end to end on real processes: a coordinator and two agents train a tiny GPT data-parallel on real
 * English text, the model is registered, and the gateway serves it. Also the equivalence requirement: the
 * same job on 1 and on 2 agents (same global batch and seed) gives the same losses.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { startCluster, type LocalCluster } from '../../scripts/local-cluster.ts';
import type { JobRecord } from '../../coordinator/store/job-store.ts';
import { runToEnd, trainLosses, untilJob, writeCorpus } from '../support/jobs.ts';

const GATEWAY = new URL('../../bin/gateway.js', import.meta.url).pathname;

describe('training a GPT on two agents', () => {
  let cluster: LocalCluster;
  let dir: string;
  let corpus: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'training-'));
    corpus = writeCorpus(dir, 0, 8);
    cluster = await startCluster({ agents: 2, agentArgs: ['--backend', 'wasm'] });
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const spec = (name: string, data: number, extra: object = {}) => ({
    name,
    model: { vocabSize: 300, nCtx: 32, nLayer: 2, nHead: 2, nEmbd: 32 },
    data: { corpus, heldOutFraction: 0.2 },
    training: { steps: 30, batchSize: 8, seqLen: 32, lr: 3e-3, warmupSteps: 3, evalEvery: 10, evalBatches: 2, checkpointEvery: 10, ...extra },
    parallel: { data },
  });

  test('a data-parallel job trains, checkpoints, evaluates, registers its model, and the gateway serves it', async () => {
    const { job, metrics } = await runToEnd(cluster, spec('tiny-2', 2));
    const train = metrics.filter((m) => m.kind === 'train');
    const evals = metrics.filter((m) => m.kind === 'eval');
    assert.deepEqual(train.map((m) => m.step), Array.from({ length: 30 }, (_, i) => i + 1), 'every step once');
    assert.ok(train.at(-1)!.values.loss! < train[0]!.values.loss! - 1, `loss falls: ${train[0]!.values.loss} → ${train.at(-1)!.values.loss}`);
    assert.ok(evals.length >= 3 && evals.every((e) => e.values.perplexity! > 1), 'held-out loss and perplexity recorded');
    assert.ok(train.every((m) => m.values.tokensPerS! > 0 && m.values.allreduceMs! >= 0));
    assert.equal(job.modelVersion, 1);

    const { versions } = await cluster.api<{ versions: Array<{ version: number; lineage: { jobId: string }; files: Record<string, unknown> }> }>('GET', '/api/models/tiny-2/versions');
    assert.equal(versions[0]!.lineage.jobId, job.id);
    assert.ok(versions[0]!.files['model.safetensors'] && versions[0]!.files['tokenizer.json']);

    const gw = spawn(process.execPath, [GATEWAY, 'serve', '--registry', join(cluster.dataDir, 'registry'), '--port', '0', '--host', '127.0.0.1'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, LOG_LEVEL: 'warn' },
    });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        createInterface({ input: gw.stdout }).on('line', (l) => {
          const m = /gateway listening on (\S+)/.exec(l);
          if (m) resolve(m[1]!);
        });
        gw.on('exit', (code) => reject(new Error(`gateway exited ${code}`)));
      });
      const res = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tiny-2', prompt: 'The Congress', max_tokens: 12, temperature: 0 }),
      });
      assert.equal(res.status, 200);
      const body = (await res.json()) as { choices: Array<{ text: string }> };
      assert.ok(body.choices[0]!.text.length > 0);
    } finally {
      gw.kill('SIGKILL');
    }
  });

  test('old checkpoints are pruned to keepCheckpoints, their files removed from the artifact store', async () => {
    const { id } = await cluster.api<JobRecord>('POST', '/api/jobs', spec('kept', 2, { steps: 15, evalEvery: 0, checkpointEvery: 5, keepCheckpoints: 2 }));
    const early = await untilJob(cluster, id, (v) => v.checkpoints.some((c) => c.step === 5));
    const first = early.checkpoints.find((c) => c.step === 5)!;
    const path = (digest: string) => join(cluster.dataDir, 'artifacts', 'sha256', digest.slice(0, 2), digest);
    assert.ok(Object.values(first.files).every((d) => existsSync(path(d))), 'the first checkpoint is in the store while it is kept');
    const done = await untilJob(cluster, id, (v) => v.job.state === 'succeeded');
    assert.deepEqual(done.checkpoints.map((c) => c.step), [15, 10], 'the newest two are kept');
    assert.deepEqual(Object.values(first.files).filter((d) => existsSync(path(d))), [], "the pruned checkpoint's files are gone");
    assert.ok(done.checkpoints.every((c) => Object.values(c.files).every((d) => existsSync(path(d)))), 'the kept ones are intact');
  });

  test('one agent and two agents with the same global batch and seed give the same losses', async () => {
    const one = await runToEnd(cluster, spec('eq-1', 1, { steps: 5, evalEvery: 0, checkpointEvery: 0 }));
    const two = await runToEnd(cluster, spec('eq-2', 2, { steps: 5, evalEvery: 0, checkpointEvery: 0 }));
    const a = trainLosses(one).map(([, loss]) => loss);
    const b = trainLosses(two).map(([, loss]) => loss);
    assert.equal(a.length, 5);
    a.forEach((x, i) => assert.ok(Math.abs(x - b[i]!) / Math.abs(x) <= 1e-4, `step ${i + 1}: ${x} vs ${b[i]}`));
  });
});
