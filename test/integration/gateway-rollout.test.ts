/**
 * Shadow mode and rollback on a real gateway process serving real GPT versions from a registry folder: the teacher-
 * forced score of an identical version matches the primary's own log-probabilities (KV-cache decode vs one echo
 * forward), a different version diverges, and the CLI promotes and rolls back while requests keep succeeding.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { trainBpe } from '../../model/tokenizer.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { makeRegistry, startGateway as startGatewayProcess } from '../../bench/support/gateway-fixture.ts';
import { runCli } from '../../gateway/cli.ts';
import { until } from '../support/until.ts';

await tf.setBackend('cpu');
const ADMIN = 'ops-key';

/** A registry with tiny v1 (seed 11), v2 (seed 11 again: an identical retrain) and v3 (seed 12: another model). */
async function registry(dir: string): Promise<string> {
  const tokenizer = await trainBpe([loadDemoCorpus().documents[5]!], { vocabSize: 300 });
  const config = { vocabSize: 300, nCtx: 64, nLayer: 2, nHead: 2, nEmbd: 16 };
  return (await makeRegistry(dir, 'tiny', config, tokenizer, [11, 11, 12])).registry;
}

async function startGateway(t: TestContext, args: string[]): Promise<string> {
  const gateway = await startGatewayProcess(['--admin-key', ADMIN, ...args], { MESHTRAIN_BACKEND: 'cpu' });
  t.after(() => gateway.kill());
  return gateway.url;
}

test('a real gateway mirrors to GPT shadows, scores them teacher-forced, and promotes and rolls back with no failed request', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-rollout-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const deployments = join(dir, 'deployments.json');
  writeFileSync(deployments, JSON.stringify([{ name: 'chat', primary: { model: 'tiny', version: 1 }, shadows: [{ model: 'tiny', version: 2, percent: 100 }, { model: 'tiny', version: 3, percent: 100 }] }]));
  const url = await startGateway(t, ['--registry', await registry(dir), '--deployments', deployments, '--audit-log', join(dir, 'audit.jsonl')]);
  const complete = async (seed: number) => {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'chat', prompt: 'The state of the Union', max_tokens: 10, temperature: 1, seed }),
    });
    return { status: res.status, version: res.headers.get('x-meshtrain-version'), body: await res.text() };
  };
  const N = 6;
  for (let i = 0; i < N; i++) {
    const r = await complete(i);
    assert.equal(r.status, 200, r.body);
    assert.equal(r.version, 'tiny@v1');
  }
  const comparison = async () => (await (await fetch(`${url}/admin/deployments/chat/comparison`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as any;
  // Shadows are scored after the primary answers: wait for every one of the N requests to be compared.
  let c = await comparison();
  await until(`both shadows to compare all ${N} requests`, async () => !(c = await comparison()).shadows.some((s: any) => s.comparison.count < N), 120_000, 20)
    .catch((err: Error) => assert.fail(`${err.message}: ${JSON.stringify(c.shadows.map((s: any) => s.comparison.count))}`));
  const [same, other] = c.shadows;
  assert.equal(same.comparison.count, N);
  assert.equal(same.comparison.identicalRate, 1, 'an identical retrain answers the same requests identically');
  assert.equal(same.comparison.logprobCount, N);
  assert.ok(Math.abs(same.comparison.meanLogprobDiff) < 1e-4, `the echo forward scores the primary's tokens as its KV-cache decode did: ${same.comparison.meanLogprobDiff}`);
  assert.equal(other.comparison.count, N);
  assert.ok(other.comparison.meanTokenAgreement < 1, `another model disagrees somewhere: ${other.comparison.meanTokenAgreement}`);
  // Two freshly initialised models are both close to uniform, so their log-probs differ little; but they differ.
  const [d1, d2] = [Math.abs(same.comparison.meanLogprobDiff), Math.abs(other.comparison.meanLogprobDiff)];
  assert.ok(d2 > 1e-5 && d2 > 100 * d1, `another model scores the primary's tokens differently: ${d2} vs ${d1} for the same one`);

  // Promote and roll back through the CLI while a client keeps sending: every request succeeds. Each switch is
  // followed by a request answered by the version it switched to, seen rather than slept for.
  let stop = false;
  const answers: Array<{ status: number; version: string | null }> = [];
  const load = (async () => {
    for (let i = 0; !stop; i++) answers.push(await complete(100 + i));
  })();
  const answeredBy = (version: string, from: number) => async () => answers.slice(from).some((a) => a.version === version);
  const errs: string[] = [];
  const cli = (args: string[]) => runCli([...args, '--url', url, '--admin-key', ADMIN], { out: () => {}, err: (e) => errs.push(e) });
  await until('a request under load before the switches', async () => answers.length > 0, 60_000, 10);
  assert.equal(await cli(['promote', 'chat', '--version', 'tiny@v3', '--reason', 'try v3']), 0, errs.join(''));
  await until('a request answered by tiny@v3 after the promotion', answeredBy('tiny@v3', answers.length), 60_000, 10);
  const before = performance.now();
  const sentBeforeRollback = answers.length;
  assert.equal(await cli(['rollback', 'chat', '--reason', 'v3 diverges']), 0, errs.join(''));
  const rollbackMs = performance.now() - before;
  await until('a request answered by tiny@v1 after the rollback', answeredBy('tiny@v1', sentBeforeRollback), 60_000, 10);
  stop = true;
  await load;
  assert.deepEqual(answers.filter((a) => a.status !== 200), [], 'no failed request');
  // The rollback goes back to a version still loaded: it should take milliseconds. The bound only catches a switch
  // that waits on something (a reload, a drain, a timeout), with room for a loaded machine.
  assert.ok(rollbackMs < 10_000, `rollback took ${rollbackMs} ms`);
  assert.equal((await complete(1)).version, 'tiny@v1');
});
