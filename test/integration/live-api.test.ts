/**
 * The coordinator's live view on real processes: dashboard sessions, the server-sent event feed during a job,
 * the per-agent step breakdown with a real straggler (one agent computes on the slow reference 'cpu' backend),
 * `coordinator job ID --watch`, and a gateway that announces itself and has its deployment calls relayed.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { JobLive } from '../../coordinator/jobs/runner.ts';
import type { MetricRow } from '../../coordinator/store/job-store.ts';
import { spawnProc, waitForLine, type Proc } from '../../scripts/local-cluster.ts';
import { clusterFixture, untilJob } from '../support/jobs.ts';
import { until } from '../support/until.ts';

const COORDINATOR = new URL('../../bin/coordinator.js', import.meta.url).pathname;
const GATEWAY = new URL('../../bin/gateway.js', import.meta.url).pathname;

/** A minimal EventSource: collects `event`/`data` pairs from GET /api/events until closed. */
function openFeed(url: string, cookie: string): { events: Array<{ event: string; data: any }>; close(): void; done: Promise<void> } {
  const events: Array<{ event: string; data: any }> = [];
  const ac = new AbortController();
  const done = (async () => {
    const res = await fetch(`${url}/api/events`, { headers: { cookie }, signal: ac.signal });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
    const decoder = new TextDecoder();
    let buf = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      let end: number;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (event && data) events.push({ event, data: JSON.parse(data) });
      }
    }
  })().catch((err: Error) => {
    if (err.name !== 'AbortError') throw err;
  });
  return { events, close: () => ac.abort(), done };
}

