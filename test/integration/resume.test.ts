/**
 * A job survives its coordinator: kill -9 the coordinator mid-job, corrupt the newest checkpoint while it is down,
 * start it again on the same data folder. The agents reconnect on their own, the job resumes from the last GOOD
 * checkpoint, and its loss curve is the uninterrupted run's, step for step, with every step recorded once.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { JobRecord } from '../../coordinator/store/job-store.ts';
import { assertSameCurve, clusterFixture, runToEnd, untilJob } from '../support/jobs.ts';

describe('a job whose coordinator is killed mid-run', () => {
  const fx = clusterFixture('resume', [10, 18], { agents: 2 });

  const spec = (name: string) => ({
    name,
    model: { vocabSize: 300, nCtx: 64, nLayer: 2, nHead: 2, nEmbd: 64 },
    data: { corpus: fx.corpus, heldOutFraction: 0.2 },
    training: { steps: 60, batchSize: 8, seqLen: 64, lr: 3e-3, checkpointEvery: 10 },
    parallel: { data: 2 },
  });
  test('resumes from the last good checkpoint and continues the same loss curve, counting every step once', async () => {
    const reference = await runToEnd(fx.cluster, spec('ref'));
    const id = (await fx.cluster.api<JobRecord>('POST', '/api/jobs', spec('resumed'))).id;
    const mid = await untilJob(fx.cluster, id, (v) => v.checkpoints.length >= 2 && v.job.step < 55);
    const newest = mid.checkpoints[0]!;

    fx.cluster.coordinator.child.kill('SIGKILL');
    await fx.cluster.coordinator.exited;
    // While it is down, the newest checkpoint's weights rot on disk: the resume must notice and use the one before.
    const digest = newest.files['model.safetensors']!;
    writeFileSync(join(fx.cluster.dataDir, 'artifacts', 'sha256', digest.slice(0, 2), digest), 'not the weights any more');
    await fx.cluster.startCoordinator();

    const done = await untilJob(fx.cluster, id, (v) => v.job.state === 'succeeded');
    assert.equal(done.job.attempt, 2, 'one restart, one more attempt');
    assert.ok(
      fx.cluster.coordinator.output.some((l) => l.includes(`checkpoint of step ${newest.step} is unusable`)),
      'the corrupt checkpoint was noticed',
    );
    assertSameCurve(done, reference, 60); // resumed from the checkpoint before the corrupt one
  });
});
