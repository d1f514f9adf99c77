/**
 * Security of the control plane on real processes: per-agent credentials that an operator revokes, a node secret
 * that cannot be replayed once rotated, TLS end to end (HTTPS and WSS to the coordinator, WSS between agents), and
 * no token or secret in any log line or /metrics, at LOG_LEVEL=debug.
 *
 * Where the test needs a credential it cannot see in a real agent (its node secret, a group token), it acts as an
 * agent itself with a raw ws client. hostile.test.ts already covers a wrong join token and claiming a live agent's
 * id without its secret; this file covers what comes after a credential was once valid.
 *
 * Run: npx tsx --test test/integration/security.test.ts
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { decodeFrame, encodeMessage, type Envelope } from '../../protocol/codec.ts';
import { CloseCode } from '../../protocol/codes.ts';
import type { NodeView } from '../../coordinator/cluster/agent-hub.ts';
import type { JobRecord } from '../../coordinator/store/job-store.ts';
import { startCluster, spawnProc, type LocalCluster, type Proc } from '../../scripts/local-cluster.ts';
import { agentExamples } from '../protocol/fixtures.ts';
import { untilJob, writeCorpus } from '../support/jobs.ts';
import { makeTestPki, type TestPki } from '../support/tls.ts';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { until } from '../support/until.ts';

const COORDINATOR = new URL('../../bin/coordinator.js', import.meta.url).pathname;
const AGENT = new URL('../../bin/node-agent.js', import.meta.url).pathname;

// ---------------------------------------------------------------------------------------------------------------
// A raw agent: says hello, heartbeats, records what the coordinator sends and how the connection ends.

interface Closed {
  code: number;
  reason: string;
}

class RawAgent {
  readonly ws: WebSocket;
  readonly received: Envelope[] = [];
  readonly welcome: Promise<Envelope | null>; // null: closed before a welcome
  readonly closed: Promise<Closed>;
  #heartbeat: NodeJS.Timeout | undefined;
  static readonly all = new Set<RawAgent>();

  constructor(url: string, hello: Record<string, unknown>, opts: WebSocket.ClientOptions = {}) {
    RawAgent.all.add(this);
    this.ws = new WebSocket(url, { perMessageDeflate: false, ...opts });
    this.ws.on('error', () => {}); // the close says why
    this.ws.on('open', () => this.ws.send(encodeMessage(hello as Envelope)));
    let gotWelcome: (w: Envelope | null) => void;
    this.welcome = new Promise((r) => (gotWelcome = r));
    this.closed = new Promise((resolve) =>
      this.ws.on('close', (code, reason) => {
        clearInterval(this.#heartbeat);
        RawAgent.all.delete(this);
        gotWelcome(null);
        resolve({ code, reason: reason.toString() });
      }),
    );
    let seq = 0;
    this.ws.on('message', (data: Buffer) => {
      const msg = decodeFrame(data);
      this.received.push(msg);
      if (msg.type === 'welcome') {
        gotWelcome(msg);
        this.#heartbeat = setInterval(() => this.send({ type: 'heartbeat', seq: ++seq, sentAt: Date.now() }), 300);
      }
    });
  }

  send(msg: Record<string, unknown>): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(encodeMessage(msg as Envelope));
  }

  async next(type: string, timeoutMs = 10_000): Promise<Envelope> {
    return until(`a ${type} message`, async () => this.received.find((m) => m.type === type), timeoutMs);
  }

  close(): void {
    this.ws.terminate();
  }
}

/** A hello for a raw agent: the fixture's, without its made-up identity, with this cluster's token. */
function hello(token: string, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const { nodeId: _id, nodeSecret: _secret, ...rest } = agentExamples.hello;
  return { ...rest, name: 'raw-agent', token, ...overrides };
}

/** Runs `coordinator ARGS… --url --token --ca` and returns its exit code and output. */
async function coordinatorCli(cluster: LocalCluster, pki: TestPki, args: string[]): Promise<{ code: number | null; output: string }> {
  const p = spawnProc([COORDINATOR, ...args, '--url', cluster.url, '--token', cluster.token, '--ca', pki.caCert], { stderr: 'capture' });
  const code = await p.exited;
  return { code, output: p.output.join('\n') };
}

