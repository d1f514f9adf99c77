/**
 * node scripts/run-tests.mjs integration/diloco
 *
 * DiLoCo (training.diloco) on a real coordinator and two agents on loopback: each replica trains innerSteps steps
 * alone, then the replicas all-reduce a pseudo-gradient and take one outer step. The job trains (its loss falls),
 * the agents' data-ring traffic is one all-reduce per round instead of one per step, both replicas continue from the
 * same weights after every round (each logs a checksum of them), and those are the weights registered. An agent
 * killed mid-round costs that round only: the elastic job resumes on the agent left from the last round's checkpoint.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { JobRecord } from '../../coordinator/store/job-store.ts';
import type { NodeView } from '../../coordinator/cluster/agent-hub.ts';
import { weightsChecksum } from '../../model/diloco.ts';
import { flatFromStateDict, paramLayout } from '../../model/params.ts';
import { readSafetensors } from '../../model/safetensors.ts';
import { scrape, valueOf } from '../support/prometheus.ts';
import { clusterFixture, runToEnd, trainLosses, untilJob } from '../support/jobs.ts';

const MODEL = { vocabSize: 300, nCtx: 64, nLayer: 2, nHead: 2, nEmbd: 64 };
const STEPS = 30, H = 10;

describe('DiLoCo on two agents', () => {
  const fx = clusterFixture('diloco', [20, 28], { agents: 2, logLevel: 'info', stderr: 'capture' });

  const spec = (name: string) => ({
    name,
    model: MODEL,
    data: { corpus: fx.corpus, heldOutFraction: 0.2 },
    training: { steps: STEPS, batchSize: 8, seqLen: 64, lr: 3e-3, checkpointEvery: H, evalEvery: 2 * H, diloco: { innerSteps: H } },
    parallel: { data: 2, minData: 1 },
  });

  /** Each agent's logged checksum of the weights it continues from after each outer step of job `id`: [outer step, hex]. */
  const checksums = (agent: number, id: string): Array<[number, string]> =>
    fx.cluster.agents[agent]!.output.filter((l) => l.includes(id)).flatMap((l) => {
      const m = /DiLoCo outer step (\d+), Δ all-reduce \d+ ms, weights #([0-9a-f]{8})/.exec(l);
      return m ? [[Number(m[1]), m[2]!] as [number, string]] : [];
    });

  const storedFile = (digest: string) => join(fx.cluster.dataDir, 'artifacts', 'sha256', digest.slice(0, 2), digest);

  test('trains with one pseudo-gradient all-reduce per round, both replicas agreeing on the weights it registers', async () => {
    const v = await runToEnd(fx.cluster, spec('diloco'));
    const id = v.job.id;
    assert.equal(v.job.attempt, 1);
    const losses = trainLosses(v);
    assert.deepEqual(losses.map(([s]) => s), Array.from({ length: STEPS }, (_, i) => i + 1), 'every step once');
    const mean = (xs: Array<readonly [number, number]>) => xs.reduce((a, [, l]) => a + l, 0) / xs.length;
    assert.ok(mean(losses.slice(-5)) < mean(losses.slice(0, 5)) - 0.5, `loss falls: ${mean(losses.slice(0, 5))} → ${mean(losses.slice(-5))}`);
    const evals = v.metrics.filter((m) => m.kind === 'eval');
    assert.deepEqual(evals.map((m) => m.step), [20, 30], 'held-out loss on synchronisation steps, on the outer weights');
    assert.ok(evals.every((m) => m.values.loss! > 0 && m.values.loss! < losses[0]![1]), 'and below the first step\'s loss');

    // Data-ring traffic: only the steps that end a round send, one pseudo-gradient each.
    const train = v.metrics.filter((m) => m.kind === 'train');
    const paramCount = train[0]!.values.paramCount!;
    const synced = train.filter((m) => m.values.outerSyncBytes !== undefined);
    assert.deepEqual(synced.map((m) => [m.step, m.values.outerSteps]), [[10, 1], [20, 2], [30, 3]]);
    assert.ok(synced.every((m) => m.values.outerSyncBytes === paramCount * 4), 'a ring of two: each rank sends the f32 buffer once');
    const { families } = await scrape(`${fx.cluster.url}/metrics`);
    const sent = valueOf(families, 'meshtrain_job_allreduce_bytes_total', { job: id });
    const plainDataParallel = STEPS * 2 * paramCount * 4; // every step, both ranks
    assert.equal(sent, (STEPS / H) * 2 * paramCount * 4);
    assert.equal(sent / plainDataParallel, 1 / H, 'one innerSteps-th of plain data parallelism');

    // Both replicas continue from bit-identical weights after every outer step, and the last ones are registered.
    const a = checksums(0, id), b = checksums(1, id);
    assert.deepEqual(a.map(([n]) => n), [1, 2, 3]);
    assert.deepEqual(a, b, 'both agents hold the same weights after each synchronisation');
    const final = v.checkpoints.find((c) => c.step === STEPS)!;
    assert.ok(final.files['outer.safetensors'], 'the checkpoint holds the outer momentum');
    const registered = readSafetensors(readFileSync(join(fx.cluster.dataDir, 'registry', 'diloco', `v${v.job.modelVersion}`, 'model.safetensors'))).tensors;
    const checkpointed = readSafetensors(readFileSync(storedFile(final.files['model.safetensors']!))).tensors;
    const flat = flatFromStateDict(registered, paramLayout(MODEL));
    assert.deepEqual(flat, flatFromStateDict(checkpointed, paramLayout(MODEL)), 'the registered weights are the final checkpoint\'s');
    assert.equal(weightsChecksum(flat).toString(16).padStart(8, '0'), a.at(-1)![1], 'and those are the outer weights both replicas ended with');
  });

  test('an agent killed mid-round costs that round: the job resumes on the agent left from the last round\'s checkpoint', async () => {
    const id = (await fx.cluster.api<JobRecord>('POST', '/api/jobs', spec('diloco-loss'))).id;
    const mid = await untilJob(fx.cluster, id, (v) => v.checkpoints.length >= 1 && v.job.step % H >= 3 && v.job.step < STEPS - H);
    const lastRound = Math.max(...mid.checkpoints.map((c) => c.step));
    const { nodes } = await fx.cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes');
    const victim = nodes.find((n) => n.name === 'agent-1')!;
    fx.cluster.agents[1]!.child.kill('SIGKILL');

    const resumed = await untilJob(fx.cluster, id, (v) => /^attempt 2: \d+×.*(resuming|scratch)/.test(v.job.stateReason) || v.job.state === 'succeeded');
    const m = /^attempt 2: 1×1×1 .*resuming from step (\d+)/.exec(resumed.job.stateReason);
    assert.ok(m, `resumed on one agent from a checkpoint: ${resumed.job.stateReason}`);
    const from = Number(m[1]);
    assert.ok(from % H === 0 && from >= lastRound, `from a round's end (step ${from}; the newest before the kill was ${lastRound})`);

    const done = await untilJob(fx.cluster, id, (v) => v.job.state === 'succeeded');
    assert.equal(done.job.attempt, 2);
    assert.deepEqual(trainLosses(done).map(([s]) => s), Array.from({ length: STEPS }, (_, i) => i + 1), 'every step once');
    const after = (await fx.cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes')).nodes.find((n) => n.id === victim.id)!;
    assert.equal(after.status, 'dead');
    // One replica left: the whole batch is its own, and it still takes outer steps, counted on from the checkpoint.
    const synced = done.metrics.filter((r) => r.kind === 'train' && r.step > from && r.values.outerSteps !== undefined);
    assert.deepEqual(synced.map((r) => r.values.outerSteps), Array.from({ length: (STEPS - from) / H }, (_, i) => from / H + i + 1));
    assert.ok(synced.every((r) => r.values.outerSyncBytes === 0), 'one replica sends nothing');
  });
});
