/**
 * scripts/gpu-check.sh, as a person runs it: on a machine without a usable GPU it lists what it found and says why
 * it cannot train there (exit 1); with --software it runs the WebGPU path on Mesa's llvmpipe and measures a matmul.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

const run = (...args: string[]) => {
  const r = spawnSync('sh', ['scripts/gpu-check.sh', ...args], { encoding: 'utf8', timeout: 120_000 });
  const lines = r.stdout.trim().split('\n');
  return { status: r.status, out: r.stdout + r.stderr, result: JSON.parse(lines.at(-1)!) as { ok: boolean; reason?: string; adapter?: { software: boolean }; peak_gflops?: number; gpt2_small_step?: { ratio?: number; refused?: string } } };
};

test('gpu-check reports the Vulkan loader and drivers, and its verdict matches its exit code', () => {
  const { status, out, result } = run();
  assert.match(out, /gpu-check: Vulkan loader: /);
  assert.match(out, /gpu-check: Vulkan drivers/);
  assert.equal(status, result.ok ? 0 : 1, out);
  if (!result.ok) assert.match(out, /gpu-check: no usable GPU through WebGPU: .+/);
  else {
    assert.ok(result.peak_gflops! > 0 && result.adapter!.software === false, out);
    assert.ok(result.gpt2_small_step!.ratio! > 0 || result.gpt2_small_step!.refused, out); // a GPU that cannot bind wte says why
  }
});

test('gpu-check --software measures a matmul on llvmpipe and says it is not a GPU', () => {
  const { status, out, result } = run('--software');
  assert.equal(status, 0, out);
  assert.equal(result.ok, true);
  assert.equal(result.adapter!.software, true);
  assert.ok(result.peak_gflops! > 0, out);
  assert.match(out, /SOFTWARE \(not a GPU\)/);
  // llvmpipe binds 128 MiB at most: GPT-2's 147 MiB wte does not fit, and the check says so instead of failing
  assert.match(out, /gpu-check: GPT-2-small training step: not run: .*147 MiB tensor, over .*binding limit of 128 MiB/);
});
