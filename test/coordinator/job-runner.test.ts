/**
 * The job runner on in-memory stores (MemoryJobStore, MemoryRunStore) and fake agents: FakeHub records what the
 * runner sends and delivers what the test says an agent reported; FakeGroups forms a group at once. The dataset is
 * prepared for real from a small corpus (once: later tests reuse it), checkpoints are real files in a temporary
 * artifact store, and the model is registered in a real registry. The clock is the test's.
 * Run: npx tsx --test test/coordinator/job-runner.test.ts
 */
import { after, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../common/log.ts';
import type { AgentMessage, CoordinatorMessage, JobProgress, JobStart } from '../../protocol/control.ts';
import { validateJobSpec, type ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { writeCheckpointFiles } from '../../model/checkpoint-files.ts';
import { MODEL_FILE } from '../../model/checkpoint.ts';
import { paramLayout, type GPTConfig } from '../../model/params.ts';
import type { AgentMessageListener, NodeView } from '../../coordinator/cluster/agent-hub.ts';
import type { GroupInfo } from '../../coordinator/cluster/groups.ts';
import { EventBus } from '../../coordinator/events.ts';
import { ModelRegistry } from '../../coordinator/registry/registry.ts';
import { ArtifactStore } from '../../coordinator/store/artifact-store.ts';
import { MemoryJobStore } from '../../coordinator/store/job-store.ts';
import { MemoryRunStore } from '../../coordinator/store/run-store.ts';
import { SqliteStateStore, type NodeRecord } from '../../coordinator/store/state-store.ts';
import type { RunnerGroups, RunnerHub } from '../../coordinator/jobs/attempt.ts';
import type { StoredPlan } from '../../coordinator/jobs/plan-report.ts';
import { JobRunner } from '../../coordinator/jobs/runner.ts';
import { RESTART_SETTLE_MS } from '../../coordinator/jobs/restarts.ts';
import { until } from '../support/until.ts';

const root = mkdtempSync(join(tmpdir(), 'job-runner-test-'));
after(() => rmSync(root, { recursive: true, force: true }));
const corpus = join(root, 'corpus.txt');
writeFileSync(corpus, loadDemoCorpus().documents.slice(0, 6).join('\n\n'));
const CONFIG: GPTConfig = { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 };

function spec(over: { parallel?: unknown; training?: Record<string, unknown>; corpus?: string } = {}): ResolvedJobSpec {
  const res = validateJobSpec({
    name: 'tiny',
    model: CONFIG,
    data: { corpus: over.corpus ?? corpus, heldOutFraction: 0.2 },
    training: { steps: 4, batchSize: 2, seqLen: 16, checkpointEvery: 2, ...over.training },
    parallel: over.parallel ?? { data: 2 },
  });
  assert.ok(res.ok, JSON.stringify(!res.ok && res.errors));
  return res.spec;
}

function node(id: string, i: number): NodeRecord {
  return {
    id, name: id, status: 'alive', statusReason: 'joined',
    capabilities: { backend: 'wasm', cores: 4, memoryBytes: 8 * 2 ** 30, freeMemoryBytes: 2 ** 30, matmulGflops: 10, platform: 'linux-x64', nodeVersion: 'v20.19.0' },
    peerAddress: `ws://10.0.0.${i}:9000`, agentVersion: '0.1.0', remoteAddress: `10.0.0.${i}:50000`,
    firstSeenMs: i, lastSeenMs: i, secretHash: '',
  };
}

/** Agents as the runner sees them: joined, down, what was sent to each, and what they report. */
class FakeHub implements RunnerHub {
  readonly sent: Array<{ nodeId: string; msg: CoordinatorMessage }> = [];
  readonly #nodes = new Map<string, NodeRecord>();
  readonly #listeners: AgentMessageListener[] = [];
  readonly #down: Array<(nodeId: string, reason: string) => void> = [];

  join(...ids: string[]): void {
    for (const id of ids) this.#nodes.set(id, node(id, this.#nodes.size + 1));
  }
  down(id: string, reason: string): void {
    this.#nodes.delete(id);
    for (const fn of this.#down) fn(id, reason);
  }
  report(nodeId: string, msg: AgentMessage): void {
    for (const fn of this.#listeners) fn(nodeId, msg, undefined);
  }
  starts(jobId: string): Array<{ nodeId: string; msg: JobStart }> {
    return this.sent.flatMap(({ nodeId, msg }) => (msg.type === 'job.start' && msg.jobId === jobId ? [{ nodeId, msg }] : []));
  }
  stops(jobId: string): Array<{ nodeId: string; reason: string }> {
    return this.sent.flatMap(({ nodeId, msg }) => (msg.type === 'job.stop' && msg.jobId === jobId ? [{ nodeId, reason: msg.reason }] : []));
  }

  onAgentMessage(fn: AgentMessageListener): void {
    this.#listeners.push(fn);
  }
  onNodeDown(fn: (nodeId: string, reason: string) => void): void {
    this.#down.push(fn);
  }
  availableNodes(): NodeRecord[] {
    return [...this.#nodes.values()];
  }
  isConnected(id: string): boolean {
    return this.#nodes.has(id);
  }
  send(nodeId: string, msg: CoordinatorMessage): void {
    this.sent.push({ nodeId, msg });
  }
  views(): NodeView[] {
    return [...this.#nodes.values()].map(({ secretHash: _s, ...n }) => ({ ...n, connected: true, heartbeatAgeMs: 0 }));
  }
}

/** Groups formed at once, members ranked in the order asked for. */
class FakeGroups implements RunnerGroups {
  readonly formed: GroupInfo[] = [];
  readonly released: string[] = [];
  async form(opts: { nodeIds?: string[]; segmentBytes: number }): Promise<GroupInfo> {
    const members = opts.nodeIds!.map((nodeId, rank) => ({ rank, nodeId, name: nodeId, address: `ws://${nodeId}:9000` }));
    const group: GroupInfo = { id: `g-${this.formed.length + 1}`, size: members.length, segmentBytes: opts.segmentBytes, state: 'ready', members, rings: [], createdAtMs: 0 };
    this.formed.push(group);
    return group;
  }
  release(id: string): void {
    this.released.push(id);
  }
}

function setUp(t: TestContext, nodes: string[], o: { stepTimeoutMs?: number } = {}) {
  const dir = mkdtempSync(join(root, 'case-'));
  const clock = { ms: 1_000_000 };
  const jobs = new MemoryJobStore(), runs = new MemoryRunStore(), hub = new FakeHub(), groups = new FakeGroups(), bus = new EventBus();
  hub.join(...nodes);
  const artifacts = new ArtifactStore(join(dir, 'artifacts'));
  const state = new SqliteStateStore(':memory:'); // the model registry's own table
  const registry = new ModelRegistry(join(dir, 'registry'), state.database);
  const runner = new JobRunner({
    jobs, runs, hub, groups, artifacts, registry, bus, dataDir: root, segmentBytes: 1 << 20, log: silentLogger,
    now: () => clock.ms, tickMs: 1_000_000, ...o,
  });
  t.after(() => {
    runner.close();
    state.close();
  });
  return { clock, jobs, runs, hub, groups, bus, artifacts, registry, runner };
}

type Fixture = ReturnType<typeof setUp>;

/** Submits a job and ticks until its attempt has started on every agent the plan chose. */
async function started(f: Fixture, s = spec()): Promise<{ jobId: string; rank: (r: number) => string }> {
  const job = f.jobs.create(s, f.clock.ms);
  f.runs.create(job.id, 'test');
  await f.runner.tick();
  const starts = f.hub.starts(job.id);
  assert.ok(starts.length > 0, `job started: ${f.jobs.get(job.id)!.stateReason}`);
  return { jobId: job.id, rank: (r) => starts.find((x) => x.msg.rank === r)!.nodeId };
}

const progress = (jobId: string, attempt: number, step: number): JobProgress => ({
  type: 'job.progress', jobId, attempt, rank: 0, step, loss: 5 - step / 10, lr: 1e-3, tokensPerS: 100, stepMs: 50, computeMs: 40, allreduceMs: 5,
});

/** A real canonical checkpoint of CONFIG at `step` (weights differ by step), stored in the artifact store. */
async function storedCheckpoint(artifacts: ArtifactStore, step: number): Promise<Record<string, string>> {
  const layout = paramLayout(CONFIG);
  const scratch = await artifacts.scratchDir();
  const files = await writeCheckpointFiles(scratch, {
    step, optimizerStep: step, state: { step },
    weights: layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape }] as const),
    moments: layout.specs.map((s) => s.name),
    async tensor(_group, name) {
      const s = layout.specs.find((p) => p.name === name)!;
      return new Float32Array(s.size).map((_, i) => Math.sin(i + step));
    },
  });
  const out: Record<string, string> = {};
  for (const [name, f] of Object.entries(files)) {
    await artifacts.commitFile(f.path, f.sha256);
    out[name] = f.sha256;
  }
  rmSync(scratch, { recursive: true, force: true });
  return out;
}

test('a queued job with enough free agents starts on them in the layout the planner chose', async (t) => {
  const f = setUp(t, ['a', 'b']);
  const { jobId } = await started(f);
  const starts = f.hub.starts(jobId).sort((x, y) => x.msg.rank - y.msg.rank);
  assert.deepEqual(starts.map((s) => [s.msg.rank, s.msg.world, s.msg.attempt]), [[0, 2, 1], [1, 2, 1]]);
  assert.deepEqual(new Set(starts.map((s) => s.nodeId)), new Set(['a', 'b']));
  assert.deepEqual(starts[0]!.msg.plan?.layout, { data: 2, pipeline: 1, tensor: 1 });
  assert.equal(starts[0]!.msg.resume, undefined, 'nothing to resume from');
  const job = f.jobs.get(jobId)!;
  assert.equal(job.state, 'running');
  assert.equal(job.stateReason, 'attempt 1: 2×1×1 (data × pipeline × tensor) on 2 agents, from scratch');
  assert.deepEqual((job.plan as StoredPlan).chosen?.layout, { data: 2, pipeline: 1, tensor: 1 });
  assert.deepEqual(f.runs.get(jobId)!.data?.files, starts[0]!.msg.data, 'the dataset is recorded for tracking');
  assert.deepEqual([...f.runner.roles().keys()].sort(), ['a', 'b']);
  assert.equal(f.runner.live(jobId)!.attempt, 1);
});

test('a job waits, saying for how many agents, while too few are free', async (t) => {
  const f = setUp(t, ['a']);
  const job = f.jobs.create(spec(), f.clock.ms);
  await f.runner.tick();
  assert.deepEqual(f.hub.starts(job.id), []);
  assert.deepEqual([f.jobs.get(job.id)!.state, f.jobs.get(job.id)!.stateReason], ['queued', 'waiting for 2 free agents (1 free)']);
});

test('progress reports become metric rows, and reports of an attempt that ended are ignored', async (t) => {
  const f = setUp(t, ['a', 'b']);
  const { jobId, rank } = await started(f);
  f.hub.report(rank(0), progress(jobId, 1, 1));
  f.hub.report(rank(0), { ...progress(jobId, 1, 2), evalLoss: 4.9 });
  f.hub.report(rank(0), progress(jobId, 7, 3)); // not this attempt
  assert.deepEqual(f.jobs.metrics(jobId).map((m) => [m.step, m.kind]), [[1, 'train'], [2, 'eval'], [2, 'train']]);
  const row = f.jobs.metrics(jobId).find((m) => m.step === 1)!.values;
  assert.equal(row.waitMs, 5, 'stepMs − computeMs − allreduceMs (no pipeline bubble)');
  assert.equal(f.jobs.get(jobId)!.step, 2);
  assert.equal(f.runner.live(jobId)!.evalLoss, 4.9);
});

test('a job whose agent goes down is queued and resumes from its last checkpoint on the agents there are', async (t) => {
  const f = setUp(t, ['a', 'b']);
  const { jobId, rank } = await started(f);
  const files = { 'model.safetensors': await f.artifacts.put(Buffer.from('weights at step 2')) };
  f.hub.report(rank(0), { type: 'job.checkpoint', jobId, attempt: 1, step: 2, files });
  await until('the checkpoint is recorded', async () => f.jobs.checkpoints(jobId).length === 1, 5000, 10);
  f.hub.report(rank(0), progress(jobId, 1, 3)); // past the checkpoint: recomputed by the next attempt

  f.hub.down('b', 'heartbeats stopped');
  const queued = f.jobs.get(jobId)!;
  assert.equal(queued.state, 'queued');
  assert.match(queued.stateReason, /^member b went down \(heartbeats stopped\); will resume from the checkpoint of step 2 or the last good one before it \(restart 1 of 10\)$/);
  assert.deepEqual(f.hub.stops(jobId).map((s) => s.nodeId), ['a'], 'the agent still there is told to stop');
  assert.deepEqual(f.groups.released, ['g-1']);

  f.hub.join('c');
  await f.runner.tick();
  assert.equal(f.hub.starts(jobId).length, 2, 'no new attempt while the failure settles');
  f.clock.ms += RESTART_SETTLE_MS + 1;
  await f.runner.tick();
  const second = f.hub.starts(jobId).filter((s) => s.msg.attempt === 2);
  assert.deepEqual(new Set(second.map((s) => s.nodeId)), new Set(['a', 'c']));
  for (const s of second) assert.deepEqual(s.msg.resume, { step: 2, files });
  assert.match(f.jobs.get(jobId)!.stateReason, /^attempt 2: .*resuming from step 2$/);
  assert.deepEqual(f.jobs.metrics(jobId).map((m) => m.step), [], 'step 3 was rewound');
  assert.equal(f.jobs.get(jobId)!.step, 2);
});

test('a completed job registers its final checkpoint as a new version and keeps only the newest checkpoints', async (t) => {
  const f = setUp(t, ['a']);
  const models: number[] = [];
  f.bus.on('model', (e) => models.push(e.version));
  const { jobId, rank } = await started(f, spec({ parallel: { data: 1 }, training: { keepCheckpoints: 1 } }));
  const step2 = await storedCheckpoint(f.artifacts, 2);
  const step4 = await storedCheckpoint(f.artifacts, 4);
  f.hub.report(rank(0), { type: 'job.checkpoint', jobId, attempt: 1, step: 2, files: step2 });
  await until('step 2 recorded', async () => f.jobs.checkpoints(jobId).length === 1, 5000, 10);
  f.hub.report(rank(0), progress(jobId, 1, 4));
  f.hub.report(rank(0), { type: 'job.checkpoint', jobId, attempt: 1, step: 4, files: step4 });
  await until('step 2 pruned', async () => !f.artifacts.has(step2[MODEL_FILE]!), 5000, 10);
  assert.deepEqual(f.jobs.checkpoints(jobId).map((c) => c.step), [4]);
  assert.ok(f.artifacts.has(step4[MODEL_FILE]!));

  f.hub.report(rank(0), { type: 'job.finished', jobId, attempt: 1, rank: 0, ok: true, step: 4 });
  await until('the job ends', async () => f.jobs.get(jobId)!.state !== 'running', 10_000, 10);
  const job = f.jobs.get(jobId)!;
  assert.deepEqual([job.state, job.stateReason, job.modelVersion], ['succeeded', 'registered tiny v1', 1]);
  const version = f.registry.get('tiny', 1);
  assert.equal(version.files[MODEL_FILE]!.sha256, step4[MODEL_FILE], 'the final checkpoint is the version');
  assert.equal(version.lineage.jobId, jobId);
  assert.deepEqual(models, [1]);
  assert.deepEqual(f.groups.released, ['g-1']);
  assert.deepEqual(f.hub.stops(jobId), [], 'a finished attempt is released, not stopped');
});

test('cancelling a running job stops its attempt on every agent', async (t) => {
  const f = setUp(t, ['a', 'b']);
  const { jobId, rank } = await started(f);
  f.runner.cancel(jobId, 'cancelled by request');
  assert.deepEqual([f.jobs.get(jobId)!.state, f.jobs.get(jobId)!.stateReason], ['cancelled', 'cancelled by request']);
  assert.deepEqual(f.hub.stops(jobId).map((s) => [s.nodeId, s.reason]).sort(), [['a', 'cancelled by request'], ['b', 'cancelled by request']]);
  assert.deepEqual(f.groups.released, ['g-1']);
  f.hub.report(rank(0), progress(jobId, 1, 1));
  assert.deepEqual(f.jobs.metrics(jobId), [], 'what the stopped attempt still reports is not recorded');
  assert.deepEqual(f.runner.roles(), new Map());
});

test('an attempt that reports nothing within stepTimeoutMs is stopped and its job queued to resume', async (t) => {
  const f = setUp(t, ['a', 'b'], { stepTimeoutMs: 60_000 });
  const { jobId } = await started(f);
  f.clock.ms += 60_000;
  await f.runner.tick();
  assert.equal(f.jobs.get(jobId)!.state, 'running', 'exactly the timeout is not yet a stall');
  f.clock.ms += 1;
  await f.runner.tick();
  assert.deepEqual([f.jobs.get(jobId)!.state, f.jobs.get(jobId)!.stateReason],
    ['queued', 'no step reported within 60 s (stepTimeoutMs); will resume from the start (no checkpoint yet) (restart 1 of 10)']);
  assert.equal(f.hub.stops(jobId).length, 2);
});

test('a rank that fails through the job\'s own fault fails the job without a restart', async (t) => {
  const f = setUp(t, ['a', 'b']);
  const { jobId, rank } = await started(f);
  f.hub.report(rank(1), { type: 'job.finished', jobId, attempt: 1, rank: 1, ok: false, step: 3, error: 'the loss diverged', fatal: true });
  assert.deepEqual([f.jobs.get(jobId)!.state, f.jobs.get(jobId)!.stateReason], ['failed', `rank 1 (${rank(1)}) failed: the loss diverged`]);
  f.clock.ms += 10_000;
  await f.runner.tick();
  assert.equal(f.hub.starts(jobId).length, 2, 'never started again');
});

test('a corpus that is not there fails the job at its first attempt instead of retrying', async (t) => {
  const f = setUp(t, ['a', 'b']);
  const job = f.jobs.create(spec({ corpus: join(root, 'no-such-corpus.txt') }), f.clock.ms);
  await f.runner.tick();
  const after = f.jobs.get(job.id)!;
  assert.equal(after.state, 'failed');
  assert.match(after.stateReason, /^attempt 1 could not start: ENOENT/);
  assert.deepEqual(f.hub.starts(job.id), []);
});
