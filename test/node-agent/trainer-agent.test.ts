/**
 * The agent's job.start / job.stop handling against a minimal fake coordinator: one HTTP server that serves
 * /api/artifacts/<sha> from a folder and speaks the control protocol on /ws/agent (welcome, group.assign of a
 * one-rank group, job.start, job.stop), so the agent's real ArtifactClient, Group and worker are used.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { WebSocketServer } from 'ws';
import { Agent } from '../../node-agent/agent.ts';
import { MessageConnection } from '../../protocol/connection.ts';
import { MAX_CONTROL_ATTACHMENT, MAX_CONTROL_FRAME, parseAgentMessage, type AgentMessage, type CoordinatorMessage } from '../../protocol/control.ts';
import { PROTOCOL_VERSION } from '../../protocol/version.ts';
import { jobRings } from '../../protocol/layout.ts';
import { serverOptions } from '../../protocol/ws-options.ts';
import { silentLogger } from '../../common/log.ts';
import { DEFAULT_BACKOFF } from '../../node-agent/backoff.ts';
import { sha256, tinyDataset, tinySpec, type Dataset } from './trainer-support.ts';

const TOKEN = 'test-cluster-token-123456';
let ds: Dataset;
let server: Server;
let port: number;
let agent: Agent;
let runDone: Promise<void>;
let workDir: string;
const received: AgentMessage[] = [];
let conn: MessageConnection<AgentMessage, CoordinatorMessage> | null = null;
let waiters: Array<() => void> = [];

function next<T extends AgentMessage['type']>(type: T, pred: (m: Extract<AgentMessage, { type: T }>) => boolean = () => true, ms = 30_000) {
  return new Promise<Extract<AgentMessage, { type: T }>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} within ${ms} ms`)), ms);
    const check = () => {
      const i = received.findIndex((m) => m.type === type && pred(m as Extract<AgentMessage, { type: T }>));
      if (i < 0) return false;
      clearTimeout(timer);
      resolve(received.splice(i, 1)[0] as Extract<AgentMessage, { type: T }>);
      return true;
    };
    const retry = () => void (check() || waiters.push(retry));
    if (!check()) waiters.push(retry);
  });
}

before(async () => {
  ds = await tinyDataset();
  workDir = await mkdtemp(join(ds.root, 'agent-'));
  server = createServer(async (req, res) => {
    const m = /^\/api\/artifacts\/([0-9a-f]{64})$/.exec(req.url ?? '');
    if (req.headers.authorization !== `Bearer ${TOKEN}` || !m) return void res.writeHead(404).end();
    if (req.method === 'PUT') {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const body = Buffer.concat(chunks);
      if (sha256(body) !== m[1]) return void res.writeHead(400).end('{}');
      await ds.store.put(body);
      return void res.writeHead(201).end('{}');
    }
    if (!ds.store.has(m[1]!)) return void res.writeHead(404).end('{}');
    res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(await ds.store.get(m[1]!));
  });
  const wss = new WebSocketServer({ ...serverOptions(MAX_CONTROL_FRAME), server, path: '/ws/agent' });
  wss.on('connection', (ws) => {
    const c: MessageConnection<AgentMessage, CoordinatorMessage> = new MessageConnection(ws, {
      parse: parseAgentMessage,
      label: 'fake coordinator',
      log: silentLogger,
      maxAttachmentBytes: MAX_CONTROL_ATTACHMENT,
      onMessage: (msg) => {
        if (msg.type === 'hello') {
          c.send({ type: 'welcome', protocol: PROTOCOL_VERSION, clusterId: 'c1', nodeId: 'n1', nodeSecret: 'secret-secret-secret-1234', heartbeatMs: 1000, heartbeatTimeoutMs: 60_000 });
          conn = c; // only now may assignments be sent: an agent ignores anything before its welcome
          return;
        }
        if (msg.type === 'heartbeat') return void c.send({ type: 'heartbeat.ack', seq: msg.seq });
        received.push(msg);
        for (const w of waiters.splice(0)) w();
      },
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as { port: number }).port;
  agent = new Agent({
    url: `ws://127.0.0.1:${port}/ws/agent`,
    token: TOKEN,
    name: 'a1',
    capabilities: async () => ({ backend: 'wasm', cores: 2, memoryBytes: 2 ** 30, freeMemoryBytes: 2 ** 29, matmulGflops: 1, platform: 'linux', nodeVersion: process.version }),
    peerHost: '127.0.0.1',
    peerListenHost: '127.0.0.1',
    peerPort: 0,
    maxRetries: 0,
    backoff: DEFAULT_BACKOFF,
    collectiveIdleTimeoutMs: 5000,
    log: silentLogger,
    backend: 'wasm',
    workDir,
  });
  runDone = agent.run().catch(() => {});
  const deadline = Date.now() + 10_000;
  while (!conn && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.ok(conn, 'the agent connected and was welcomed');
  conn.send({ type: 'group.assign', groupId: 'g1', token: 'group-token-group-token-1', rank: 0, size: 1, peers: [{ rank: 0, nodeId: 'n1', address: 'ws://127.0.0.1:1' }], segmentBytes: 1 << 20, rings: jobRings({ data: 1, pipeline: 1, tensor: 1 }) });
  await next('group.ready');
});

after(async () => {
  await agent.stop('test over');
  await runDone;
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await rm(ds.root, { recursive: true, force: true });
});

const start = (jobId: string, groupId: string, steps: number) =>
  ({ type: 'job.start', jobId, attempt: 1, groupId, rank: 0, world: 1, spec: tinySpec({ steps }), data: ds.data }) as CoordinatorMessage;

test('job.start on a linked group trains, reports progress and finishes with its final checkpoint, fetched and uploaded over HTTP', async () => {
  conn!.send(start('j1', 'g1', 3));
  const fin = await next('job.finished', (m) => m.jobId === 'j1');
  assert.equal(fin.ok, true, fin.error);
  assert.equal(fin.step, 3);
  const steps: number[] = [];
  for (let s = 1; s <= 3; s++) steps.push((await next('job.progress', (m) => m.jobId === 'j1' && m.step === s)).step);
  assert.deepEqual(steps, [1, 2, 3]);
  const ckpt = await next('job.checkpoint', (m) => m.jobId === 'j1');
  assert.equal(ckpt.step, 3, 'checkpointEvery 0: a checkpoint at the end only');
  assert.deepEqual(Object.keys(ckpt.files).sort(), ['manifest.json', 'model.safetensors', 'optimizer.safetensors', 'state.json']);
  for (const digest of Object.values(ckpt.files)) assert.ok(ds.store.has(digest), 'uploaded over HTTP');
});

test('job.start for a group the agent is not in is refused with job.finished ok:false', async () => {
  conn!.send(start('j2', 'nope', 3));
  const fin = await next('job.finished', (m) => m.jobId === 'j2');
  assert.equal(fin.ok, false);
  assert.match(fin.error!, /not a member of group nope/);
});

test('a second job.start while a job runs is refused, and job.stop stops the running one', async () => {
  conn!.send(start('j3', 'g1', 10_000));
  await next('job.progress', (m) => m.jobId === 'j3' && m.step === 2);
  conn!.send(start('j4', 'g1', 3));
  const busy = await next('job.finished', (m) => m.jobId === 'j4');
  assert.equal(busy.ok, false);
  assert.match(busy.error!, /already running job j3/);
  const t0 = performance.now();
  conn!.send({ type: 'job.stop', jobId: 'j3', reason: 'cancelled by test' });
  const fin = await next('job.finished', (m) => m.jobId === 'j3', 5000);
  assert.equal(fin.ok, false);
  assert.match(fin.error!, /stopped: cancelled by test/);
  assert.ok(performance.now() - t0 < 2000);
});
