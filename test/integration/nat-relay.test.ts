/**
 * node scripts/run-tests.mjs integration/nat-relay
 *
 * Agents nobody can dial still train. Three agents run in network namespaces on one bridge (test/support/netns.ts);
 * two drop every inbound TCP connection (nft drops SYNs), as machines behind NAT do. The coordinator's probe at join
 * must find those two unreachable and the third reachable; a data-parallel job over all three must then succeed
 * with the two relayed through the coordinator, the nodes API, `coordinator nodes` and both /metrics must show the
 * relay and its bytes, and the losses must equal those of the same job on loopback with direct links only: relaying
 * passes bytes on, it must not change the math.
 *
 * That first run pins `--relay coordinator`. The second runs the default (`--relay agent`): the same three agents,
 * and the reachable one is picked as the group's relay (coordinator/cluster/groups.ts), so the two unreachable
 * agents' links go through its peer port's /ws/relay (node-agent/agent-relay.ts), the coordinator carries no relayed
 * byte, the nodes API and `coordinator nodes` say "relayed via nat-2" with the bytes it reported, and the losses are
 * again loopback's. Its relay endpoint refuses a dialer without the group's ticket or with a wrong one, and a
 * callback with an unknown session, with 401 before any upgrade, as the coordinator's does.
 *
 * Needs root, ip, tc and nft (`npm run setup`). Without them the test fails saying what is missing; it never skips.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnProc, startCluster, type LocalCluster } from '../../scripts/local-cluster.ts';
import type { NodeWithRole } from '../../coordinator/api/views.ts';
import { createNetwork, type Network } from '../support/netns.ts';
import { assertSameCurve, runToEnd, writeCorpus } from '../support/jobs.ts';
import { until } from '../support/until.ts';
import WebSocket from 'ws';

const COORDINATOR = new URL('../../bin/coordinator.js', import.meta.url).pathname;
const MODEL = { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 };
const STEPS = 4;

const spec = (name: string, corpus: string) => ({
  name,
  model: MODEL,
  data: { corpus, heldOutFraction: 0.1 },
  training: { steps: STEPS, batchSize: 6, seqLen: 16, lr: 3e-3, warmupSteps: 1, checkpointEvery: 100 },
  parallel: { data: 3 },
});

/** Sums a counter's samples in a Prometheus text exposition whose lines match `filter`. */
function counterSum(text: string, name: string, filter: RegExp = /.*/): number {
  return text
    .split('\n')
    .filter((l) => l.startsWith(name) && filter.test(l))
    .reduce((sum, l) => sum + Number(l.split(' ').at(-1)), 0);
}

/** The loopback oracle's run (three agents linked directly), made once and compared with both relayed runs. */
let loopbackRun: Awaited<ReturnType<typeof runToEnd>> | undefined;
async function loopbackOracle(corpus: string): Promise<Awaited<ReturnType<typeof runToEnd>>> {
  if (loopbackRun) return loopbackRun;
  const loopback = await startCluster({ agents: 3 });
  try {
    loopbackRun = await runToEnd(loopback, spec('loopback-direct', corpus), 120_000);
    const loopNodes = (await loopback.api<{ nodes: NodeWithRole[] }>('GET', '/api/nodes')).nodes;
    assert.ok(loopNodes.every((n) => n.reach?.state === 'direct' && n.relayStats === null), 'no relay on loopback');
    return loopbackRun;
  } finally {
    await loopback.stop();
  }
}

/** What a relay endpoint answers a bare upgrade: its HTTP status and JSON error, or 'upgraded'. */
function relayAnswer(url: string, authorization?: string): Promise<{ status: number; code?: string } | 'upgraded'> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers: authorization ? { authorization } : {}, perMessageDeflate: false });
    ws.on('error', () => {});
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let code: string | undefined;
        try {
          code = (JSON.parse(Buffer.concat(chunks).toString()) as { error: { code: string } }).error.code;
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode!, ...(code ? { code } : {}) });
        ws.terminate();
      });
    });
    ws.once('open', () => (resolve('upgraded'), ws.close()));
  });
}

