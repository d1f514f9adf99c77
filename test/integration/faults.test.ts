/**
 * npx tsx --test test/integration/faults.test.ts
 *
 * Faults on real processes, each survived: kill -9 a data-parallel agent or a pipeline stage mid-step, lose an
 * agent with no spare (the job shrinks, then grows back when one joins), cut one peer link with a partition (a TCP
 * proxy that silently drops every byte) while both agents stay connected to the coordinator, and a corrupt newest
 * checkpoint found when an agent dies. Each job must succeed with the uninterrupted run's loss curve, step for step
 * (relative 1e-4), every step recorded once, after at least one interrupted attempt that resumed from a checkpoint.
 * (Killing the coordinator itself is test/integration/resume.test.ts.)
 */
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NodeView } from '../../coordinator/cluster/agent-hub.ts';
import type { JobLive } from '../../coordinator/jobs/runner.ts';
import type { PlacementCell } from '../../coordinator/jobs/telemetry.ts';
import type { JobRecord } from '../../coordinator/store/job-store.ts';
import type { LocalCluster, Proc } from '../../scripts/local-cluster.ts';
import { assertSameCurve, clusterFixture, runToEnd, trainLosses, untilJob, writeCorpus, type JobView } from '../support/jobs.ts';
import { TcpProxy } from '../support/tcp-proxy.ts';

const MODEL = { vocabSize: 300, nCtx: 64, nLayer: 2, nHead: 2, nEmbd: 64 };
const STEPS = 40; // about 100 ms a step on two agents here: a kill lands mid-run
// Long enough for a new agent to start and join while the shrunk job still runs (it grew back at step 20–30 here),
// short enough that 1- and 2-replica float32 sums stay within 1e-4 of each other (at 100 steps, step 57 was 1.7e-4 off).
const ELASTIC_STEPS = 50;
const EVERY = 5; // checkpoint interval

type Parallel = { data: number; pipeline?: number; minData?: number };

let corpus = '';
let corpusDir = '';
before(() => {
  corpusDir = mkdtempSync(join(tmpdir(), 'faults-'));
  corpus = writeCorpus(corpusDir, 10, 18); // one corpus for every cluster: the reference runs serve them all
});
after(() => rmSync(corpusDir, { recursive: true, force: true }));

const layoutName = (p: Parallel) => `${p.data}x${p.pipeline ?? 1}${p.minData ? `-min${p.minData}` : ''}`;

const spec = (name: string, parallel: Parallel, steps = STEPS) => ({
  name,
  model: MODEL,
  data: { corpus, heldOutFraction: 0.2 },
  training: { steps, batchSize: 8, seqLen: 64, lr: 3e-3, checkpointEvery: EVERY },
  parallel,
});

/** The uninterrupted run of each spec, trained once on whichever cluster asks first and shared. */
const references = new Map<string, Promise<JobView>>();
function reference(cluster: LocalCluster, parallel: Parallel, steps = STEPS): Promise<JobView> {
  const key = `${layoutName(parallel)}-${steps}`;
  let ref = references.get(key);
  if (!ref) references.set(key, (ref = runToEnd(cluster, spec(`ref-${key}`, parallel, steps))));
  return ref;
}

interface AttemptLine {
  attempt: number;
  layout: string; // "2×1×1"
  nodes: string[];
  from: number | null; // the checkpoint step it resumed from; null: from scratch
}

/** The attempts of a job as the coordinator logs them (coordinator/jobs/runner.ts: "job ID attempt N started as L on … (…)"). */
function attemptsOf(cluster: LocalCluster, jobId: string): AttemptLine[] {
  const re = new RegExp(`job ${jobId} attempt (\\d+) started as (\\S+) on (.*) \\((?:resuming from step (\\d+)|from scratch)\\)`);
  return cluster.coordinator.output.flatMap((line) => {
    const m = re.exec(line);
    return m ? [{ attempt: Number(m[1]), layout: m[2]!, nodes: m[3]!.split(', '), from: m[4] === undefined ? null : Number(m[4]) }] : [];
  });
}

/** The coordinator's log lines about a job, and the warnings of every agent: what the product did. */
function evidence(cluster: LocalCluster, jobId: string): string {
  const coordinator = cluster.coordinator.output.filter((l) => l.includes(jobId) || / (WARN|ERROR) /.test(l));
  const agents = cluster.agents.flatMap((p, i) => p.output.filter((l) => / (WARN|ERROR) /.test(l) || l.includes('stopping job')).map((l) => `[agent-${i}] ${l}`));
  return `\n--- coordinator ---\n${coordinator.slice(-40).join('\n')}\n--- agents ---\n${agents.slice(-30).join('\n')}`;
}

