/**
 * node scripts/run-tests.mjs integration/webgpu-agents
 *
 * Real agent processes computing on WebGPU (Dawn on Mesa's llvmpipe: `--backend webgpu-software`, which every
 * machine with npm run setup's Mesa packages has, CI included) train what wasm agents train: a data-parallel job
 * and a two-stage pipeline job give the wasm agents' losses within 1e-3 relative, and a job over one WebGPU and one
 * wasm agent trains too. The coordinator shows each agent's adapter (API and `coordinator nodes`).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, spawnProc, type LocalCluster, type Proc } from '../../scripts/local-cluster.ts';
import type { CapabilitiesInfo } from '../../protocol/control.ts';
import { assertSameCurve, runToEnd, writeCorpus, type JobView } from '../support/jobs.ts';

const COORDINATOR = new URL('../../bin/coordinator.js', import.meta.url).pathname;
const MODEL = { vocabSize: 300, nCtx: 32, nLayer: 2, nHead: 2, nEmbd: 32 };
const STEPS = 6;
const TOL = 1e-3;

type NodeView = { id: string; name: string; status: string; connected: boolean; capabilities: CapabilitiesInfo };

describe('agents computing on WebGPU (llvmpipe)', () => {
  let cluster: LocalCluster;
  let dir: string;
  let corpus: string;
  const gpuAgents: Proc[] = [];
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'webgpu-agents-'));
    corpus = writeCorpus(dir, 20, 28);
    cluster = await startCluster({ agents: 0 });
    for (const name of ['gpu-0', 'gpu-1']) gpuAgents.push(cluster.startAgent(name, ['--backend', 'webgpu-software']));
    await cluster.waitForNodes(2, 120_000);
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const spec = (name: string, parallel: object) => ({
    name,
    model: MODEL,
    data: { corpus, heldOutFraction: 0.2 },
    training: { steps: STEPS, batchSize: 4, microBatches: 2, seqLen: 32, lr: 3e-3, warmupSteps: 2, evalEvery: 3, evalBatches: 1, checkpointEvery: 3 },
    parallel,
  });
  const alive = async () => (await cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes')).nodes.filter((n) => n.status === 'alive' && n.connected);
  async function stopAgent(p: Proc): Promise<void> {
    p.child.kill('SIGTERM');
    assert.equal(await p.exited, 0, `the agent left cleanly (Dawn's device released):\n${p.output.slice(-5).join('\n')}`);
  }
  async function untilAlive(n: number): Promise<void> {
    const deadline = Date.now() + 60_000;
    while ((await alive()).length !== n) {
      if (Date.now() > deadline) throw new Error(`expected ${n} live agents, have ${(await alive()).map((a) => a.name).join(', ')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  const onGpu = new Map<string, JobView>();
  test('WebGPU agents report their adapter, and the coordinator shows it', async () => {
    const nodes = await alive();
    assert.equal(nodes.length, 2);
    for (const n of nodes) {
      assert.equal(n.capabilities.backend, 'webgpu');
      const gpu = n.capabilities.gpu!;
      assert.ok(gpu, `${n.name} reports a GPU`);
      assert.equal(gpu.dawnBackend, 'opengl');
      assert.equal(gpu.software, true);
      assert.ok(gpu.maxStorageBufferBindingSize >= 2 ** 27 && gpu.maxBufferSize >= gpu.maxStorageBufferBindingSize, JSON.stringify(gpu));
      assert.ok(n.capabilities.matmulGflops > 0);
    }
    const cli = spawnProc([COORDINATOR, 'nodes', '--url', cluster.url, '--token', cluster.token], { stderr: 'capture' });
    assert.equal(await cli.exited, 0, cli.output.join('\n'));
    assert.match(cli.output.join('\n'), /webgpu on .*\(opengl, software, binding limit \d+ MiB\)/);
  });

  test('a data-parallel job and a two-stage pipeline job train on WebGPU agents', async () => {
    for (const [name, parallel] of [['dp', { data: 2 }], ['pp', { data: 1, pipeline: 2 }]] as const) {
      const v = await runToEnd(cluster, spec(`gpu-${name}`, parallel), 300_000);
      assert.equal(v.job.state, 'succeeded');
      onGpu.set(name, v);
    }
  });

  test('wasm agents give the same losses (1e-3), and a job over a WebGPU and a wasm agent trains them too', async () => {
    const wasm = [cluster.startAgent('wasm-0'), cluster.startAgent('wasm-1')];
    await untilAlive(4);
    for (const p of gpuAgents) await stopAgent(p);
    await untilAlive(2);
    for (const [name, parallel] of [['dp', { data: 2 }], ['pp', { data: 1, pipeline: 2 }]] as const) {
      const v = await runToEnd(cluster, spec(`wasm-${name}`, parallel), 300_000);
      const gpu = onGpu.get(name);
      assert.ok(gpu, 'the WebGPU run of this job finished first');
      assertSameCurve(gpu, v, STEPS, TOL);
    }
    // one of each: the job's two replicas compute on different backends
    cluster.startAgent('gpu-2', ['--backend', 'webgpu-software']);
    await untilAlive(3);
    await stopAgent(wasm[1]!);
    await untilAlive(2);
    const mixed = await runToEnd(cluster, spec('mixed-dp', { data: 2 }), 300_000);
    assertSameCurve(mixed, onGpu.get('dp')!, STEPS, TOL);
  });
});