describe('agents behind NAT train through the coordinator relay', () => {
  let net: Network | undefined;
  let cluster: LocalCluster;
  let dir = '', corpus = '';

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'nat-relay-'));
    corpus = writeCorpus(dir, 20, 24);
    // Throws with what is missing (root, ip, tc, nft): the test fails rather than skips.
    net = createNetwork('nat', [{ dropInbound: true }, { dropInbound: true }, {}]);
    cluster = await startCluster({ agents: 0, coordinatorHost: net.bridgeAddress, coordinatorArgs: ['--relay', 'coordinator'] });
    net.hosts.forEach((h, i) => cluster.startAgent(`nat-${i}`, ['--peer-host', h.address], { exec: h.exec, peerListen: '0.0.0.0' }));
    await cluster.waitForNodes(3);
  });
  after(async () => {
    await cluster?.stop();
    net?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const nodes = async () => (await cluster.api<{ nodes: NodeWithRole[] }>('GET', '/api/nodes')).nodes;

  test('the two agents that drop inbound connections are found unreachable at join, the third reachable', async () => {
    const checked = await until('every reachability check done', async () => {
      const list = await nodes();
      return list.length === 3 && list.every((n) => n.reach && n.reach.state !== 'checking') ? list : undefined;
    }, 15_000);
    const byName = new Map(checked.map((n) => [n.name, n.reach!]));
    assert.equal(byName.get('nat-0')?.state, 'relayed', JSON.stringify(byName.get('nat-0')));
    assert.equal(byName.get('nat-1')?.state, 'relayed');
    assert.match(byName.get('nat-0')!.reason, /no answer .* within 3000 ms/);
    assert.equal(byName.get('nat-0')?.relay, 'coordinator');
    assert.equal(byName.get('nat-2')?.state, 'direct', JSON.stringify(byName.get('nat-2')));
    assert.match(byName.get('nat-2')!.reason, /answered the probe/);
  });

  test('a data-parallel job on three agents, two relayed, trains the same losses as on loopback with direct links', async () => {
    const relayed = await runToEnd(cluster, spec('nat-relayed', corpus), 120_000);

    // The nodes API: who is relayed, through what, and what it cost.
    const list = await nodes();
    for (const name of ['nat-0', 'nat-1']) {
      const n = list.find((x) => x.name === name)!;
      assert.equal(n.reach?.state, 'relayed');
      assert.ok(n.relayStats, `${name} has relay figures`);
      assert.equal(n.relayStats.via, 'coordinator');
      assert.ok(n.relayStats.bytesToNode > 0 && n.relayStats.bytesFromNode > 0, `${name}: ${JSON.stringify(n.relayStats)}`);
      assert.ok(n.relayStats.linksTotal >= 1);
      assert.ok(n.relayStats.relayedRttMs !== null && n.relayStats.relayedRttMs >= 0, `${name} round trip measured`);
    }
    assert.equal(list.find((x) => x.name === 'nat-2')?.relayStats, null, 'the reachable agent was dialled directly');
    const stats = Object.fromEntries(list.map((n) => [n.name, n.relayStats]));
    console.log(`relay figures after ${STEPS} steps: ${JSON.stringify(stats)}`);

    // `coordinator nodes` shows the same.
    const cli = spawnProc([COORDINATOR, 'nodes', '--url', cluster.url, '--token', cluster.token], { stderr: 'capture' });
    assert.equal(await cli.exited, 0, cli.output.join('\n'));
    const rows = cli.output.join('\n');
    assert.match(rows, /LINKS/);
    assert.match(rows, /RELAY COST/);
    for (const name of ['nat-0', 'nat-1']) assert.match(rows, new RegExp(`${name}.*relayed via coordinator.*MiB in`), rows);
    assert.match(rows, /nat-2.*direct/);

    // Prometheus: the coordinator's relay counter, and the reachable agent's own count of the relayed links it dialled.
    const metrics = await (await cluster.fetch(`${cluster.url}/metrics`)).text();
    assert.ok(counterSum(metrics, 'meshtrain_relay_bytes_total', /direction="to_node"/) > 0, 'relay bytes on the coordinator');
    const direct = list.find((x) => x.name === 'nat-2')!;
    const agentMetrics = await (await fetch(`${direct.peerAddress.replace(/^ws/, 'http')}/metrics`)).text();
    assert.ok(counterSum(agentMetrics, 'meshtrain_agent_relay_bytes_total', /side="dialer",direction="sent"/) > 0, 'relay bytes on the dialling agent');
    assert.match(agentMetrics, /meshtrain_agent_reachable 1/);

    // The oracle: the same job on loopback, three agents linked directly.
    assertSameCurve(relayed, await loopbackOracle(corpus), STEPS, 1e-5);
  });
});