/**
 * The coordinator marked `nodeId` dead. (Which of its two signals ends the attempt first, the node going down or a
 * survivor's rank failing on the closed link, is a race; both re-queue the job the same way.)
 */
async function assertMarkedDead(cluster: LocalCluster, nodeId: string, what: string): Promise<void> {
  const node = await cluster.api<{ node: { status: string; statusReason: string } }>('GET', `/api/nodes/${nodeId}`);
  assert.equal(node.node.status, 'dead', `${what}: ${JSON.stringify(node.node)}`);
}

/**
 * Runs `name` (layout `parallel`) on 3 agents, kills -9 the job agent `pick` chooses mid-step once a checkpoint is
 * in, and checks what every kill test checks: the job recovered the uninterrupted run's curve from a checkpoint at
 * or after the last one before the kill, and the coordinator marked the agent dead. Returns the victim and the first
 * attempt that started after the kill, for the test's own layout checks.
 */
async function killMemberMidRun(cluster: LocalCluster, name: string, parallel: Parallel, pick: (cell: PlacementCell) => boolean, what: string) {
  await ensureAgents(cluster, 3);
  const ref = await reference(cluster, parallel);
  const id = (await cluster.api<JobRecord>('POST', '/api/jobs', spec(name, parallel))).id;
  return withEvidence(cluster, () => id, async () => {
    await midRun(cluster, id, STEPS);
    const { placement } = await live(cluster, id);
    const victim = placement.find(pick);
    assert.ok(victim, `a ${what} to kill`);
    const checkpointed = await lastCheckpoint(cluster, id);
    await kill(procOf(cluster, victim.nodeName));
    await assertRecovered(cluster, id, ref, STEPS, checkpointed);
    await assertMarkedDead(cluster, victim.nodeId, `the coordinator saw the ${what} go down`);
    const second = attemptsOf(cluster, id).find((a) => a.attempt >= 2)!; // the first attempt that started after the kill
    return { placement, victim, second };
  });
}

/** Runs `body`; a failure carries the coordinator's and agents' log lines about the job. */
async function withEvidence<T>(cluster: LocalCluster, jobId: () => string | undefined, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (err) {
    const id = jobId();
    if (id && err instanceof Error) err.message += evidence(cluster, id);
    throw err;
  }
}

/**
 * The finished job: succeeded after more than one attempt, every later attempt resumed from a checkpoint at or
 * after `atLeast` (nothing recorded before the fault was lost), and the reference's losses step for step.
 */
async function assertRecovered(cluster: LocalCluster, id: string, ref: JobView, steps: number, atLeast: number): Promise<JobView> {
  const done = await untilJob(cluster, id, (v) => v.job.state === 'succeeded');
  assert.ok(done.job.attempt >= 2, `the job was interrupted (attempt ${done.job.attempt})`);
  const later = attemptsOf(cluster, id).filter((a) => a.attempt >= 2);
  assert.ok(later.length >= 1, 'the coordinator logged the attempt that resumed');
  for (const a of later) {
    assert.ok(a.from !== null, `attempt ${a.attempt} resumed from a checkpoint, not from scratch`);
    assert.ok(a.from >= atLeast && a.from % EVERY === 0, `attempt ${a.attempt} resumed from step ${a.from}, a checkpoint at or after step ${atLeast}`);
  }
  assertSameCurve(done, ref, steps);
  return done;
}

