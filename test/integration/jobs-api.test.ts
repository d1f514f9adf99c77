/** Training jobs through the HTTP API and the CLI, on a real coordinator process. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, spawnProc, type LocalCluster } from '../../scripts/local-cluster.ts';
import type { JobRecord } from '../../coordinator/store/job-store.ts';

const COORDINATOR = new URL('../../bin/coordinator.js', import.meta.url).pathname;

const spec = {
  name: 'tiny',
  model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
  data: { corpus: 'demo' },
  training: { steps: 10, batchSize: 4, seqLen: 16 },
  parallel: { data: 2 },
};

describe('the jobs API and CLI', () => {
  let cluster: LocalCluster;
  let dir: string;
  before(async () => {
    cluster = await startCluster({ agents: 0 });
    dir = mkdtempSync(join(tmpdir(), 'jobs-cli-'));
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const cli = async (...args: string[]) => {
    const p = spawnProc([COORDINATOR, ...args, '--url', cluster.url, '--token', cluster.token], { stderr: 'capture' });
    const code = await p.exited;
    return { code, out: p.output.join('\n') };
  };

  test('a bad spec gets a 400 that names every bad field', async () => {
    const res = await fetch(`${cluster.url}/api/jobs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${cluster.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ...spec, model: { ...spec.model, nHead: 3 }, training: { ...spec.training, seqLen: 32, batchSize: 5 } }),
    });
    assert.equal(res.status, 400);
    const body = (await res.json()) as { error: { code: string; details: string[] } };
    assert.equal(body.error.code, 'CRD_ERR_BAD_REQUEST');
    const text = body.error.details.join('\n');
    assert.match(text, /\/model\/nEmbd 16 must be divisible by \/model\/nHead 3/);
    assert.match(text, /seqLen 32 exceeds \/model\/nCtx 16/);
    assert.match(text, /batchSize 5 must divide evenly over \/parallel\/data 2/);
  });

  test('coordinator submit prints every bad field of a bad spec and exits non-zero', async () => {
    const file = join(dir, 'bad.json');
    writeFileSync(file, JSON.stringify({ ...spec, training: { ...spec.training, steps: 0 }, extra: 1 }));
    const { code, out } = await cli('submit', file);
    assert.equal(code, 1);
    assert.match(out, /CRD_ERR_BAD_REQUEST/);
    assert.match(out, /- \/training\/steps/);
    assert.match(out, /- .*extra|additional/i);
  });

  test('a submitted job is listed, shown, cancelled once, and kept across a coordinator restart', async () => {
    const file = join(dir, 'job.json');
    writeFileSync(file, JSON.stringify(spec));
    const submitted = await cli('submit', file);
    assert.equal(submitted.code, 0, submitted.out);
    const id = /submitted (job-[0-9a-f]+)/.exec(submitted.out)![1]!;

    const listed = await cli('jobs');
    assert.match(listed.out, new RegExp(`${id}\\s+tiny\\s+queued`));
    const shown = await cli('job', id);
    assert.match(shown.out, /step 0 of 10/);

    const cancelled = await cluster.api<JobRecord>('POST', `/api/jobs/${id}/cancel`);
    assert.equal(cancelled.state, 'cancelled');
    const again = await fetch(`${cluster.url}/api/jobs/${id}/cancel`, { method: 'POST', headers: { authorization: `Bearer ${cluster.token}` } });
    assert.equal(again.status, 409);

    cluster.coordinator.child.kill('SIGTERM');
    await cluster.coordinator.exited;
    await cluster.startCoordinator();
    const { job } = await cluster.api<{ job: JobRecord }>('GET', `/api/jobs/${id}`);
    assert.equal(job.state, 'cancelled');
    assert.deepEqual(job.spec.model, spec.model);
  });

  test('an unknown job is a 404', async () => {
    const res = await fetch(`${cluster.url}/api/jobs/job-nope`, { headers: { authorization: `Bearer ${cluster.token}` } });
    assert.equal(res.status, 404);
  });
});
