/**
 * The WebGPU backend (model/compute/webgpu.ts: Dawn + @tensorflow/tfjs-backend-webgpu) against the cpu
 * backend, on Mesa's llvmpipe through Dawn's OpenGL ES backend (`webgpu-software`), so every machine checks the GPU
 * path: npm run setup installs the Mesa packages. A whole GPT training step's loss and gradients (batched and
 * transposed matmuls, softmax, LayerNorm, GELU, embeddings, cross-entropy) must agree with the cpu backend in
 * float32. Tensors are read with data(): tfjs' WebGPU backend cannot dataSync() in Node (it needs OffscreenCanvas),
 * so everything that computes on it reads asynchronously (model/tensor-values.ts). The trainer on it is tested in
 * test/node-agent/trainer-webgpu.test.ts, agents and the gateway in test/integration/webgpu-agents.test.ts.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { loadBackend, type LoadedBackend } from '../../model/compute/backend.ts';
import { vulkanLoader } from '../../model/compute/webgpu.ts';
import { copyOf } from '../../model/tensor-values.ts';
import { GPT } from '../../model/gpt.ts';
import { gptConfig } from '../../model/params.ts';

let gpu: LoadedBackend;
before(async () => {
  gpu = await loadBackend('webgpu-software'); // fails (it does not skip) where the Mesa packages are missing
});
after(() => gpu?.release());

const config = gptConfig({ vocabSize: 97, nCtx: 16, nLayer: 2, nHead: 2, nEmbd: 16 });
const B = 2, T = 8;
const ids = Int32Array.from({ length: B * T }, (_, i) => (i * 31 + 5) % 97);
const targets = Int32Array.from({ length: B * T }, (_, i) => (i * 13 + 2) % 97);

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0, scale = 1e-12;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]!));
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst / scale;
}

test('the backend is WebGPU on a software adapter, and says so', () => {
  assert.equal(gpu.name, 'webgpu');
  assert.equal(tf.getBackend(), 'webgpu');
  assert.equal(gpu.gpu?.software, true);
  assert.equal(gpu.gpu?.dawnBackend, 'opengl');
  assert.ok(gpu.gpu!.maxStorageBufferBindingSize >= 1 << 27, JSON.stringify(gpu.gpu));
});

test('a GPT training step\'s loss and gradients on WebGPU equal the cpu backend\'s (float32)', async () => {
  const step = async (backend: string) => {
    tf.setBackend(backend);
    const gpt = new GPT(config, { seed: 11 });
    try {
      const { loss, grads } = gpt.lossAndGrads(tf.tensor2d(ids, [B, T], 'int32'), tf.tensor2d(targets, [B, T], 'int32'));
      const flat = new Float32Array(gpt.layout.totalSize);
      for (const s of gpt.layout.specs) flat.set((await grads.get(s.name)!.data()) as Float32Array, s.offset);
      const value = (await loss.data())[0]!;
      for (const g of grads.values()) g.dispose();
      loss.dispose();
      return { loss: value, grads: flat };
    } finally {
      gpt.dispose();
      tf.setBackend('webgpu');
    }
  };
  const cpu = await step('cpu'), web = await step('webgpu');
  assert.ok(Math.abs(web.loss - cpu.loss) <= 1e-5 * cpu.loss, `loss ${web.loss} vs ${cpu.loss}`);
  assert.ok(maxRel(web.grads, cpu.grads) <= 1e-4, `gradients differ by ${maxRel(web.grads, cpu.grads)} of their largest`);
  assert.ok(cpu.grads.some((g) => g !== 0));
});

test('batched and transposed products and a softmax gradient on WebGPU equal the cpu backend\'s', async () => {
  const make = () => ({ a: tf.randomNormal([3, 17, 33], 0, 1, 'float32', 5), b: tf.randomNormal([3, 29, 33], 0, 1, 'float32', 6) });
  const run = async (backend: string) => {
    tf.setBackend(backend);
    try {
      const { a, b } = make();
      const y = tf.matMul(a, b, false, true); // [3, 17, 29]
      const g = tf.grad((x: tf.Tensor) => tf.softmax(x).mul(tf.range(0, 29).reshape([1, 1, 29])).sum())(y);
      const out = { y: (await y.data()) as Float32Array, g: (await g.data()) as Float32Array };
      tf.dispose([a, b, y, g]);
      return out;
    } finally {
      tf.setBackend('webgpu');
    }
  };
  const cpu = await run('cpu'), web = await run('webgpu');
  assert.ok(maxRel(web.y, cpu.y) <= 1e-5, `products differ by ${maxRel(web.y, cpu.y)}`);
  assert.ok(maxRel(web.g, cpu.g) <= 1e-4, `softmax gradients differ by ${maxRel(web.g, cpu.g)}`);
});

test('asking for a GPU gets a hardware adapter, or fails saying why there is none', async () => {
  const got = await loadBackend('webgpu').then((b) => (b.release(), b.gpu!), (err: Error) => err);
  tf.setBackend('webgpu');
  if (got instanceof Error) assert.match(got.message, /--backend webgpu: (Dawn found no \w+ adapter|the only adapter is a software one)/);
  else assert.equal(got.software, false, JSON.stringify(got));
});

test('auto takes WebGPU only on a hardware adapter, and says why it passed over it', async () => {
  // Run in a child: auto must not replace this file's WebGPU backend.
  const { execFileSync } = await import('node:child_process');
  const script = "import { loadBackend } from './model/compute/backend.ts'; const b = await loadBackend('auto'); console.log(JSON.stringify({ name: b.name, passedOver: b.passedOver, software: b.gpu?.software })); b.release(); process.exit(0);";
  const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: new URL('../..', import.meta.url).pathname, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const got = JSON.parse(out.trim().split('\n').at(-1)!) as { name: string; passedOver: string[]; software?: boolean };
  if (vulkanLoader() === null) {
    assert.notEqual(got.name, 'webgpu');
    assert.match(got.passedOver[0] ?? '', /^webgpu: no Vulkan loader \(libvulkan\.so\.1\)/);
  } else if (got.name === 'webgpu') {
    assert.equal(got.software, false, 'auto never settles for a software adapter');
  } else {
    assert.match(got.passedOver[0] ?? '', /^webgpu: /, 'the reason WebGPU was not taken comes first');
  }
});

test('a kernel the device refuses (a tensor over the binding limit) is an error at the next read, not garbage', async () => {
  const n = gpu.gpu!.maxStorageBufferBindingSize / 4 + 1024; // just over what one kernel may bind
  const big = tf.zeros([n]);
  const y = big.add(1);
  try {
    await assert.rejects(copyOf(y), /WebGPU on .* refused a kernel, so its output is garbage: /);
  } finally {
    tf.dispose([big, y]);
  }
  // the device goes on: the next kernel within the limit computes
  const ok = tf.tidy(() => tf.ones([4]).mul(3));
  assert.deepEqual([...(await copyOf(ok))], [3, 3, 3, 3]);
  ok.dispose();
});