/** Every secret in `secrets` that occurs in `text`, by name. */
function leaks(text: string, secrets: Record<string, string>): string[] {
  return Object.entries(secrets).filter(([, value]) => value && text.includes(value)).map(([name]) => name);
}

const tinySpec = (name: string, corpus: string, steps: number) => ({
  name,
  model: { vocabSize: 300, nCtx: 32, nLayer: 1, nHead: 2, nEmbd: 32 },
  data: { corpus, heldOutFraction: 0.2 },
  training: { steps, batchSize: 4, seqLen: 32, lr: 3e-3, evalEvery: steps, evalBatches: 1, checkpointEvery: steps },
  parallel: { data: 2 },
});

// ---------------------------------------------------------------------------------------------------------------

describe('a cluster on TLS with per-agent credentials', () => {
  let pki: TestPki;
  let cluster: LocalCluster;
  let dir: string;
  let corpus: string;
  let untrustingAgent: Proc; // started in `before`: its failed handshake overlaps the other tests
  const secrets: Record<string, string> = {}; // every credential the test sees, for the leak check at the end
  const nodes = async () => (await cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes')).nodes;
  const agentUrl = () => `${cluster.wsUrl}/ws/agent`;
  const raw = (overrides: Record<string, unknown> = {}) => new RawAgent(agentUrl(), hello(cluster.token, overrides), { ca: [readFileSync(pki.caCert, 'utf8')] });

  before(async () => {
    pki = makeTestPki();
    dir = mkdtempSync(join(tmpdir(), 'security-'));
    corpus = writeCorpus(dir, 0, 3);
    // agent-0 trusts the CA with --ca (startCluster adds it); both agents' peer listeners serve wss://.
    cluster = await startCluster({
      agents: 1,
      tls: { cert: pki.cert, key: pki.key, ca: pki.caCert },
      agentArgs: ['--tls-cert', pki.cert, '--tls-key', pki.key],
      logLevel: 'debug',
      stderr: 'capture',
    });
    secrets['cluster token'] = cluster.token;
    // agent-1 trusts it the zero-config way, NODE_EXTRA_CA_CERTS, for its control link, artifacts and peer links.
    const second = spawnProc(
      [AGENT, 'join', cluster.wsUrl, '--token', cluster.token, '--name', 'agent-1', '--peer-listen', '127.0.0.1', '--backend', 'wasm', '--tls-cert', pki.cert, '--tls-key', pki.key],
      { stderr: 'capture', env: { LOG_LEVEL: 'debug', NODE_EXTRA_CA_CERTS: pki.caCert } },
    );
    cluster.agents.push(second); // stopped with the cluster
    untrustingAgent = spawnProc([AGENT, 'join', cluster.wsUrl, '--token', cluster.token, '--name', 'untrusting', '--backend', 'wasm', '--max-retries', '0'], {
      stderr: 'capture',
      env: { LOG_LEVEL: 'warn' },
    });
    await cluster.waitForNodes(2);
  });
  after(async () => {
    for (const a of RawAgent.all) a.close();
    if (untrustingAgent?.child.exitCode === null) untrustingAgent.child.kill('SIGKILL');
    await cluster?.stop();
    pki?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  describe('TLS end to end', () => {
    test('agents trusting the CA (--ca, or NODE_EXTRA_CA_CERTS) join an https:// coordinator over wss:// and advertise wss:// peer addresses', async () => {
      assert.match(cluster.url, /^https:\/\//);
      const list = await nodes();
      assert.deepEqual(list.filter((n) => n.status === 'alive' && n.connected).map((n) => n.name).sort(), ['agent-0', 'agent-1']);
      for (const n of list) assert.match(n.peerAddress, /^wss:\/\/127\.0\.0\.1:\d+$/);
    });

    test('a small data-parallel job trains to success over HTTPS artifacts, WSS control and WSS peer links', async () => {
      const job = await cluster.api<JobRecord>('POST', '/api/jobs', tinySpec('tls-job', corpus, 6));
      const done = await untilJob(cluster, job.id, (v) => v.job.state === 'succeeded', 90_000);
      assert.deepEqual(done.metrics.filter((m) => m.kind === 'train').map((m) => m.step), [1, 2, 3, 4, 5, 6]);
      assert.equal(done.checkpoints.length, 1, 'the checkpoint went up over HTTPS');
      // The agents' own /metrics is served over TLS on the peer port too.
      for (const n of await nodes()) {
        const res = await cluster.fetch(`${n.peerAddress.replace(/^wss:/, 'https:')}/metrics`);
        assert.equal(res.status, 200);
        assert.match(await res.text(), /meshtrain_agent_/);
      }
    });

    test('a plain http:// or ws:// client to the TLS coordinator is refused', async () => {
      const plainUrl = cluster.url.replace(/^https:/, 'http:');
      const http = await fetch(`${plainUrl}/healthz`).then((r) => `answered ${r.status}`, (err: Error) => `failed: ${err.message}`);
      assert.match(http, /^failed|^answered 400/, http);
      const ws = new RawAgent(`${plainUrl.replace(/^http:/, 'ws:')}/ws/agent`, hello(cluster.token));
      assert.equal(await ws.welcome, null, 'no welcome over plain ws://');
      await ws.closed;
    });

    test('a client that does not trust the CA fails the handshake: fetch, ws, and an agent without --ca (exit 3 naming the certificate error)', async () => {
      await assert.rejects(fetch(`${cluster.url}/healthz`), (err: Error & { cause?: { code?: string } }) => {
        assert.match(String(err.cause?.code), /CERT|VERIFY|SELF_SIGNED/, String(err.cause?.code));
        return true;
      });
      const ws = new RawAgent(agentUrl(), hello(cluster.token), { ca: [readFileSync(pki.otherCaCert, 'utf8')] });
      assert.equal(await ws.welcome, null, 'no welcome from a coordinator whose certificate we cannot verify');

      assert.equal(await untrustingAgent.exited, 3);
      assert.match(untrustingAgent.output.join('\n'), /AGT_ERR_UNREACHABLE: .*\((UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|[A-Z_]*CERT[A-Z_]*)\)/);
    });
  });

  describe('revocable node credentials', () => {
    test('`coordinator nodes revoke ID` disconnects the agent, stops and re-queues its job, and the agent exits 2 naming AGT_ERR_REVOKED', async () => {
      const job = await cluster.api<JobRecord>('POST', '/api/jobs', tinySpec('revoke-me', corpus, 400));
      await untilJob(cluster, job.id, (v) => v.job.state === 'running' && v.job.step >= 1, 60_000);
      const victim = (await nodes()).find((n) => n.name === 'agent-1')!;
      const proc = cluster.agents[1]!;

      const cli = await coordinatorCli(cluster, pki, ['nodes', 'revoke', victim.id]);
      assert.equal(cli.code, 0, cli.output);
      assert.match(cli.output, new RegExp(`revoked ${victim.id} \\(agent-1\\)`));

      assert.equal(await proc.exited, 2, 'exit code 2: retrying cannot fix it');
      const said = proc.output.join('\n');
      assert.match(said, /AGT_ERR_REVOKED: the coordinator revoked this agent's credential/);
      assert.match(said, new RegExp(`node ${victim.id}`), 'the message names the node');
      assert.match(said, /coordinator nodes revoke/, 'and says what happened and what to do');

      const revoked = (await nodes()).find((n) => n.id === victim.id)!;
      assert.equal(revoked.status, 'revoked');
      assert.equal(revoked.connected, false);
      // The node-down path of a dead agent stopped the attempt; the job waits in the queue for a second agent.
      await until('the coordinator to stop the attempt', async () =>
        cluster.coordinator.output.find((l) => l.includes(`job ${job.id}: member ${victim.id} went down (revoked by an operator); stopping attempt 1`)));
      const requeued = await untilJob(cluster, job.id, (v) => v.job.state === 'queued');
      assert.match(requeued.job.stateReason, /waiting for 2 free agents|went down \(revoked/);
      const survivor = (await nodes()).find((n) => n.name === 'agent-0')!;
      assert.equal(survivor.status, 'alive', 'the other member is untouched');
      await cluster.api('POST', `/api/jobs/${job.id}/cancel`); // one agent is left: the job would wait for a second

      const health = (await (await cluster.fetch(`${cluster.url}/healthz`)).json()) as { nodes: Record<string, number> };
      assert.equal(health.nodes.revoked, 1);
      const metrics = await (await cluster.fetch(`${cluster.url}/metrics`)).text();
      assert.match(metrics, /^meshtrain_nodes\{status="revoked"\} 1$/m);
    });

    test('revoking twice changes nothing, and an unknown node id is a 404 CRD_ERR_NOT_FOUND (the CLI exits 1 saying so)', async () => {
      const victim = (await nodes()).find((n) => n.status === 'revoked')!;
      const again = await cluster.api<{ node: NodeView }>('POST', `/api/nodes/${victim.id}/revoke`);
      assert.equal(again.node.status, 'revoked');
      assert.equal(again.node.statusReason, victim.statusReason);

      const res = await cluster.fetch(`${cluster.url}/api/nodes/node-nosuch/revoke`, { method: 'POST', headers: { authorization: `Bearer ${cluster.token}` } });
      assert.equal(res.status, 404);
      assert.deepEqual(await res.json(), { error: { code: 'CRD_ERR_NOT_FOUND', message: 'no node node-nosuch' } });

      const cli = await coordinatorCli(cluster, pki, ['nodes', 'revoke', 'node-nosuch']);
      assert.equal(cli.code, 1);
      assert.match(cli.output, /CRD_ERR_NOT_FOUND: no node node-nosuch/);

      const unauthorized = await cluster.fetch(`${cluster.url}/api/nodes/${victim.id}/revoke`, { method: 'POST' });
      assert.equal(unauthorized.status, 401, 'revoking takes the cluster token like every /api route');
    });

    test('a revoked raw agent is closed with 4010 REVOKED, and a hello presenting its id and last secret is refused with 4010', async () => {
      const agent = raw({ name: 'raw-revoked' });
      const welcome = (await agent.welcome)!;
      assert.equal(welcome.type, 'welcome');
      const { nodeId, nodeSecret } = welcome as unknown as { nodeId: string; nodeSecret: string };
      secrets['revoked raw agent secret'] = nodeSecret;

      await cluster.api('POST', `/api/nodes/${nodeId}/revoke`);
      const closed = await agent.closed;
      assert.equal(closed.code, CloseCode.REVOKED, JSON.stringify(closed));

      const replay = raw({ name: 'raw-revoked', nodeId, nodeSecret });
      assert.equal(await replay.welcome, null, 'no welcome');
      const refused = await replay.closed;
      assert.equal(refused.code, CloseCode.REVOKED, JSON.stringify(refused));
      assert.match(refused.reason, new RegExp(`${nodeId} was revoked`));
      const node = (await nodes()).find((n) => n.id === nodeId)!;
      assert.equal(node.status, 'revoked', 'the refused hello did not bring it back');
    });

    test('a replayed node secret is refused: secret1 reclaims once (→ secret2), then secret1 again is closed with 4005', async () => {
      const first = raw({ name: 'raw-replay' });
      const w1 = (await first.welcome) as unknown as { nodeId: string; nodeSecret: string };
      first.close();
      await first.closed;

      const second = raw({ name: 'raw-replay', nodeId: w1.nodeId, nodeSecret: w1.nodeSecret });
      const w2 = (await second.welcome) as unknown as { nodeId: string; nodeSecret: string };
      assert.equal(w2.nodeId, w1.nodeId, 'the first secret reclaims the id');
      assert.notEqual(w2.nodeSecret, w1.nodeSecret, 'and is rotated by it');
      secrets['replayed secret 1'] = w1.nodeSecret;
      secrets['replayed secret 2'] = w2.nodeSecret;

      const replay = raw({ name: 'raw-replay', nodeId: w1.nodeId, nodeSecret: w1.nodeSecret });
      assert.equal(await replay.welcome, null);
      const refused = await replay.closed;
      assert.equal(refused.code, CloseCode.UNAUTHORIZED, JSON.stringify(refused));
      assert.match(refused.reason, /secret does not match/);

      const node = (await nodes()).find((n) => n.id === w1.nodeId)!;
      assert.equal(node.connected, true, 'the holder of the current secret keeps its connection');
      assert.equal(second.ws.readyState, WebSocket.OPEN);
      second.close();
    });

    test('a hello without a token is closed with 4003 INVALID naming the field, and the coordinator carries on', async () => {
      const { token: _token, ...noToken } = hello(cluster.token, { name: 'raw-no-token' });
      const agent = new RawAgent(agentUrl(), noToken, { ca: [readFileSync(pki.caCert, 'utf8')] });
      assert.equal(await agent.welcome, null);
      const closed = await agent.closed;
      assert.equal(closed.code, CloseCode.INVALID, JSON.stringify(closed));
      assert.match(closed.reason, /token/);
      const health = await cluster.fetch(`${cluster.url}/healthz`);
      assert.equal(health.status, 200);
      assert.equal((await nodes()).find((n) => n.name === 'agent-0')?.connected, true);
    });
  });

  test('no log line at LOG_LEVEL=debug and no /metrics output holds the cluster token, a node secret or a group token', async () => {
    // A group with a raw agent in it hands the raw agent the group token (and the real agent, which might log it).
    // The raw agent advertises a port of ours as its peer listener: the real agent, its ring predecessor, dials it
    // once it holds its own assignment (and the group token), which is the moment the leak check below needs.
    let dialed = false;
    const rawPeerPort = createServer((s) => ((dialed = true), s.destroy())).unref();
    await new Promise<void>((resolve) => rawPeerPort.listen(0, '127.0.0.1', resolve));
    const member = raw({ name: 'raw-group', peerAddress: `wss://127.0.0.1:${(rawPeerPort.address() as AddressInfo).port}` });
    const w = (await member.welcome) as unknown as { nodeId: string; nodeSecret: string };
    secrets['group member secret'] = w.nodeSecret;
    const real = (await nodes()).find((n) => n.name === 'agent-0')!;
    const forming = cluster.api('POST', '/api/groups', { nodes: [real.id, w.nodeId], segmentBytes: 4096 }).catch((err: Error) => err);
    const assign = (await member.next('group.assign')) as unknown as { groupId: string; rank: number; token: string };
    secrets['group token'] = assign.token;
    await until('agent-0 to dial the raw agent, its successor in the group\'s ring', async () => dialed, 30_000, 20);
    member.send({ type: 'group.failed', groupId: assign.groupId, rank: assign.rank, error: 'the raw agent does not link' });
    assert.ok((await forming) instanceof Error, 'the group fails to form: the raw agent never links');
    member.close();
    rawPeerPort.close();

    const texts: Array<readonly [string, string]> = [
      ...[cluster.coordinator, ...cluster.agents].map((p: Proc, i) => [`process ${i} output`, p.output.join('\n')] as const),
      ['coordinator /metrics', await (await cluster.fetch(`${cluster.url}/metrics`)).text()],
      ['agent-0 /metrics', await (await cluster.fetch(`${real.peerAddress.replace(/^wss:/, 'https:')}/metrics`)).text()],
    ];
    assert.match(texts[0]![1], / DEBUG | INFO /, 'the coordinator did log');
    assert.match(texts[1]![1], / DEBUG | INFO /, 'agent-0 did log');
    for (const [where, text] of texts) assert.deepEqual(leaks(text, secrets), [], `${where} leaks nothing`);
  });
});
