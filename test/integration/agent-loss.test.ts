/**
 * A job survives losing an agent: kill -9 one of two agents mid-job. The coordinator notices at once (its
 * connection drops), stops the attempt on the survivor and re-queues the job; with `parallel: "auto"` it resumes
 * on the one agent left, from the last checkpoint (checkpoints do not depend on the number of agents), and its
 * losses are the uninterrupted run's, step for step, each recorded once.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, type LocalCluster } from '../../scripts/local-cluster.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import type { CheckpointRecord, JobRecord, MetricRow } from '../../coordinator/job-store.ts';
import type { NodeView } from '../../coordinator/agent-hub.ts';

interface JobView {
  job: JobRecord;
  metrics: MetricRow[];
  checkpoints: CheckpointRecord[];
}

describe('a job that loses one of its two agents', () => {
  let cluster: LocalCluster;
  let dir: string;
  let corpus: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agent-loss-'));
    corpus = join(dir, 'corpus.txt');
    writeFileSync(corpus, loadDemoCorpus().documents.slice(20, 28).join('\n\n'));
    cluster = await startCluster({ agents: 2 });
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const spec = (name: string) => ({
    name,
    model: { vocabSize: 300, nCtx: 64, nLayer: 2, nHead: 2, nEmbd: 64 },
    data: { corpus, heldOutFraction: 0.2 },
    training: { steps: 50, batchSize: 8, seqLen: 64, lr: 3e-3, checkpointEvery: 10 },
    parallel: 'auto',
  });
  const view = (id: string) => cluster.api<JobView>('GET', `/api/jobs/${id}`);
  async function until(id: string, done: (v: JobView) => boolean, timeoutMs = 180_000): Promise<JobView> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await view(id);
      if (done(v)) return v;
      if (v.job.state === 'failed' || v.job.state === 'cancelled') assert.fail(`job ${v.job.state}: ${v.job.stateReason}`);
      if (Date.now() > deadline) assert.fail(`timed out; last state ${v.job.state} (${v.job.stateReason})`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const losses = (v: JobView) => v.metrics.filter((m) => m.kind === 'train').map((m) => [m.step, m.values.loss!] as const);

  test('resumes on the agent left, from the last checkpoint, with the uninterrupted losses', async () => {
    const reference = await until((await cluster.api<JobRecord>('POST', '/api/jobs', spec('ref'))).id, (v) => v.job.state === 'succeeded');
    assert.match(reference.job.stateReason, /registered/);
    const id = (await cluster.api<JobRecord>('POST', '/api/jobs', spec('survivor'))).id;
    await until(id, (v) => v.checkpoints.length >= 1 && v.job.step >= 15 && v.job.step < 45);

    const { nodes } = await cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes');
    const victim = nodes.find((n) => n.name === 'agent-1')!;
    cluster.agents[1]!.child.kill('SIGKILL');

    const done = await until(id, (v) => v.job.state === 'succeeded');
    assert.equal(done.job.attempt, 2, 'the job was restarted once');
    const after = (await cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes')).nodes.find((n) => n.id === victim.id)!;
    assert.equal(after.status, 'dead');
    const got = losses(done);
    assert.deepEqual(got.map(([s]) => s), Array.from({ length: 50 }, (_, i) => i + 1), 'every step exactly once');
    const ref = losses(reference);
    for (const [step, loss] of got) {
      const want = ref[step - 1]![1];
      assert.ok(Math.abs(loss - want) / Math.abs(want) <= 1e-4, `step ${step}: ${loss} vs uninterrupted ${want}`);
    }
  });
});
