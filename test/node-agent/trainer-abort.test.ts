import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { progressOf, runRanks, tinyDataset, tinySpec, type Dataset } from './trainer-support.ts';

let ds: Dataset;
before(async () => {
  ds = await tinyDataset();
});
after(async () => {
  await rm(ds.root, { recursive: true, force: true });
});

test('aborting mid-run stops both ranks promptly with job.finished ok:false carrying the reason', async () => {
  const stop = new AbortController();
  let abortedAt = 0;
  const runs = await runRanks({
    world: 2,
    spec: tinySpec({ steps: 10_000 }),
    ds,
    signal: stop.signal,
    onSend: (rank, m) => {
      if (rank === 0 && m.type === 'job.progress' && m.step === 3) {
        abortedAt = performance.now();
        stop.abort('job.stop: cancelled by the user');
      }
    },
  });
  const ms = performance.now() - abortedAt;
  assert.ok(abortedAt > 0);
  assert.ok(ms < 2000, `took ${ms.toFixed(0)} ms to stop`);
  for (const r of runs) {
    assert.equal(r.finished.ok, false);
    assert.ok(r.finishedAt - abortedAt < 1000, `rank ${r.finished.rank} took ${(r.finishedAt - abortedAt).toFixed(0)} ms to stop`);
    assert.match(r.finished.error!, /stopped: job\.stop: cancelled by the user/);
    // rank 0 reports step 3 after the world all-reduce; its peer may still be applying that update
    assert.ok(r.finished.step >= 2 && r.finished.step <= 4, `stopped at step ${r.finished.step}`);
    assert.equal(r.messages.at(-1), r.finished);
  }
  assert.ok(progressOf(runs[0]!.messages).length <= 4);
});

test('a job stopped before it starts ends at once with the reason', async () => {
  const stop = new AbortController();
  stop.abort(new Error('group released'));
  const t0 = performance.now();
  const [r] = await runRanks({ world: 1, spec: tinySpec(), ds, signal: stop.signal });
  assert.ok(performance.now() - t0 < 2000);
  assert.equal(r!.finished.ok, false);
  assert.match(r!.finished.error!, /stopped: group released/);
  assert.equal(r!.finished.step, 0);
});

test('stopping one rank ends it at once; its peer fails by the ring timeout instead of hanging', async () => {
  const stop1 = new AbortController();
  const t0 = performance.now();
  let stoppedAt = 0;
  const runs = await runRanks({
    world: 2,
    spec: tinySpec({ steps: 10_000 }),
    ds,
    signals: [new AbortController().signal, stop1.signal],
    idleTimeoutMs: 1500,
    onSend: (rank, m) => {
      if (rank === 0 && m.type === 'job.progress' && m.step === 2) {
        stoppedAt = performance.now();
        stop1.abort('job.stop: re-planned');
      }
    },
  });
  assert.ok(stoppedAt > 0);
  assert.equal(runs[1]!.finished.ok, false);
  assert.match(runs[1]!.finished.error!, /stopped: job\.stop: re-planned/);
  assert.ok(runs[1]!.finishedAt - stoppedAt < 1000, `the stopped rank took ${(runs[1]!.finishedAt - stoppedAt).toFixed(0)} ms`);
  assert.equal(runs[0]!.finished.ok, false);
  assert.match(runs[0]!.finished.error!, /timed out|no progress|collective/i);
  assert.ok(performance.now() - t0 < 15_000, 'no hang');
});

test('a dataset without index.json fails with an error naming it', async () => {
  const data = { ...ds.data };
  delete data['index.json'];
  const [r] = await runRanks({ world: 1, spec: tinySpec(), ds: { ...ds, data } });
  assert.equal(r!.finished.ok, false);
  assert.match(r!.finished.error!, /index\.json/);
});
