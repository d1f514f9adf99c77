/**
 * /metrics of every real process, read with an independent exposition-format parser: a coordinator and two agents
 * (bin/coordinator.js, bin/node-agent.js) train a tiny GPT data-parallel to the end, a gateway (bin/gateway.js)
 * serves the model it registered, and then each endpoint is scraped: the coordinator's, each agent's on its peer
 * port (found through GET /api/nodes), the gateway's. Checked: the text parses; families follow the naming
 * conventions; the training families hold what the job did (the job's own record is the reference); process
 * metrics are there; the cluster token appears nowhere.
 *
 *   node scripts/run-tests.mjs test/metrics
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { startGateway, type GatewayProcess } from '../../bench/support/gateway-fixture.ts';
import { startCluster, type LocalCluster } from '../../scripts/local-cluster.ts';
import { runToEnd, writeCorpus, type JobView } from '../support/jobs.ts';
import { parseExposition, scrape, seriesOf, valueOf, type Family } from '../support/prometheus.ts';

const STEPS = 6;
const MODEL = 'metrics-tiny';

interface Scraped {
  url: string;
  text: string;
  families: Map<string, Family>;
}

/**
 * `_seconds` families that are not histograms because they are not observed durations: a timestamp, a difference
 * of two means (which can be negative), and the event-loop lag statistics prom-client computes from Node's own
 * delay histogram, whose buckets it does not expose.
 */
const NOT_DURATIONS = [/_start_time_seconds$/, /_latency_diff_seconds$/, /_eventloop_lag(?:_[a-z0-9]+)?_seconds$/];

/** The process metrics prom-client's collectDefaultMetrics exports, under each process's prefix. */
const PROCESS_METRIC = /^meshtrain_(?:coordinator|agent|gateway)_(?:process|nodejs)_/;

/** Every way the families of one endpoint break the naming conventions; empty when they keep them. */
function conventionProblems(families: Map<string, Family>): string[] {
  const problems: string[] = [];
  for (const f of families.values()) {
    if (!f.name.startsWith('meshtrain_')) problems.push(`${f.name}: not under the meshtrain_ prefix`);
    if (f.type === 'COUNTER' && !f.name.endsWith('_total')) problems.push(`${f.name}: a counter whose name does not end in _total`);
    // prom-client's own nodejs_active_{handles,requests,resources}_total are gauges; Node dashboards expect those names.
    if (f.type !== 'COUNTER' && f.name.endsWith('_total') && !PROCESS_METRIC.test(f.name)) problems.push(`${f.name}: a ${f.type.toLowerCase()} named like a counter (_total)`);
    if (f.name.endsWith('_seconds') && f.type !== 'HISTOGRAM' && !NOT_DURATIONS.some((re) => re.test(f.name))) {
      problems.push(`${f.name}: a duration in seconds exported as a ${f.type.toLowerCase()}, not a histogram`);
    }
    if (/_(?:ms|milliseconds|kb|mb|gb|percent)(?:_|$)/.test(f.name)) problems.push(`${f.name}: not in base units (seconds, bytes, ratio)`);
  }
  return problems;
}

