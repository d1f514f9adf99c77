/**
 * A job survives losing an agent: kill -9 one of two agents mid-job. The coordinator notices at once (its
 * connection drops), stops the attempt on the survivor and re-queues the job; with `parallel: "auto"` it resumes
 * on the one agent left, from the last checkpoint (checkpoints do not depend on the number of agents), and its
 * losses are the uninterrupted run's, step for step, each recorded once.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { JobRecord } from '../../coordinator/store/job-store.ts';
import type { NodeView } from '../../coordinator/cluster/agent-hub.ts';
import { assertSameCurve, clusterFixture, runToEnd, untilJob } from '../support/jobs.ts';

describe('a job that loses one of its two agents', () => {
  const fx = clusterFixture('agent-loss', [20, 28], { agents: 2 });

  const spec = (name: string) => ({
    name,
    model: { vocabSize: 300, nCtx: 64, nLayer: 2, nHead: 2, nEmbd: 64 },
    data: { corpus: fx.corpus, heldOutFraction: 0.2 },
    training: { steps: 50, batchSize: 8, seqLen: 64, lr: 3e-3, checkpointEvery: 10 },
    parallel: 'auto',
  });
  test('resumes on the agent left, from the last checkpoint, with the uninterrupted losses', async () => {
    const reference = await runToEnd(fx.cluster, spec('ref'));
    assert.match(reference.job.stateReason, /registered/);
    const id = (await fx.cluster.api<JobRecord>('POST', '/api/jobs', spec('survivor'))).id;
    await untilJob(fx.cluster, id, (v) => v.checkpoints.length >= 1 && v.job.step >= 15 && v.job.step < 45);

    const { nodes } = await fx.cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes');
    const victim = nodes.find((n) => n.name === 'agent-1')!;
    fx.cluster.agents[1]!.child.kill('SIGKILL');

    const done = await untilJob(fx.cluster, id, (v) => v.job.state === 'succeeded');
    assert.equal(done.job.attempt, 2, 'the job was restarted once');
    const after = (await fx.cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes')).nodes.find((n) => n.id === victim.id)!;
    assert.equal(after.status, 'dead');
    assertSameCurve(done, reference, 50);
  });
});
