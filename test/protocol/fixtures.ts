/**
 * Shared fixtures for the protocol tests: one hand-written valid example of every message type of every family,
 * and a description of each family (its schemas, its parser, an independent schema check). The example tables
 * are typed per family, so adding a message type without an example here is a compile error.
 */
import type { Static, TObject } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import type { Envelope } from '../../protocol/codec.ts';
import { agentMessages, coordinatorMessages, parseAgentMessage, parseCoordinatorMessage } from '../../protocol/control.ts';
import { parsePeerMessage, peerMessages } from '../../protocol/peer.ts';

type Examples<S extends Record<string, TObject>> = { [K in keyof S]: Static<S[K]> };

const capabilities = {
  backend: 'wasm',
  cores: 8,
  memoryBytes: 17_179_869_184,
  freeMemoryBytes: 8_589_934_592,
  matmulGflops: 41.5,
  platform: 'linux-x64',
  nodeVersion: 'v20.19.0',
};

export const agentExamples: Examples<typeof agentMessages> = {
  hello: {
    type: 'hello',
    protocol: '1.0',
    token: 'join-token-0123456789',
    name: 'büro-rechner 🖥',
    nodeId: 'node-7',
    nodeSecret: 's3cret/with+symbols=',
    capabilities,
    peerAddress: 'ws://10.0.0.7:7070',
    agentVersion: '0.1.0',
  },
  'relay.request': { type: 'relay.request', groupId: 'g1', to: 'node-3', session: 'rs-0a1b2c', key: 'relay-session-key_0123' },
  'relay.stats': {
    type: 'relay.stats',
    links: [{ nodeId: 'node-3', bytesToNode: 1024, bytesFromNode: 2048, linksOpen: 1, linksTotal: 2, dialerLegRttMs: 0.5, nodeLegRttMs: 0.25, relayedRttMs: 0.75 }, { nodeId: 'node-4', bytesToNode: 0, bytesFromNode: 0, linksOpen: 0, linksTotal: 1 }],
  },
  heartbeat: { type: 'heartbeat', seq: 2 ** 52, sentAt: 1_726_000_000_123.25 },
  leave: { type: 'leave', reason: 'shutting down (SIGTERM)' },
  'group.ready': { type: 'group.ready', groupId: 'g_1.a-b', rank: 65535 },
  'group.failed': { type: 'group.failed', groupId: 'g1', rank: 0, error: 'connect ECONNREFUSED 10.0.0.8:7070' },
  'collective.result': {
    type: 'collective.result',
    groupId: 'g1',
    runId: 'run-42',
    rank: 3,
    ok: false,
    error: 'timeout after 30000 ms',
    ms: [0, 1.5, 12.25, 1e6],
    bytes: 2 ** 40,
    digest: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    maxAbsErr: -0.5,
    attach: 16 * 1024 * 1024,
  },
  'job.rank': {
    type: 'job.rank',
    jobId: 'job-1a2b',
    attempt: 2,
    rank: 1,
    step: 120,
    stepMs: 250,
    computeMs: 180,
    allreduceMs: 40,
    bubbleMs: 20,
    waitMs: 10,
    link: { toRank: 0, bytes: 1_048_576, ms: 12.5 },
  },
  'job.progress': {
    type: 'job.progress',
    jobId: 'job-1a2b',
    attempt: 2,
    rank: 0,
    step: 120,
    loss: 3.25,
    evalLoss: 3.5,
    lr: 0.003,
    tokensPerS: 2500.5,
    stepMs: 410,
    computeMs: 350,
    allreduceMs: 60,
  },
  'job.checkpoint': {
    type: 'job.checkpoint',
    jobId: 'job-1a2b',
    attempt: 1,
    step: 100,
    files: { 'model.safetensors': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'optimizer.safetensors': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'state.json': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' },
  },
  'job.finished': {
    type: 'job.finished',
    jobId: 'job-1a2b',
    attempt: 1,
    rank: 0,
    ok: true,
    step: 200,
  },
};

export const coordinatorExamples: Examples<typeof coordinatorMessages> = {
  welcome: {
    type: 'welcome',
    protocol: '1.0',
    clusterId: 'cluster-A',
    nodeId: 'node-7',
    nodeSecret: 'x',
    heartbeatMs: 10,
    heartbeatTimeoutMs: 3_600_000,
  },
  'heartbeat.ack': { type: 'heartbeat.ack', seq: 0 },
  reach: { type: 'reach', reachable: false, reason: 'no answer from ws://10.0.0.7:7070 within 3000 ms', relay: 'coordinator' },
  'relay.open': { type: 'relay.open', session: 'rs-0a1b2c', key: 'relay-session-key_0123', groupId: 'g1', url: 'ws://10.0.0.9:7071/ws/relay' },
  'group.assign': {
    type: 'group.assign',
    groupId: 'g1',
    token: 'group-token',
    rank: 1,
    size: 3,
    peers: [
      { rank: 0, nodeId: 'a', address: 'ws://10.0.0.1:7070' },
      { rank: 1, nodeId: 'b', address: 'ws://[::1]:7070' },
      { rank: 2, nodeId: 'c', address: '', relay: { ticket: 'relay-ticket-0123', url: 'ws://10.0.0.1:7070/ws/relay' } },
    ],
    segmentBytes: 1024 * 1024,
    rings: [
      { id: 'world', members: [0, 1, 2] },
      { id: 'dp.0', members: [2, 0] },
      { id: 'pp_1-x', members: [1] },
    ],
    relayFor: { ticket: 'relay-ticket-0123', targets: ['c'] },
  },
  'relay.grant': { type: 'relay.grant', groupId: 'g1', ticket: 'relay-ticket-0123', targets: ['c', 'node-9'] },
  'group.release': { type: 'group.release', groupId: 'g1' },
  'collective.run': {
    type: 'collective.run',
    groupId: 'g1',
    runId: 'run-42',
    op: 'reducescatter',
    elements: 2 ** 28,
    seed: 2 ** 31,
    root: 2,
    repeats: 1000,
    verify: true,
    returnResult: false,
  },
  'job.start': {
    type: 'job.start',
    jobId: 'job-1a2b',
    attempt: 1,
    groupId: 'g1',
    rank: 1,
    world: 2,
    spec: {
      name: 'tiny',
      model: { vocabSize: 512, nCtx: 64, nLayer: 2, nHead: 4, nEmbd: 128 },
      data: { corpus: 'demo', heldOutFraction: 0.05 },
      training: { steps: 200, batchSize: 16, seqLen: 64, lr: 0.003, checkpointEvery: 50 },
      parallel: { data: 2 },
    },
    data: { 'tokenizer.json': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'index.json': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'train-00000.bin': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'heldout-00000.bin': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' },
    trace: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    resume: { step: 100, files: { 'model.safetensors': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'state.json': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' } },
  },
  'job.stop': { type: 'job.stop', jobId: 'job-1a2b', reason: 'cancelled by request' },
  error: { type: 'error', code: 'COORD_ERR_FULL', message: 'the cluster is full' },
};

export const peerExamples: Examples<typeof peerMessages> = {
  'peer.hello': { type: 'peer.hello', protocol: '1.0', groupId: 'g1', token: 'group-token', rank: 2, ring: 'dp.0' },
  'peer.welcome': { type: 'peer.welcome', rank: 0 },
  'peer.probe': { type: 'peer.probe', challenge: 'challenge-0123456789' },
  'peer.probed': { type: 'peer.probed', proof: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' },
  'ring.data': { type: 'ring.data', seq: 17, phase: 1, hop: 2, offset: 2 ** 32, count: 2 ** 28, attach: 64 * 1024 * 1024 },
  'stream.data': { type: 'stream.data', seq: 3, attach: 0 },
  'pipe.data': { type: 'pipe.data', tag: 'fwd:7.mb-0_a', attach: 4096 },
};

export interface Family {
  name: 'agent' | 'coordinator' | 'peer';
  schemas: Record<string, TObject>;
  parse(raw: Envelope): { type: string };
  examples: Record<string, Envelope>;
}

export const families: readonly Family[] = [
  { name: 'agent', schemas: agentMessages, parse: parseAgentMessage, examples: agentExamples },
  { name: 'coordinator', schemas: coordinatorMessages, parse: parseCoordinatorMessage, examples: coordinatorExamples },
  { name: 'peer', schemas: peerMessages, parse: parsePeerMessage, examples: peerExamples },
];

export const allTypeNames: readonly string[] = families.flatMap((f) => Object.keys(f.schemas));

/**
 * Checks a parsed message against its family's schema with TypeBox's interpreter (not the compiled check the
 * parser uses), and that it is a plain object whose fields are all its own.
 */
export function passesSchema(family: Family, msg: unknown): boolean {
  if (msg === null || typeof msg !== 'object' || Object.getPrototypeOf(msg) !== Object.prototype) return false;
  const type = Object.prototype.hasOwnProperty.call(msg, 'type') ? (msg as { type: unknown }).type : undefined;
  if (typeof type !== 'string' || !Object.prototype.hasOwnProperty.call(family.schemas, type)) return false;
  return Value.Check(family.schemas[type]!, msg);
}