describe('Prometheus metrics of a real cluster and gateway', () => {
  let dir = '';
  let cluster: LocalCluster | undefined;
  let gateway: GatewayProcess | undefined;
  let view: JobView;
  let coordinator: Scraped;
  let agents: Array<Scraped & { name: string }>;
  let gw: Scraped;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'metrics-'));
    const corpus = writeCorpus(dir, 0, 3);
    // Heartbeats every 200 ms, so even a short job sees some.
    cluster = await startCluster({ agents: 2, heartbeatMs: 200 });
    view = await runToEnd(cluster, {
      name: MODEL,
      model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
      data: { corpus, heldOutFraction: 0.2 },
      training: { steps: STEPS, batchSize: 4, seqLen: 16, lr: 3e-3, warmupSteps: 1, evalEvery: 3, evalBatches: 1, checkpointEvery: 3 },
      parallel: { data: 2 },
    });
    gateway = await startGateway(['--registry', join(cluster.dataDir, 'registry')]);
    const completion = await fetch(`${gateway.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'The', max_tokens: 4, temperature: 0 }),
    });
    assert.equal(completion.status, 200, await completion.text());

    const read = async (url: string): Promise<Scraped> => ({ url, ...(await scrape(url)) });
    coordinator = await read(`${cluster.url}/metrics`);
    const { nodes } = await cluster.api<{ nodes: Array<{ name: string; peerAddress: string }> }>('GET', '/api/nodes');
    assert.equal(nodes.length, 2);
    agents = await Promise.all(nodes.map(async (n) => ({ name: n.name, ...(await read(`${n.peerAddress.replace(/^ws:/, 'http:')}/metrics`)) })));
    gw = await read(`${gateway.url}/metrics`);
  });

  after(async () => {
    gateway?.kill();
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const all = (): Scraped[] => [coordinator, ...agents, gw];
  const job = () => ({ job: view.job.id });

  test('the parser used here rejects malformed exposition, so these checks can fail', () => {
    assert.throws(() => parsePrometheusTextFormat('# TYPE x counter\nx_total{job=unquoted} 1\n'), /invalid line/i);
    assert.throws(() => parseExposition('# TYPE x_total counter\nx_total 1.2.3\n'), /not a Prometheus float/);
    assert.throws(() => parseExposition('x_total 1\n'), /no # TYPE/);
    const split = '# TYPE h_seconds histogram\nh_seconds_bucket{le="1"} 2\nh_seconds_bucket{le="+Inf"} 1\nh_seconds_sum 1\nh_seconds_count 1\n';
    assert.throws(() => parseExposition(split), /cumulative/);
    assert.deepEqual(conventionProblems(parseExposition('# TYPE meshtrain_x_duration_seconds gauge\nmeshtrain_x_duration_seconds 1\n# TYPE meshtrain_y counter\nmeshtrain_y 1\n')), [
      'meshtrain_x_duration_seconds: a duration in seconds exported as a gauge, not a histogram',
      'meshtrain_y: a counter whose name does not end in _total',
    ]);
  });

  test('every endpoint parses and names its families by the Prometheus conventions', () => {
    for (const s of all()) {
      assert.ok(s.families.size > 20, `${s.url}: ${s.families.size} families`);
      assert.deepEqual(conventionProblems(s.families), [], s.url);
    }
  });

  test('the coordinator counts every step of the job and breaks it down by phase and link', () => {
    const f = coordinator.families;
    const trainRows = view.metrics.filter((m) => m.kind === 'train');
    assert.equal(trainRows.length, STEPS);
    assert.equal(valueOf(f, 'meshtrain_job_steps_total', job()), STEPS);
    assert.equal(f.get('meshtrain_job_step_duration_seconds')?.type, 'HISTOGRAM');
    assert.equal(valueOf(f, 'meshtrain_job_step_duration_seconds', job()), STEPS);
    for (const phase of ['compute', 'allreduce', 'bubble', 'wait']) {
      assert.equal(valueOf(f, 'meshtrain_job_step_phase_seconds', { ...job(), phase }), 2 * STEPS, `${phase}: one observation per rank and step`);
    }
    assert.deepEqual(new Set(seriesOf(f, 'meshtrain_job_step_phase_seconds').map((s) => s.labels.phase)), new Set(['compute', 'allreduce', 'bubble', 'wait']));
    assert.ok(valueOf(f, 'meshtrain_job_tokens_per_second', job()) > 0);
    const last = trainRows.at(-1)!;
    assert.ok(Math.abs(valueOf(f, 'meshtrain_job_loss', { ...job(), split: 'train' }) - last.values.loss!) < 1e-6 * Math.abs(last.values.loss!), 'the last step\'s loss');
    assert.ok(Number.isFinite(valueOf(f, 'meshtrain_job_loss', { ...job(), split: 'eval' })));
    const bubble = valueOf(f, 'meshtrain_job_pipeline_bubble_ratio', job());
    assert.ok(bubble >= 0 && bubble <= 1, `bubble ${bubble}`);
    const links = seriesOf(f, 'meshtrain_job_link_busbw_bytes_per_second', job());
    assert.deepEqual(links.map((s) => `${s.labels.from_rank}->${s.labels.to_rank}`).sort(), ['0->1', '1->0']);
    assert.ok(links.every((s) => s.value! > 0));
    // The job-wide byte count is the sum of what each agent says its data ring sent.
    const agentBytes = agents.reduce((sum, a) => sum + valueOf(a.families, 'meshtrain_agent_allreduce_bytes_total', { ...job(), ring: 'data' }), 0);
    assert.ok(agentBytes > 0);
    assert.equal(valueOf(f, 'meshtrain_job_allreduce_bytes_total', job()), agentBytes);
    assert.equal(valueOf(f, 'meshtrain_job_attempts_total', job()), 1);
    assert.equal(valueOf(f, 'meshtrain_checkpoint_merge_duration_seconds'), view.checkpoints.length);
    assert.ok(view.checkpoints.length >= 2, `checkpoints at steps 3 and 6, got ${view.checkpoints.length}`);
    assert.ok(valueOf(f, 'meshtrain_checkpoint_size_bytes', job()) > 0);
    assert.equal(seriesOf(f, 'meshtrain_agent_joins_total', { outcome: 'reclaimed' }).reduce((n, s) => n + (s.value ?? 0), 0), 0); // no agent rejoined
    assert.equal(valueOf(f, 'meshtrain_agent_joins_total', { outcome: 'new' }), 2);
  });

  test('each agent records every step and its gradient ring; rank 0 also the loss and the checkpoints', () => {
    for (const a of agents) {
      const f = a.families;
      assert.equal(f.get('meshtrain_agent_step_duration_seconds')?.type, 'HISTOGRAM');
      assert.equal(valueOf(f, 'meshtrain_agent_step_duration_seconds', job()), STEPS, a.name);
      assert.equal(valueOf(f, 'meshtrain_agent_steps_total', job()), STEPS, a.name);
      assert.equal(valueOf(f, 'meshtrain_agent_step_phase_seconds', { ...job(), phase: 'compute' }), STEPS, a.name);
      assert.ok(valueOf(f, 'meshtrain_agent_allreduce_busbw_bytes_per_second', job()) > 0, a.name);
      assert.ok(valueOf(f, 'meshtrain_agent_allreduce_bytes_total', { ...job(), ring: 'world' }) > 0, a.name);
      assert.equal(f.get('meshtrain_agent_allreduce_busbw_bytes_per_second')?.type, 'GAUGE');
    }
    const rank0 = agents.filter((a) => seriesOf(a.families, 'meshtrain_agent_loss').length > 0);
    assert.equal(rank0.length, 1, 'world rank 0, and only it, has the global figures');
    const f = rank0[0]!.families;
    assert.ok(Number.isFinite(valueOf(f, 'meshtrain_agent_loss', { ...job(), split: 'train' })));
    assert.ok(Number.isFinite(valueOf(f, 'meshtrain_agent_loss', { ...job(), split: 'eval' })));
    assert.ok(valueOf(f, 'meshtrain_agent_tokens_per_second', job()) > 0);
    // Data-parallel rank 0 saves the (only) shard: one checkpoint per coordinator checkpoint.
    assert.equal(valueOf(f, 'meshtrain_agent_checkpoint_duration_seconds', job()), view.checkpoints.length);
    assert.ok(valueOf(f, 'meshtrain_agent_checkpoint_size_bytes', job()) > 0);
  });

  test('heartbeats and the control connection are counted on both ends', () => {
    for (const a of agents) {
      assert.ok(valueOf(a.families, 'meshtrain_agent_heartbeats_sent_total') > 0, a.name);
      assert.equal(valueOf(a.families, 'meshtrain_agent_coordinator_connected'), 1, a.name);
      assert.equal(valueOf(a.families, 'meshtrain_agent_reconnects_total'), 0, a.name);
    }
    assert.ok(valueOf(coordinator.families, 'meshtrain_heartbeats_received_total') > 0);
    assert.equal(valueOf(coordinator.families, 'meshtrain_agent_connections'), 2);
  });

  test('the gateway times the completion it served in a histogram by model and status', () => {
    const f = gw.families;
    assert.equal(f.get('meshtrain_gateway_request_duration_seconds')?.type, 'HISTOGRAM');
    assert.equal(valueOf(f, 'meshtrain_gateway_request_duration_seconds', { model: MODEL, status: '200' }), 1);
    assert.ok(valueOf(f, 'meshtrain_gateway_generated_tokens_total', { model: MODEL }) > 0);
  });

  test('all three processes export process metrics under their own prefix', () => {
    for (const [s, prefix] of [[coordinator, 'meshtrain_coordinator_'], ...agents.map((a) => [a, 'meshtrain_agent_'] as const), [gw, 'meshtrain_gateway_']] as const) {
      assert.equal(s.families.get(`${prefix}process_cpu_seconds_total`)?.type, 'COUNTER', s.url);
      assert.ok(valueOf(s.families, `${prefix}process_cpu_seconds_total`) > 0, s.url);
      assert.equal(s.families.get(`${prefix}process_resident_memory_bytes`)?.type, 'GAUGE', s.url);
      assert.equal(s.families.get(`${prefix}nodejs_gc_duration_seconds`)?.type, 'HISTOGRAM', s.url);
    }
  });

  test('the cluster token is in no label value, nor anywhere else on any endpoint', () => {
    const token = cluster!.token;
    for (const s of all()) {
      for (const f of s.families.values()) {
        for (const series of f.series) for (const v of Object.values(series.labels)) assert.ok(!v.includes(token), `${s.url}: ${f.name}`);
      }
      assert.ok(!s.text.includes(token), s.url);
    }
  });

  test("an agent's peer port answers /healthz and refuses other plain HTTP", async () => {
    const base = agents[0]!.url.replace(/\/metrics$/, '');
    const health = await fetch(`${base}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { connected: boolean }).connected, true);
    assert.equal((await fetch(`${base}/`)).status, 404);
    assert.equal((await fetch(`${base}/metrics`, { method: 'DELETE' })).status, 405);
  });
});
