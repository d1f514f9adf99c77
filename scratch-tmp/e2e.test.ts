import { test } from 'node:test';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster } from '../scripts/local-cluster.ts';
import { runToEnd, writeCorpus, trainLosses } from '../test/support/jobs.ts';
test('e2e', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'e2e-'));
  const corpus = writeCorpus(dir, 0, 8);
  const cluster = await startCluster({ agents: 4, agentArgs: ['--backend', 'wasm'] });
  try {
    const spec = (name: string, parallel: object) => ({ name, model: { vocabSize: 300, nCtx: 32, nLayer: 2, nHead: 2, nEmbd: 32 }, data: { corpus, heldOutFraction: 0.2 },
      training: { steps: 5, batchSize: 8, microBatches: 2, seqLen: 32, checkpointEvery: 2 }, parallel });
    for (const p of [{ data: 1 }, { data: 1, pipeline: 2, tensor: 2 }, { data: 2, pipeline: 2 }]) {
      const t0 = Date.now();
      const v = await runToEnd(cluster, spec('m' + Object.values(p).join(''), p));
      console.log(JSON.stringify(p), Date.now() - t0, 'ms', v.job.stateReason, trainLosses(v).map(([, l]) => l.toFixed(6)).join(' '));
      const plan = await cluster.api<any>('GET', `/api/jobs/${v.job.id}/plan`);
      console.log('predicted', plan.predictedStepMs, 'measured', plan.measuredStepMs);
    }
  } finally { await cluster.stop(); }
});
