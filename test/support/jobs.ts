/** Shared by the training integration tests: a small real corpus, polling a job, and comparing loss curves. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { loadDemoCorpus } from '../../model/corpus.ts';
import type { CheckpointRecord, JobRecord, MetricRow } from '../../coordinator/store/job-store.ts';
import { startCluster, type ClusterOptions, type LocalCluster } from '../../scripts/local-cluster.ts';

export interface JobView {
  job: JobRecord;
  metrics: MetricRow[];
  checkpoints: CheckpointRecord[];
}

/** Writes speeches [from, to) of the demo corpus to `dir`/corpus.txt (blank-line separated) and returns its path. */
export function writeCorpus(dir: string, from: number, to: number): string {
  const path = join(dir, 'corpus.txt');
  writeFileSync(path, loadDemoCorpus().documents.slice(from, to).join('\n\n'));
  return path;
}

export interface ClusterFixture {
  readonly cluster: LocalCluster;
  readonly corpus: string;
}

/**
 * For the describe block it is called in: a temporary folder holding speeches [from, to) of the demo corpus
 * (writeCorpus) and a local cluster, started before the block's tests and stopped and deleted after them.
 */
export function clusterFixture(prefix: string, [from, to]: readonly [number, number], options: ClusterOptions): ClusterFixture {
  let cluster: LocalCluster | undefined;
  let dir = '', corpus = '';
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), `${prefix}-`));
    corpus = writeCorpus(dir, from, to);
    cluster = await startCluster(options);
  });
  after(async () => {
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return {
    get cluster() {
      if (!cluster) throw new Error('the cluster is started in the before hook');
      return cluster;
    },
    get corpus() {
      return corpus;
    },
  };
}

/** Polls GET /api/jobs/:id until `done`; fails at once if the job fails or is cancelled. */
export async function untilJob(cluster: LocalCluster, id: string, done: (v: JobView) => boolean, timeoutMs = 180_000): Promise<JobView> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // The coordinator may be restarting: a refused request is retried, not a failure.
    const v = await cluster.api<JobView>('GET', `/api/jobs/${id}`).catch(() => undefined);
    if (v && done(v)) return v;
    if (v && (v.job.state === 'failed' || v.job.state === 'cancelled')) assert.fail(`job ${v.job.state}: ${v.job.stateReason}`);
    if (Date.now() > deadline) assert.fail(`timed out; last state ${v?.job.state} (${v?.job.stateReason})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Submits a job spec and waits for it to succeed. */
export async function runToEnd(cluster: LocalCluster, spec: object, timeoutMs = 180_000): Promise<JobView> {
  const job = await cluster.api<JobRecord>('POST', '/api/jobs', spec);
  return untilJob(cluster, job.id, (v) => v.job.state === 'succeeded', timeoutMs);
}

/** [step, loss] of every training step recorded, in order. */
export function trainLosses(v: Pick<JobView, 'metrics'>): Array<readonly [number, number]> {
  return v.metrics.filter((m) => m.kind === 'train').map((m) => [m.step, m.values.loss!] as const);
}

/** Every step 1…steps recorded exactly once, each loss within relative `tol` of the reference run's. */
export function assertSameCurve(got: JobView, reference: JobView, steps: number, tol = 1e-4): void {
  const losses = trainLosses(got);
  assert.deepEqual(losses.map(([s]) => s), Array.from({ length: steps }, (_, i) => i + 1), 'every step exactly once');
  const ref = trainLosses(reference);
  for (const [step, loss] of losses) {
    const want = ref[step - 1]![1];
    assert.ok(Math.abs(loss - want) / Math.abs(want) <= tol, `step ${step}: ${loss} vs reference ${want}`);
  }
}