describe('agents behind NAT train through a reachable agent picked as relay', () => {
  let net: Network | undefined;
  let cluster: LocalCluster;
  let dir = '', corpus = '';

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'nat-agent-relay-'));
    corpus = writeCorpus(dir, 20, 24);
    net = createNetwork('natag', [{ dropInbound: true }, { dropInbound: true }, {}]);
    cluster = await startCluster({ agents: 0, coordinatorHost: net.bridgeAddress }); // --relay agent: the default
    net.hosts.forEach((h, i) => cluster.startAgent(`nat-${i}`, ['--peer-host', h.address], { exec: h.exec, peerListen: '0.0.0.0' }));
    await cluster.waitForNodes(3);
    await until('every reachability check done', async () => {
      const list = await nodes();
      return list.length === 3 && list.every((n) => n.reach && n.reach.state !== 'checking') ? list : undefined;
    }, 15_000);
  });
  after(async () => {
    await cluster?.stop();
    net?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const nodes = async () => (await cluster.api<{ nodes: NodeWithRole[] }>('GET', '/api/nodes')).nodes;

  test('the reachable agent relays the job of all three; the nodes API names it; losses are loopback\'s', async () => {
    const relayed = await runToEnd(cluster, spec('nat-agent-relayed', corpus), 120_000);

    // The relay agent reports its figures with its heartbeats: wait for the report that follows the last step.
    const list = await until('the agent relay reported both relayed nodes', async () => {
      const l = await nodes();
      return ['nat-0', 'nat-1'].every((name) => {
        const s = l.find((x) => x.name === name)?.relayStats;
        return s && s.via === 'nat-2' && s.bytesToNode > 0 && s.bytesFromNode > 0;
      }) ? l : undefined;
    }, 10_000);
    for (const name of ['nat-0', 'nat-1']) {
      const n = list.find((x) => x.name === name)!;
      assert.equal(n.reach?.state, 'relayed');
      assert.equal(n.reach?.relay, 'nat-2', `${name} is relayed via the reachable agent`);
      assert.ok(n.relayStats!.linksTotal >= 1);
    }
    assert.equal(list.find((x) => x.name === 'nat-2')?.relayStats, null, 'the relay agent itself is dialled directly');
    console.log(`agent relay figures after ${STEPS} steps: ${JSON.stringify(Object.fromEntries(list.map((n) => [n.name, n.relayStats])))}`);

    const cli = spawnProc([COORDINATOR, 'nodes', '--url', cluster.url, '--token', cluster.token], { stderr: 'capture' });
    assert.equal(await cli.exited, 0, cli.output.join('\n'));
    const rows = cli.output.join('\n');
    for (const name of ['nat-0', 'nat-1']) assert.match(rows, new RegExp(`${name}.*relayed via nat-2.*MiB in`), rows);

    // The coordinator carried no relayed byte; the relay agent counted what it passed on.
    const metrics = await (await cluster.fetch(`${cluster.url}/metrics`)).text();
    assert.equal(counterSum(metrics, 'meshtrain_relay_bytes_total'), 0, 'no bytes through the coordinator relay');
    const relayAgent = list.find((x) => x.name === 'nat-2')!;
    const agentMetrics = await (await fetch(`${relayAgent.peerAddress.replace(/^ws/, 'http')}/metrics`)).text();
    assert.ok(counterSum(agentMetrics, 'meshtrain_agent_relay_served_bytes_total', /direction="to_node"/) > 0, 'relay bytes on the relay agent');

    assertSameCurve(relayed, await loopbackOracle(corpus), STEPS, 1e-5);
  });

  test("the agent relay's endpoint refuses a dialer without the ticket or with a wrong one, and unknown sessions", async () => {
    const list = await nodes();
    const relayAgent = list.find((x) => x.name === 'nat-2')!;
    const hidden = list.find((x) => x.name === 'nat-0')!;
    const base = new URL('/ws/relay', relayAgent.peerAddress).href;
    const unauthorized = { status: 401, code: 'AGT_ERR_RELAY_REFUSED' };
    assert.deepEqual(await relayAnswer(`${base}?to=${hidden.id}`), unauthorized, 'no ticket');
    assert.deepEqual(await relayAnswer(`${base}?to=${hidden.id}`, 'Bearer not-the-ticket'), unauthorized, 'wrong ticket');
    assert.deepEqual(await relayAnswer(`${base}?to=${hidden.id}`, 'Basic bm8='), unauthorized, 'not a bearer');
    assert.deepEqual(await relayAnswer(`${base}?session=rs-0123456789abcdef`, 'Bearer some-key'), unauthorized, 'unknown session');
    assert.deepEqual(await relayAnswer(base), unauthorized, 'neither ?to nor ?session');
  });
});