const nodes = async (cluster: LocalCluster) => (await cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes')).nodes;
const live = (cluster: LocalCluster, id: string) => cluster.api<JobLive>('GET', `/api/jobs/${id}/live`);

/** The agent process named `agent-<i>`: every agent here is started as agent-<its index in cluster.agents>. */
function procOf(cluster: LocalCluster, name: string): Proc {
  const proc = cluster.agents[Number(/^agent-(\d+)$/.exec(name)?.[1])];
  assert.ok(proc, `no agent process named ${name}`);
  return proc;
}

/** Starts agents until `n` are alive and connected. */
async function ensureAgents(cluster: LocalCluster, n: number): Promise<void> {
  const alive = (await nodes(cluster)).filter((v) => v.status === 'alive' && v.connected).length;
  for (let i = alive; i < n; i++) cluster.startAgent(`agent-${cluster.agents.length}`);
  await cluster.waitForNodes(n, 60_000);
}

async function kill(proc: Proc): Promise<number> {
  const at = Date.now();
  proc.child.kill('SIGKILL');
  await proc.exited;
  return at;
}

/** Waits for a running job past its first checkpoint with at least `left` steps to go, and returns it. */
const midRun = (cluster: LocalCluster, id: string, steps: number, left = 15) =>
  untilJob(cluster, id, (v) => v.job.state === 'running' && v.checkpoints.length >= 1 && v.job.step > v.checkpoints[0]!.step && v.job.step < steps - left);

/** The last checkpoint step the coordinator recorded. */
const lastCheckpoint = async (cluster: LocalCluster, id: string) => (await cluster.api<JobView>('GET', `/api/jobs/${id}`)).checkpoints[0]?.step ?? 0;

describe('jobs on three agents whose members are killed mid-step', () => {
  const fx = clusterFixture('faults-kill', [10, 18], { agents: 3, logLevel: 'info' });

  test('a data-parallel job that loses an agent to kill -9 re-plans onto the two left and continues the same loss curve', async () => {
    const { placement, victim, second } = await killMemberMidRun(fx.cluster, 'kill-dp', { data: 2 }, (c) => c.dp === 1, 'member');
    assert.equal(placement.length, 2);
    assert.equal(second.layout, '2×1×1', 'still two replicas: the spare took the dead agent\'s place');
    assert.ok(!second.nodes.includes(victim.nodeId), 'the dead agent is not in the new attempt');
  });

  test('a pipeline job whose stage-1 agent is killed mid-step resumes on the agents left with the same loss curve', async () => {
    const { victim, second } = await killMemberMidRun(fx.cluster, 'kill-stage', { data: 1, pipeline: 2 }, (c) => c.pp === 1, 'stage');
    assert.equal(second.layout, '1×2×1', 'two stages again, on the agents left');
    assert.ok(!second.nodes.includes(victim.nodeId));
  });

  test('a job whose newest checkpoint is corrupt when an agent dies resumes from the checkpoint before it', async () => {
    const { cluster } = fx;
    await ensureAgents(cluster, 3);
    const ref = await reference(cluster, { data: 2 });
    const id = (await cluster.api<JobRecord>('POST', '/api/jobs', spec('corrupt-checkpoint', { data: 2 }))).id;
    await withEvidence(cluster, () => id, async () => {
      // Just after a checkpoint lands, so that the next one cannot arrive between reading the newest and the kill.
      const mid = await untilJob(cluster, id, (v) => v.job.state === 'running' && v.checkpoints.length >= 2 && v.job.step - v.checkpoints[0]!.step <= 1 && v.job.step < STEPS - 10);
      const [newest, before] = mid.checkpoints as [typeof mid.checkpoints[0], typeof mid.checkpoints[0]];
      const digest = newest.files['model.safetensors']!;
      writeFileSync(join(cluster.dataDir, 'artifacts', 'sha256', digest.slice(0, 2), digest), 'not the weights any more');
      const { placement } = await live(cluster, id);
      await kill(procOf(cluster, placement.find((c) => c.rank === 0)!.nodeName));

      await assertRecovered(cluster, id, ref, STEPS, before.step);
      assert.ok(cluster.coordinator.output.some((l) => l.includes(`job ${id}: checkpoint of step ${newest.step} is unusable`)), 'the corrupt checkpoint was noticed');
      assert.equal(attemptsOf(cluster, id).find((a) => a.attempt >= 2)?.from, before.step, `resumed from step ${before.step}, the checkpoint before the corrupt one`);
    });
  });
});

/** A port nothing listens on right now (for an agent's --peer-port, which the proxy forwards to). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('a job on two agents with no spare, one reached by its peers through a proxy', () => {
  // agent-0 is started by the fixture; agent-1 advertises the proxy, which forwards to its real peer port.
  const fx = clusterFixture('faults-link', [10, 18], { agents: 1, logLevel: 'info' });
  let proxy: TcpProxy | undefined;
  before(async () => {
    const peerPort = await freePort();
    proxy = await TcpProxy.listen({ targetPort: peerPort });
    fx.cluster.startAgent('agent-1', ['--peer-port', String(peerPort), '--peer-advertise', `ws://127.0.0.1:${proxy.port}`]);
    await fx.cluster.waitForNodes(2, 60_000);
  });
  after(() => proxy?.close());

  test('an agent started with --peer-advertise is dialed at that address', async () => {
    const b = (await nodes(fx.cluster)).find((n) => n.name === 'agent-1')!;
    assert.equal(b.peerAddress, `ws://127.0.0.1:${proxy!.port}`);
  });

  test('a job whose peer link is partitioned notices, is re-queued, and after the network heals recovers the same loss curve', async (t: TestContext) => {
    const { cluster } = fx;
    const ref = await reference(cluster, { data: 2 });
    const id = (await cluster.api<JobRecord>('POST', '/api/jobs', spec('partition', { data: 2 }))).id;
    try {
      await withEvidence(cluster, () => id, async () => {
        await midRun(cluster, id, STEPS);
        const checkpointed = await lastCheckpoint(cluster, id);
        const cutAt = Date.now();
        proxy!.setMode('blackhole'); // agent-0's link to agent-1 goes silent; both keep their coordinator connection
        // untilJob fails at once if the job fails: a cut link must cost an attempt, not the job.
        const noticed = await untilJob(cluster, id, (v) => v.job.attempt >= 2 || v.job.state === 'queued', 60_000);
        const detectMs = Date.now() - cutAt;
        t.diagnostic(`partition noticed after ${detectMs} ms (${noticed.job.state}: ${noticed.job.stateReason}); ${proxy!.droppedBytes} bytes dropped`);
        proxy!.setMode('pass');
        const connected = (await nodes(cluster)).filter((n) => n.status === 'alive' && n.connected).length;
        assert.equal(connected, 2, 'both agents stayed connected to the coordinator');

        await assertRecovered(cluster, id, ref, STEPS, checkpointed);
      });
    } finally {
      proxy!.setMode('pass');
    }
  });

  test('an elastic job that loses an agent with no spare shrinks to one replica, then grows back when a new agent joins', async (t: TestContext) => {
    const { cluster } = fx;
    const parallel = { data: 2, minData: 1 };
    const ref = await reference(cluster, parallel, ELASTIC_STEPS);
    const id = (await cluster.api<JobRecord>('POST', '/api/jobs', spec('elastic', parallel, ELASTIC_STEPS))).id;
    await withEvidence(cluster, () => id, async () => {
      await midRun(cluster, id, ELASTIC_STEPS, 35);
      const { placement } = await live(cluster, id);
      assert.equal(placement.length, 2);
      const victim = placement.find((c) => c.nodeName === 'agent-0') ?? placement[0]!;
      const checkpointed = await lastCheckpoint(cluster, id);
      await kill(procOf(cluster, victim.nodeName));

      // Shrink: the next attempt runs on the one agent left rather than waiting for a second.
      const shrunk = await untilJob(cluster, id, () => attemptsOf(cluster, id).some((a) => a.attempt >= 2), 30_000)
        .catch(async (err: Error) => assert.fail(`no attempt started on the agent left: ${err.message}; state: ${(await cluster.api<JobView>('GET', `/api/jobs/${id}`)).job.stateReason}`));
      const shrink = attemptsOf(cluster, id).find((a) => a.attempt >= 2)!;
      assert.equal(shrink.layout, '1×1×1', 'one replica on the agent left');
      assert.ok(shrink.from !== null && shrink.from >= checkpointed, `the shrunk attempt resumed from step ${shrink.from}`);
      t.diagnostic(`shrunk to 1×1×1 at attempt ${shrink.attempt}, resuming from step ${shrink.from} (job at step ${shrunk.job.step})`);

      // Grow: a new agent joins; at its next checkpoint the job goes back to two replicas.
      const joinedAt = Date.now();
      cluster.startAgent(`agent-${cluster.agents.length}`);
      await cluster.waitForNodes(2, 60_000);
      // The coordinator's log line of the next attempt (GET /live shows an attempt while it is still launching).
      const deadline = Date.now() + 60_000;
      let grow: AttemptLine | undefined;
      while (!(grow = attemptsOf(cluster, id).find((a) => a.attempt > shrink.attempt))) {
        const l = await live(cluster, id);
        if (l.state === 'succeeded' || l.state === 'failed' || Date.now() > deadline) assert.fail(`the job did not grow back to 2 replicas (${l.state} at step ${l.step}, layout ${JSON.stringify(l.layout)}, attempt ${l.attempt})`);
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(grow.layout, '2×1×1', 'two replicas again');
      assert.ok(grow.from !== null && grow.from > shrink.from! && grow.from % EVERY === 0, `grew at a checkpoint boundary (step ${grow.from})`);
      assert.equal((await live(cluster, id)).layout?.data, 2, 'GET /live shows two replicas');
      t.diagnostic(`grew back to 2×1×1 at attempt ${grow.attempt}, resuming from step ${grow.from}, ${Date.now() - joinedAt} ms after the new agent was started`);

      const done = await assertRecovered(cluster, id, ref, ELASTIC_STEPS, checkpointed);
      const refLoss = new Map(trainLosses(ref));
      const worst = Math.max(...trainLosses(done).map(([step, loss]) => Math.abs(loss - refLoss.get(step)!) / Math.abs(refLoss.get(step)!)));
      t.diagnostic(`largest relative loss difference from the uninterrupted run: ${worst.toExponential(2)}`);
    });
  });
});