describe('the live view of a cluster', () => {
  const fx = clusterFixture('live-api', [0, 8], { agents: 0 });
  let cookie = '';
  before(async () => {
    fx.cluster.startAgent('fast');
    fx.cluster.startAgent('slow', ['--backend', 'cpu']); // the reference backend: several times slower
    await fx.cluster.waitForNodes(2, 60_000);
  });

  test('a dashboard session comes from the cluster token and guards changes against cross-site requests', async () => {
    const { url, token } = fx.cluster;
    const login = (t: string) => fetch(`${url}/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: t }) });
    const wrong = await login(`${token}x`);
    assert.equal(wrong.status, 401);
    assert.equal(wrong.headers.get('set-cookie'), null);
    assert.equal((await fetch(`${url}/api/nodes`)).status, 401); // no data without a token or a session

    const ok = await login(token);
    assert.equal(ok.status, 200);
    const setCookie = ok.headers.get('set-cookie') ?? '';
    assert.match(setCookie, /HttpOnly; SameSite=Strict/);
    cookie = setCookie.split(';')[0]!;
    assert.deepEqual(await (await fetch(`${url}/api/session`, { headers: { cookie } })).json(), { authenticated: true });
    assert.equal((await fetch(`${url}/api/nodes`, { headers: { cookie } })).status, 200);

    const submit = (headers: Record<string, string>) => fetch(`${url}/api/jobs`, { method: 'POST', headers: { cookie, 'content-type': 'application/json', ...headers }, body: '{}' });
    const forged = await submit({});
    assert.equal(forged.status, 403);
    assert.equal(((await forged.json()) as { error: { code: string } }).error.code, 'CRD_ERR_FORBIDDEN');
    assert.equal((await submit({ 'x-requested-with': 'meshtrain' })).status, 400); // through the guard, to validation

    const other = (await login(token)).headers.get('set-cookie')!.split(';')[0]!;
    await fetch(`${url}/api/logout`, { method: 'POST', headers: { cookie: other } });
    assert.equal((await fetch(`${url}/api/nodes`, { headers: { cookie: other } })).status, 401);
  });

  test('a job streams its steps, per-agent breakdown, links and straggler live, and `job --watch` follows it', async () => {
    const { cluster, corpus } = fx;
    assert.ok(cookie, 'the session test runs first');
    const feed = openFeed(cluster.url, cookie);
    const steps = 10;
    const job = await cluster.api<{ id: string }>('POST', '/api/jobs', {
      name: 'live-tiny',
      model: { vocabSize: 300, nCtx: 32, nLayer: 2, nHead: 2, nEmbd: 32 },
      data: { corpus, heldOutFraction: 0.2 },
      training: { steps, batchSize: 8, seqLen: 32, lr: 3e-3, warmupSteps: 2, evalEvery: 5, evalBatches: 2, checkpointEvery: 5 },
      parallel: { data: 2 },
    });
    const watch = spawn(process.execPath, [COORDINATOR, 'job', job.id, '--watch', '--url', cluster.url, '--token', cluster.token], { stdio: ['ignore', 'pipe', 'pipe'] });
    const watchLines: string[] = [];
    createInterface({ input: watch.stdout! }).on('line', (l) => watchLines.push(l));
    const watchExit = new Promise<number | null>((resolve) => watch.once('exit', resolve));

    await untilJob(cluster, job.id, (v) => v.job.state === 'succeeded');
    assert.equal(await watchExit, 0, `job --watch exits 0 for a job that succeeded:\n${watchLines.join('\n')}`);
    // The feed coalesces job changes and flushes them every FLUSH_MS: wait for the flush that carries the success.
    // Metrics and checkpoints go out as they happen, all before the job succeeds, so they are in the feed by then.
    const succeededInFeed = () => feed.events.some((e) => e.event === 'jobs' && e.data.jobs.some((j: { id: string; state: string }) => j.id === job.id && j.state === 'succeeded'));
    await until('the feed to show the job succeeded', async () => succeededInFeed(), 30_000, 50);
    feed.close();
    await feed.done;

    const of = (name: string) => feed.events.filter((e) => e.event === name).map((e) => e.data);
    for (const name of ['hello', 'nodes', 'jobs', 'models', 'gateways']) assert.ok(of(name).length > 0, `a ${name} snapshot on connect`);
    const rows: MetricRow[] = of('metrics').filter((m) => m.jobId === job.id).flatMap((m) => m.rows);
    assert.deepEqual([...new Set(rows.filter((r) => r.kind === 'train').map((r) => r.step))], Array.from({ length: steps }, (_, i) => i + 1));
    assert.deepEqual(rows.filter((r) => r.kind === 'eval').map((r) => r.step), [5, 10]);
    assert.deepEqual(of('checkpoint').filter((c) => c.jobId === job.id).map((c) => c.checkpoint.step), [5, 10]);
    assert.equal(of('jobs').at(-1).jobs.find((j: { id: string }) => j.id === job.id).state, 'succeeded');

    // While it ran, each agent had a role, and the live view named the slow one.
    const busy = of('nodes').find((n) => n.nodes.every((x: { role: unknown }) => x.role));
    assert.ok(busy, 'a nodes event showed both agents with a role');
    assert.deepEqual(busy.nodes.map((n: { role: { rank: number } }) => n.role.rank).sort(), [0, 1]);
    const lives: JobLive[] = of('live').filter((l) => l.jobId === job.id);
    const last = lives.filter((l) => l.ranks.length === 2).at(-1)!;
    assert.ok(last, 'live events carried both ranks');
    assert.deepEqual(last.placement.map((c) => c.nodeName).sort(), ['fast', 'slow']);
    assert.equal(last.links.length, 2);
    for (const l of last.links) assert.ok(l.gbps > 0 && l.bytes > 0, `link ${l.fromName} → ${l.toName} measured`);
    const b = last.breakdown!;
    assert.ok(b.computeMs > 0 && b.stepMs >= b.computeMs, JSON.stringify(b));
    assert.equal(lives.find((l) => l.straggler)?.straggler?.nodeName, 'slow', 'the agent on the cpu backend is named the straggler');
    assert.ok(of('nodes').some((n) => n.nodes.some((x: { name: string; straggler: boolean }) => x.name === 'slow' && x.straggler)));

    // The same, as JSON from the API and the CLI.
    const live = await cluster.api<JobLive>('GET', `/api/jobs/${job.id}/live`);
    assert.equal(live.state, 'succeeded');
    assert.equal(live.ranks.length, 2);
    assert.ok(watchLines.some((l) => /^running step \d+\/10 .*loss \d/.test(l)), `a live line per step:\n${watchLines.join('\n')}`);
    assert.match(watchLines.at(-1)!, /^succeeded: registered live-tiny v1/);
  });

  test('a gateway on the cluster\'s registry announces itself, and its deployment calls are relayed with its admin key', async () => {
    const { cluster } = fx;
    let gw: Proc | undefined;
    try {
      gw = spawnProc([GATEWAY, 'serve', '--registry', cluster.url, '--token', cluster.token, '--admin-key', 'ops-key', '--name', 'gw-test', '--host', '127.0.0.1', '--port', '0'], { stderr: 'capture' });
      await waitForLine(gw, /gateway listening on/, 60_000);
      let gateways: Array<{ name: string; alive: boolean }> = [];
      await until('gw-test to announce itself', async () => {
        ({ gateways } = await cluster.api<{ gateways: typeof gateways }>('GET', '/api/gateways'));
        return gateways.some((g) => g.name === 'gw-test');
      }, 30_000, 100).catch((err: Error) => assert.fail(`${err.message}; gateway output:\n${gw!.output.join('\n')}`));
      assert.deepEqual(gateways.map((g) => [g.name, g.alive]), [['gw-test', true]]);
      const list = await cluster.api<{ deployments: unknown[] }>('GET', '/api/gateways/gw-test/deployments');
      assert.ok(Array.isArray(list.deployments), JSON.stringify(list));
      // The gateway's own refusals (no deployment of that name) come back as they are, on every relayed route.
      for (const path of ['/deployments/nope', '/deployments/nope/comparison']) {
        const got = await fetch(`${cluster.url}/api/gateways/gw-test${path}`, { headers: { cookie } });
        assert.equal(got.status, 404, path);
        const { error } = (await got.json()) as { error: { code?: string; message: string } };
        assert.doesNotMatch(String(error.code), /^CRD_/, `${path}: the gateway answered, not a missing coordinator route`);
      }
      const res = await fetch(`${cluster.url}/api/gateways/gw-test/deployments/nope/rollback`, {
        method: 'POST', headers: { cookie, 'x-requested-with': 'meshtrain', 'content-type': 'application/json' }, body: JSON.stringify({ reason: 'test' }),
      });
      assert.equal(res.status, 404);
      assert.match(((await res.json()) as { error: { message: string } }).error.message, /nope/);
      assert.ok(!gw.output.join('\n').includes('ops-key') && !cluster.coordinator.output.join('\n').includes('ops-key'), 'the admin key is never logged');
    } finally {
      gw?.child.kill('SIGTERM');
      await gw?.exited;
    }
  });
});
