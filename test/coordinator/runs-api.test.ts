/**
 * Experiment tracking and sweeps over the HTTP API of a real coordinator app (app.inject, no agents: jobs stay
 * queued, and their metrics and model versions are recorded straight into its stores).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../common/log.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import type { JobRecord } from '../../coordinator/store/job-store.ts';
import type { RunComparison, RunExport, RunSummary } from '../../coordinator/tracking/runs.ts';
import { createCoordinator, type Coordinator } from '../../coordinator/api/server.ts';
import type { SweepView } from '../../coordinator/tracking/sweeps.ts';
import type { LineageLink } from '../../coordinator/tracking/lineage.ts';

const TOKEN = 'runs-api-token';
const spec = (name: string, lr: number) => ({
  name,
  model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
  data: { corpus: 'demo' },
  training: { steps: 3, batchSize: 4, seqLen: 16, lr, minLr: 0 },
});
const MODEL_FILES = { 'config.json': Buffer.from('{}'), 'model.safetensors': Buffer.from('weights') };

describe('the runs and sweeps API', () => {
  let dir: string;
  let c: Coordinator;
  const open = () => (c = createCoordinator(resolveConfig({ dataDir: dir, token: TOKEN }), silentLogger));
  const call = async <T>(method: 'GET' | 'POST', url: string, payload?: unknown) => {
    const res = await c.app.inject({ method, url, headers: { authorization: `Bearer ${TOKEN}` }, ...(payload !== undefined ? { payload: payload as object } : {}) });
    return { status: res.statusCode, headers: res.headers, body: res.body, json: () => res.json() as T };
  };
  let a: JobRecord, b: JobRecord;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'runs-api-'));
    open();
    a = (await call<JobRecord>('POST', '/api/jobs', spec('run-a', 0.01))).json();
    b = (await call<JobRecord>('POST', '/api/jobs', spec('run-b', 0.001))).json();
    // run-a: steps 1–3 with held-out loss at 3; run-b: steps 1–2, no eval.
    for (const [job, losses] of [[a, [5, 4, 3]], [b, [5.5, 4.5]]] as const) {
      losses.forEach((loss, i) => {
        const rows: Array<{ kind: 'train' | 'eval'; atMs: number; values: Record<string, number> }> = [{ kind: 'train', atMs: 1000 + i, values: { loss, tokensPerS: 100 * (i + 1) } }];
        if (job === a && i === 2) rows.push({ kind: 'eval', atMs: 1000 + i, values: { loss: 3.2, perplexity: Math.exp(3.2) } });
        c.jobs.recordStep(job.id, i + 1, rows, 2000);
      });
    }
    c.jobs.setState(a.id, 'succeeded', 'done', 3000);
    const parent = await c.registry.register('run-base', MODEL_FILES, { jobId: 'job-earlier', metrics: { loss: 6 }, codeVersion: '0.0.9+abc', data: { corpus: 'demo', index: 'i', tokenizer: 't' } });
    const v = await c.registry.register('run-a', MODEL_FILES, { jobId: a.id, metrics: { loss: 3, evalLoss: 3.2 }, codeVersion: c.runs.get(a.id)!.codeVersion, parent: { name: 'run-base', version: parent.version } });
    c.jobs.setModelVersion(a.id, v.version, 3000);
  });
  after(async () => {
    await c?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('runs are listed with their final losses, throughput, model version and code version, and filtered', async () => {
    const { runs } = (await call<{ runs: RunSummary[] }>('GET', '/api/runs')).json();
    const ra = runs.find((r) => r.id === a.id)!, rb = runs.find((r) => r.id === b.id)!;
    assert.deepEqual([ra.state, ra.steps, ra.trainLoss, ra.evalLoss, ra.tokensPerS, ra.modelVersion, ra.kind], ['succeeded', 3, 3, 3.2, 200, 1, 'pretrain']);
    assert.ok(Math.abs(ra.evalPerplexity! - Math.exp(3.2)) < 1e-9);
    assert.equal(ra.finishedMs, 3000);
    assert.deepEqual([rb.state, rb.trainLoss, rb.evalLoss, rb.finishedMs], ['queued', 4.5, null, null]);
    assert.match(ra.codeVersion!, /^0\.1\.0\+([0-9a-f]{40}(-dirty)?|unknown)$/);

    assert.deepEqual((await call<{ runs: RunSummary[] }>('GET', '/api/runs?state=succeeded')).json().runs.map((r) => r.id), [a.id]);
    assert.deepEqual((await call<{ runs: RunSummary[] }>('GET', '/api/runs?name=run-b')).json().runs.map((r) => r.id), [b.id]);
    assert.equal((await call<{ runs: RunSummary[] }>('GET', '/api/runs?name=run-*')).json().runs.length, 2);
    const bad = await call<{ error: { code: string } }>('GET', '/api/runs?state=done');
    assert.equal(bad.status, 400);
    assert.equal(bad.json().error.code, 'CRD_ERR_BAD_REQUEST');
  });

  test('compare returns the spec differences and both loss series on one step axis', async () => {
    const cmp = (await call<RunComparison>('GET', `/api/runs/compare?ids=${a.id},${b.id}`)).json();
    assert.deepEqual(cmp.runs.map((r) => r.id), [a.id, b.id]);
    assert.deepEqual(cmp.specDiff.map((d) => d.path), ['name', 'training.lr']);
    assert.deepEqual(cmp.specDiff[1]!.values, { [a.id]: 0.01, [b.id]: 0.001 });
    assert.deepEqual(cmp.series.steps, [1, 2, 3]);
    assert.deepEqual(cmp.series.runs[0], { id: a.id, train: [5, 4, 3], eval: [null, null, 3.2] });
    assert.deepEqual(cmp.series.runs[1], { id: b.id, train: [5.5, 4.5, null], eval: [null, null, null] });

    assert.equal((await call('GET', `/api/runs/compare?ids=${a.id}`)).status, 400, 'one run is no comparison');
    const missing = await call<{ error: { code: string; message: string } }>('GET', `/api/runs/compare?ids=${a.id},job-nope`);
    assert.equal(missing.status, 404);
    assert.match(missing.json().error.message, /no run job-nope/);
  });

  test('export as CSV is a download with a header and one row per recorded step and kind', async () => {
    const res = await call('GET', `/api/runs/${a.id}/export?format=csv`);
    assert.equal(res.status, 200);
    assert.equal(res.headers['content-disposition'], `attachment; filename="${a.id}.csv"`);
    assert.match(String(res.headers['content-type']), /^text\/csv/);
    const lines = res.body.trimEnd().split('\n');
    assert.equal(lines[0], 'step,kind,atMs,loss,tokensPerS,perplexity');
    assert.deepEqual(lines.slice(1).map((l) => l.split(',').slice(0, 2).join()), ['1,train', '2,train', '3,eval', '3,train']);
    assert.equal(lines.length, 1 + 4);
  });

  test('export as JSON holds the spec, code version, artifacts and the full history', async () => {
    const res = await call<RunExport>('GET', `/api/runs/${a.id}/export?format=json`);
    assert.equal(res.headers['content-disposition'], `attachment; filename="${a.id}.json"`);
    const out = res.json();
    assert.equal(out.spec.training.lr, 0.01);
    assert.equal(out.codeVersion, out.run.codeVersion);
    assert.equal(out.metrics.length, 4);
    assert.deepEqual([out.artifacts.model?.name, out.artifacts.model?.version], ['run-a', 1]);
    assert.ok(out.artifacts.model!.files['model.safetensors']!.sha256);
    assert.deepEqual(out.artifacts.checkpoints, []);
    assert.equal((await call('GET', `/api/runs/${a.id}/export?format=xml`)).status, 400);
    assert.equal((await call('GET', '/api/runs/job-nope/export')).status, 404);
  });

  test('a version\'s lineage walks back through its parents', async () => {
    const res = (await call<{ chain: LineageLink[]; truncated: boolean }>('GET', '/api/models/run-a/versions/latest/lineage')).json();
    assert.deepEqual(res.chain.map((l) => `${l.name}@${l.version}`), ['run-a@1', 'run-base@1']);
    assert.equal(res.chain[0]!.jobId, a.id);
    assert.deepEqual(res.chain[1]!.data, { corpus: 'demo', index: 'i', tokenizer: 't' });
    assert.equal(res.chain[1]!.codeVersion, '0.0.9+abc');
    assert.equal(res.truncated, false);
    assert.equal((await call('GET', '/api/models/nothing/versions/1/lineage')).status, 404);
  });

  test('a bad sweep gets one 400 listing every problem, and nothing is submitted', async () => {
    const before = c.jobs.list().length;
    const res = await call<{ error: { code: string; details: string[] } }>('POST', '/api/sweeps', {
      name: 'bad', base: spec('x', 0.01), strategy: 'grid', budget: 4,
      parameters: { 'training.nope': { values: [1] }, 'training.seqLen': { values: [16, 999] } },
    });
    assert.equal(res.status, 400);
    assert.match(res.json().error.details.join('\n'), /training\.nope names no field/);
    const trials = await call<{ error: { details: string[] } }>('POST', '/api/sweeps', {
      name: 'bad', base: spec('x', 0.01), strategy: 'grid', budget: 4, parameters: { 'training.seqLen': { values: [16, 999, 17] } },
    });
    assert.equal(trials.status, 400);
    const details = trials.json().error.details.join('\n');
    assert.match(details, /trial 2 \(training\.seqLen=999\): \/training\/seqLen/);
    assert.match(details, /trial 3 \(training\.seqLen=17\): \/training\/seqLen 17 exceeds/);
    assert.equal(c.jobs.list().length, before);
  });

  test('a sweep keeps parallelTrials trials in flight, survives a restart, and cancels its running trials', async () => {
    const created = await call<SweepView>('POST', '/api/sweeps', {
      name: 'lr', base: spec('x', 0.01), strategy: 'grid', budget: 3, parameters: { 'training.lr': { values: [0.03, 0.01, 0.003] } },
    });
    assert.equal(created.status, 201);
    const s = created.json();
    assert.deepEqual([s.state, s.totalTrials, s.trials.length, s.trials[0]!.name, s.trials[0]!.params], ['running', 3, 1, 'lr-t1', { 'training.lr': 0.03 }]);
    assert.equal(c.jobs.get(s.trials[0]!.jobId)!.spec.training.lr, 0.03);

    // Trial 1 ends (as if trained, with a held-out loss): trial 2 is submitted.
    c.jobs.recordStep(s.trials[0]!.jobId, 3, [{ kind: 'train', atMs: 1, values: { loss: 4 } }, { kind: 'eval', atMs: 1, values: { loss: 4.1 } }], 1);
    await call('POST', `/api/jobs/${s.trials[0]!.jobId}/cancel`); // a trial that ends any way frees its slot
    const afterOne = (await call<SweepView>('GET', `/api/sweeps/${s.id}`)).json();
    assert.deepEqual(afterOne.trials.map((t) => [t.name, t.jobState]), [['lr-t1', 'cancelled'], ['lr-t2', 'queued']]);

    await c.close();
    open();
    const reopened = (await call<SweepView>('GET', `/api/sweeps/${s.id}`)).json();
    assert.equal(reopened.state, 'running');
    assert.deepEqual(reopened.trials.map((t) => t.idx), [1, 2], 'nothing submitted twice after the restart');

    const cancelled = (await call<SweepView>('POST', `/api/sweeps/${s.id}/cancel`)).json();
    assert.equal(cancelled.state, 'cancelled');
    assert.equal(c.jobs.get(reopened.trials[1]!.jobId)!.state, 'cancelled', 'its running trial is cancelled');
    assert.equal(cancelled.trials.length, 2, 'no trial submitted after the cancel');
    assert.equal((await call('POST', `/api/sweeps/${s.id}/cancel`)).status, 409);
    assert.equal((await call('GET', '/api/sweeps/sweep-nope')).status, 404);
    const { sweeps } = (await call<{ sweeps: SweepView[] }>('GET', '/api/sweeps')).json();
    assert.ok(sweeps.some((x) => x.id === s.id));
  });
});
