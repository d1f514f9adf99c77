/**
 * node scripts/run-tests.mjs integration/webgpu-agents
 *
 * Real agent processes computing on WebGPU (Dawn on Mesa's llvmpipe: `--backend webgpu-software`, which every
 * machine with npm run setup's Mesa packages has, CI included) train what wasm agents train: a data-parallel job
 * and a two-stage pipeline job give the wasm agents' losses within 1e-3 relative, and a job over one WebGPU and one
 * wasm agent trains too. The coordinator shows each agent's adapter (API and `coordinator nodes`). A gateway on
 * WebGPU serves the trained model with the greedy completions and top-5 log-probabilities of one on wasm.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, spawnProc, type LocalCluster, type Proc } from '../../scripts/local-cluster.ts';
import type { CapabilitiesInfo } from '../../protocol/control.ts';
import { assertSameCurve, runToEnd, writeCorpus, type JobView } from '../support/jobs.ts';

const COORDINATOR = new URL('../../bin/coordinator.js', import.meta.url).pathname;
const GATEWAY = new URL('../../bin/gateway.js', import.meta.url).pathname;
const MODEL = { vocabSize: 300, nCtx: 32, nLayer: 2, nHead: 2, nEmbd: 32 };
const STEPS = 4;
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
    training: { steps: STEPS, batchSize: 4, microBatches: 2, seqLen: 32, lr: 3e-3, warmupSteps: 2, evalEvery: 2, evalBatches: 1, checkpointEvery: 2 },
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

  /** A gateway process serving `model` on `backend`; its base URL and a way to stop it. */
  async function gateway(model: string, backend: string): Promise<{ url: string; stderr: string[]; stop(): void }> {
    const gw = spawn(process.execPath, [GATEWAY, 'serve', '--registry', join(cluster.dataDir, 'registry'), '--model', model, '--port', '0', '--host', '127.0.0.1', '--backend', backend], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, LOG_LEVEL: 'info' },
    });
    const stderr: string[] = [];
    createInterface({ input: gw.stderr }).on('line', (l) => stderr.push(l));
    const url = await new Promise<string>((resolve, reject) => {
      createInterface({ input: gw.stdout }).on('line', (l) => {
        const m = /gateway listening on (\S+)/.exec(l);
        if (m) resolve(m[1]!);
      });
      gw.on('exit', (code) => reject(new Error(`gateway exited ${code}:\n${stderr.join('\n')}`)));
    });
    return { url, stderr, stop: () => gw.kill('SIGKILL') };
  }

  test('a gateway on WebGPU gives the greedy completions and top-5 logprobs of a gateway on wasm', async () => {
    const model = 'gpu-dp';
    assert.ok(onGpu.has('dp'), 'the model was trained');
    type Completion = { choices: Array<{ text: string; logprobs: { tokens: string[]; token_logprobs: number[]; top_logprobs: Array<Record<string, number>> } }> };
    const ask = async (url: string, prompt: string): Promise<Completion> => {
      const res = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model, prompt, max_tokens: 12, temperature: 0, logprobs: 5 }),
      });
      assert.equal(res.status, 200, await res.clone().text());
      return (await res.json()) as Completion;
    };
    const [gpu, wasm] = [await gateway(model, 'webgpu-software'), await gateway(model, 'wasm')];
    try {
      assert.ok(gpu.stderr.some((l) => /compute backend: webgpu on .*opengl, software/.test(l)), gpu.stderr.join('\n'));
      assert.ok(wasm.stderr.some((l) => /compute backend: wasm/.test(l)), wasm.stderr.join('\n'));
      for (const prompt of ['The Congress', 'Section 2. The', 'shall be']) {
        const [a, b] = [(await ask(gpu.url, prompt)).choices[0]!, (await ask(wasm.url, prompt)).choices[0]!];
        assert.equal(a.text, b.text, `greedy completion of ${JSON.stringify(prompt)}`);
        assert.deepEqual(a.logprobs.tokens, b.logprobs.tokens);
        assert.ok(a.logprobs.tokens.length > 0, 'tokens were generated');
        a.logprobs.token_logprobs.forEach((lp, i) => assert.ok(Math.abs(lp - b.logprobs.token_logprobs[i]!) <= 1e-3, `token ${i}: ${lp} vs ${b.logprobs.token_logprobs[i]}`));
        a.logprobs.top_logprobs.forEach((top, i) => {
          const other = b.logprobs.top_logprobs[i]!;
          assert.deepEqual(Object.keys(top).sort(), Object.keys(other).sort(), `the same top 5 at token ${i}`);
          for (const [tok, lp] of Object.entries(top)) assert.ok(Math.abs(lp - other[tok]!) <= 1e-3, `top logprob of ${JSON.stringify(tok)} at token ${i}: ${lp} vs ${other[tok]}`);
        });
      }
    } finally {
      gpu.stop();
      wasm.stop();
    }
  });
});
