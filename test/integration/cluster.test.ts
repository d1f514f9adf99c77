/**
 * The fabric end to end on real processes: a coordinator and agents on loopback ports, talking over real
 * sockets. Every process started here is stopped in `after`.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, spawnProc, waitForLine, type LocalCluster } from '../../scripts/local-cluster.ts';
import { expectedResult } from '../../common/collective-test-data.ts';
import { chunkRange } from '../../protocol/partition.ts';
import type { RunReport } from '../../coordinator/cluster/groups.ts';
import type { NodeView } from '../../coordinator/cluster/agent-hub.ts';
import { until } from '../support/until.ts';

const AGENT = new URL('../../bin/node-agent.js', import.meta.url).pathname;

describe('a coordinator with three agents', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await startCluster({ agents: 3, heartbeatMs: 200, heartbeatTimeoutMs: 1500 });
  });
  after(() => cluster?.stop());

  const nodes = async () => (await cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes')).nodes;

  test('lists every agent as alive with its measured capabilities', async () => {
    const list = await nodes();
    assert.equal(list.filter((n) => n.status === 'alive').length, 3);
    for (const n of list) {
      assert.equal(n.capabilities.backend, 'wasm');
      assert.ok(n.capabilities.cores >= 1);
      assert.ok(n.capabilities.memoryBytes > 0);
      assert.ok(n.capabilities.matmulGflops > 0, `matmul GFLOP/s measured: ${n.capabilities.matmulGflops}`);
      assert.match(n.peerAddress, /^ws:\/\/127\.0\.0\.1:\d+$/);
      assert.equal('secretHash' in n, false, 'secrets stay out of the API');
    }
  });

  test('refuses API calls without the cluster token', async () => {
    const res = await fetch(`${cluster.url}/api/nodes`);
    assert.equal(res.status, 401);
    assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'CRD_ERR_UNAUTHORIZED');
  });

  for (const segmentBytes of [4096, 1 << 20]) {
    test(`every collective over real agent links equals the serial result (segments of ${segmentBytes} bytes)`, async () => {
      const group = await cluster.api<{ id: string; size: number }>('POST', '/api/groups', { size: 3, segmentBytes });
      try {
        for (const op of ['allreduce', 'reducescatter', 'allgather', 'broadcast'] as const) {
          for (const elements of [0, 1, 2, 3, 1001, 100_003]) {
            const seed = elements + 7;
            const root = op === 'broadcast' ? 2 : undefined;
            const report = await cluster.api<RunReport>('POST', `/api/groups/${group.id}/runs`, {
              op, elements, seed, ...(root !== undefined ? { root } : {}), returnResult: true,
            });
            assert.equal(report.ok, true, JSON.stringify(report.ranks));
            const expected = expectedResult({ op, elements, seed, root }, 3)!;
            report.results!.forEach((got, rank) => {
              const r = op === 'reducescatter' ? chunkRange(elements, 3, rank) : { start: 0, end: elements };
              assert.deepEqual(got, Array.from(expected.subarray(r.start, r.end)), `${op} of ${elements} on rank ${rank}`);
            });
          }
        }
      } finally {
        await cluster.api('DELETE', `/api/groups/${group.id}`);
      }
    });
  }

  test('a ring of one agent returns its own buffer', async () => {
    const group = await cluster.api<{ id: string }>('POST', '/api/groups', { size: 1 });
    const report = await cluster.api<RunReport>('POST', `/api/groups/${group.id}/runs`, { op: 'allreduce', elements: 5, seed: 3, returnResult: true });
    assert.deepEqual(report.result, Array.from(expectedResult({ op: 'allreduce', elements: 5, seed: 3 }, 1)!));
    await cluster.api('DELETE', `/api/groups/${group.id}`);
  });

  test('the self-check passes and names every case', async () => {
    const report = await cluster.api<{ ok: boolean; cases: Array<{ ok: boolean }> }>('POST', '/api/selfcheck', { elements: [0, 5, 70_001] });
    assert.equal(report.ok, true);
    assert.equal(report.cases.length, 12);
  });

  test('a bad job of the API gets a 400 naming every bad field', async () => {
    const group = await cluster.api<{ id: string }>('POST', '/api/groups', { size: 2 });
    const res = await fetch(`${cluster.url}/api/groups/${group.id}/runs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${cluster.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ op: 'sum', elements: -1, extra: true }),
    });
    assert.equal(res.status, 400);
    const body = (await res.json()) as { error: { code: string; details: string[] } };
    assert.equal(body.error.code, 'CRD_ERR_BAD_REQUEST');
    const text = body.error.details.join('\n');
    assert.match(text, /\/op/);
    assert.match(text, /\/elements/);
    assert.match(text, /extra/);
    await cluster.api('DELETE', `/api/groups/${group.id}`);
  });

  test('a frozen agent is marked dead when its heartbeats stop, and comes back alive when it resumes', async () => {
    const victim = (await nodes())[0]!;
    const proc = cluster.agents[Number(victim.name.replace('agent-', ''))]!; // startCluster names them agent-<index>
    proc.child.kill('SIGSTOP');
    try {
      const dead = await until('the frozen agent to be marked dead', async () => (await nodes()).find((n) => n.id === victim.id && n.status === 'dead'));
      assert.match(dead.statusReason, /no heartbeat/);
    } finally {
      proc.child.kill('SIGCONT');
    }
    const back = await until('the agent to reconnect', async () => (await nodes()).find((n) => n.id === victim.id && n.status === 'alive' && n.connected));
    assert.equal(back.name, victim.name, 'it reclaims its own identity');
  });

  test('metrics and health are served without a token', async () => {
    const health = (await (await fetch(`${cluster.url}/healthz`)).json()) as { status: string; nodes: { alive: number } };
    assert.equal(health.status, 'ok');
    const metrics = await (await fetch(`${cluster.url}/metrics`)).text();
    assert.match(metrics, /^meshtrain_nodes\{status="alive"\} \d+$/m);
    assert.match(metrics, /^meshtrain_heartbeats_received_total \d+$/m);
  });

  test('state survives a coordinator restart and agents reconnect under their own ids', async () => {
    const before = (await nodes()).filter((n) => n.status === 'alive').map((n) => n.id).sort();
    cluster.coordinator.child.kill('SIGTERM');
    assert.equal(await cluster.coordinator.exited, 0);
    await cluster.startCoordinator();
    const after = await until('agents to reconnect', async () => {
      const alive = (await nodes()).filter((n) => n.status === 'alive' && n.connected);
      return alive.length === before.length ? alive.map((n) => n.id).sort() : undefined;
    });
    assert.deepEqual(after, before);
  });

  test('SIGTERM makes an agent leave cleanly: exit code 0 and status left', async () => {
    const proc = cluster.agents[2]!;
    const id = (await nodes()).find((n) => n.name === 'agent-2')!.id;
    proc.child.kill('SIGTERM');
    assert.equal(await proc.exited, 0);
    const node = await until('the agent to be marked left', async () => (await nodes()).find((n) => n.id === id && n.status === 'left'));
    assert.match(node.statusReason, /SIGTERM/);
  });

  test('an agent with a wrong token is refused with a clear error and exit code 2', async () => {
    const p = spawnProc([AGENT, 'join', cluster.wsUrl, '--token', 'not-the-token', '--backend', 'cpu'], { stderr: 'capture', env: { LOG_LEVEL: 'warn' } });
    assert.equal(await p.exited, 2);
    assert.match(p.output.join('\n'), /AGT_ERR_UNAUTHORIZED: the coordinator refused our join token/);
  });
});

test('an agent retries an unreachable coordinator with backoff, says so, and gives up after --max-retries', async () => {
  const p = spawnProc([AGENT, 'join', 'ws://127.0.0.1:9', '--token', 'whatever-token', '--backend', 'cpu', '--max-retries', '2'], {
    stderr: 'capture',
    env: { LOG_LEVEL: 'info' },
  });
  await waitForLine(p, /unreachable \(ECONNREFUSED\); retrying in \d+\.\d s \(attempt 2\)/, 30_000);
  assert.equal(await p.exited, 3);
  assert.match(p.output.join('\n'), /AGT_ERR_UNREACHABLE: gave up on ws:\/\/127\.0\.0\.1:9\/ws\/agent after 3 failed attempts/);
});

test('both CLIs explain themselves with --help', async () => {
  for (const bin of ['coordinator', 'node-agent']) {
    const p = spawnProc([new URL(`../../bin/${bin}.js`, import.meta.url).pathname, '--help'], { stderr: 'capture' });
    assert.equal(await p.exited, 0);
    const text = p.output.join('\n');
    assert.match(text, /^Usage: /m);
    assert.match(text, /--token/);
  }
});
