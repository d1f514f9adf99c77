/**
 * A hyper-parameter sweep on real processes: a coordinator and two agents run three trials of a tiny GPT over
 * training.lr, two at a time, each reporting a held-out loss; the sweep names the trial with the lowest one. The
 * CLI shows it, compares two trials and exports one; the best model's lineage carries the code version
 * and the dataset's digests.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnProc } from '../../scripts/local-cluster.ts';
import type { LineageLink } from '../../coordinator/tracking/lineage.ts';
import type { SweepView } from '../../coordinator/tracking/sweeps.ts';
import { clusterFixture, type JobView } from '../support/jobs.ts';
import { until } from '../support/until.ts';

const COORDINATOR = new URL('../../bin/coordinator.js', import.meta.url).pathname;

describe('a learning-rate sweep on two agents', () => {
  const fx = clusterFixture('sweeps', [0, 3], { agents: 2 });
  const cli = async (...args: string[]) => {
    const p = spawnProc([COORDINATOR, ...args, '--url', fx.cluster.url, '--token', fx.cluster.token], { stderr: 'capture' });
    const code = await p.exited;
    return { code, out: p.output.join('\n') };
  };

  test('three trials run as jobs and the best is the one with the lowest held-out loss', async () => {
    const steps = 6;
    const sweep = {
      name: 'lr-sweep',
      base: {
        name: 'unused',
        model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
        data: { corpus: fx.corpus, heldOutFraction: 0.2 },
        training: { steps, batchSize: 4, seqLen: 16, minLr: 0, evalEvery: steps, evalBatches: 1 },
        parallel: { data: 1 },
      },
      parameters: { 'training.lr': { values: [0.03, 0.003, 0.0003] } },
      strategy: 'grid',
      budget: 3,
      parallelTrials: 2,
    };
    const { id } = await fx.cluster.api<SweepView>('POST', '/api/sweeps', sweep);
    const done = await until('the sweep to end', async () => {
      const s = await fx.cluster.api<SweepView>('GET', `/api/sweeps/${id}`);
      assert.ok(s.trials.filter((t) => t.jobState === 'running').length <= 2, 'never more than parallelTrials running');
      return s.state !== 'running' && s;
    }, 90_000);
    assert.equal(done.state, 'succeeded', done.stateReason);
    assert.deepEqual(done.trials.map((t) => [t.name, t.params['training.lr'], t.jobState, t.lossKind]), [
      ['lr-sweep-t1', 0.03, 'succeeded', 'eval'],
      ['lr-sweep-t2', 0.003, 'succeeded', 'eval'],
      ['lr-sweep-t3', 0.0003, 'succeeded', 'eval'],
    ]);

    // The recorded held-out losses, read from each job's own history, pick the best.
    const evalLoss = async (jobId: string) => (await fx.cluster.api<JobView>('GET', `/api/jobs/${jobId}`)).metrics.filter((m) => m.kind === 'eval').at(-1)!.values.loss!;
    const losses = await Promise.all(done.trials.map((t) => evalLoss(t.jobId)));
    const lowest = done.trials[losses.indexOf(Math.min(...losses))]!;
    assert.equal(done.best?.jobId, lowest.jobId, `losses ${losses.join(', ')}`);
    assert.equal(done.best?.evalLoss, Math.min(...losses));
    assert.equal(done.best?.modelVersion, 1);

    // The CLI's views of it, at once (each is a process start).
    const csv = join(fx.cluster.dataDir, 'best.csv');
    const [status, compared, exported] = await Promise.all([
      cli('sweep', 'status', id),
      cli('runs', 'compare', done.trials[0]!.jobId, done.trials[2]!.jobId),
      cli('runs', 'export', lowest.jobId, '--format', 'csv', '--out', csv),
    ]);
    assert.match(status.out, new RegExp(`${lowest.name}\\s.*← best`));
    assert.equal(compared.code, 0, compared.out);
    assert.match(compared.out, /training\.lr\s+0\.03\s+0\.0003/);
    assert.match(compared.out, /train loss by step[\s\S]*[▁▂▃▄▅▆▇█]{6}/);
    assert.equal(exported.code, 0, exported.out);
    const lines = readFileSync(csv, 'utf8').trimEnd().split('\n');
    assert.match(lines[0]!, /^step,kind,atMs,loss,/);
    assert.equal(lines.filter((l) => /^\d+,train,/.test(l)).length, steps, 'one train row per step');
    assert.equal(lines.filter((l) => /^\d+,eval,/.test(l)).length, 1);

    const { chain } = await fx.cluster.api<{ chain: LineageLink[] }>('GET', `/api/models/${lowest.name}/versions/1/lineage`);
    assert.equal(chain.length, 1);
    assert.equal(chain[0]!.jobId, lowest.jobId);
    assert.match(chain[0]!.codeVersion!, /^0\.1\.0\+/);
    assert.equal(chain[0]!.data!.corpus, fx.corpus);
    assert.match(chain[0]!.data!.index!, /^[0-9a-f]{64}$/);
    assert.match(chain[0]!.data!.tokenizer!, /^[0-9a-f]{64}$/);
  });
});
