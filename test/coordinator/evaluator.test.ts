import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { runInWorker, suiteInput } from '../../coordinator/jobs/evaluator.ts';
import { renderPrompt } from '../../model/chat-template.ts';
import { greedy } from '../../model/eval-suites.ts';
import { GPT } from '../../model/gpt.ts';
import { exportHf } from '../../model/hf-format.ts';
import { Tokenizer } from '../../model/tokenizer.ts';
import { validateJobSpec, type ResolvedJobSpec } from '../../protocol/job-spec.ts';

const CONFIG = { vocabSize: 512, nCtx: 64, nLayer: 1, nHead: 2, nEmbd: 32 };

describe('evaluator', () => {
  let dir: string, files: Record<string, Uint8Array>, answer: string, tokenizer: Tokenizer;
  before(async () => {
    await tf.setBackend('cpu');
    dir = mkdtempSync(join(tmpdir(), 'evaluator-'));
    tokenizer = Tokenizer.fromJSON(JSON.parse(readFileSync(new URL('../model/fixtures/tokenizer-512.json', import.meta.url), 'utf8')));
    const model = new GPT(CONFIG, { seed: 3 });
    files = { ...exportHf(model, tokenizer) };
    answer = tokenizer.decode(await greedy(model, renderPrompt([{ role: 'user', content: 'Say hi' }], tokenizer), tokenizer.endOfText!, 4));
    model.dispose();
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const sftSpec = (tasks: string): ResolvedJobSpec => {
    const res = validateJobSpec({
      name: 'x', kind: 'sft', init: { from: 'base@1' }, model: CONFIG, data: { corpus: join(dir, 'train.jsonl') },
      training: { steps: 1, batchSize: 1, seqLen: 32 }, eval: { tasks, maxNewTokens: 4 },
    });
    assert.ok(res.ok);
    return res.spec;
  };

  test('eval.tasks are read as chat records, and the suite runs in a worker thread', async () => {
    const tasks = join(dir, 'tasks.jsonl');
    writeFileSync(tasks, [{ prompt: 'Say hi', response: answer }, { prompt: 'Say hi', response: `${answer} and more` }].map((r) => JSON.stringify(r)).join('\n') + '\n\n');
    const input = await suiteInput({ spec: sftSpec(tasks), data: {}, model: files, artifacts: undefined as never, registry: undefined as never });
    assert.equal(input?.records?.length, 2);
    assert.equal(input?.maxNewTokens, 4);
    assert.equal(input?.maxExamples, 200, 'the default');
    const results = await runInWorker(input!);
    assert.deepEqual(results.values, { exactMatch: 0.5, examples: 2 });
    assert.equal(results.samples[0]!.got, answer.trim());
    // The same suite on WebGPU (llvmpipe: coordinator start --backend webgpu-software) gives the same answers.
    const onGpu = await runInWorker(input!, 'webgpu-software');
    assert.deepEqual(onGpu, results);
  });

  test('a task file with a bad line is refused, naming the line', async () => {
    const tasks = join(dir, 'bad.jsonl');
    writeFileSync(tasks, `${JSON.stringify({ prompt: 'a', response: 'b' })}\n${JSON.stringify({ prompt: 'a' })}\n`);
    await assert.rejects(suiteInput({ spec: sftSpec(tasks), data: {}, model: files, artifacts: undefined as never, registry: undefined as never }), /bad\.jsonl:2/);
  });

  test('a distillation on text scores held-out token windows cut from the shards, teacher from the registry', async () => {
    const res = validateJobSpec({
      name: 'd', kind: 'distill', distill: { teacher: 'teacher@1' }, model: CONFIG, data: { corpus: 'demo' },
      training: { steps: 1, batchSize: 1, seqLen: 8 }, eval: { maxExamples: 3 },
    });
    assert.ok(res.ok);
    const ids = Uint16Array.from({ length: 40 }, (_, i) => (i * 7) % 300);
    const blobs = new Map<string, Uint8Array>([
      ['d-index', Buffer.from(JSON.stringify({ dtype: 'uint16', splits: { train: { shards: [] }, heldOut: { shards: [{ file: 'heldout-0.bin', tokens: 40 }] } } }))],
      ['d-shard', new Uint8Array(ids.buffer)],
    ]);
    const artifacts = { get: async (d: string) => blobs.get(d)! } as never;
    // The teacher's files as the registry stores them: the worker reads them by path, the coordinator never does.
    const stored = join(dir, 'teacher-v1');
    mkdirSync(stored, { recursive: true });
    for (const [f, bytes] of Object.entries(files)) writeFileSync(join(stored, f), bytes);
    const registry = { get: () => ({ files: files }), fileOf: (_n: string, _v: number, f: string) => ({ path: join(stored, f) }) } as never;
    const input = await suiteInput({ spec: res.spec, data: { 'index.json': 'd-index', 'heldout-0.bin': 'd-shard' }, model: files, artifacts, registry });
    assert.deepEqual(input?.frozen, Object.fromEntries(Object.keys(files).map((f) => [f, join(stored, f)])), 'the teacher goes to the worker as paths');
    assert.deepEqual(input?.windows?.map((w) => [...w]), [0, 8, 16].map((at) => [...ids.subarray(at, at + 9)]), 'seqLen + 1 ids, stride seqLen, at most maxExamples');
    const results = await runInWorker(input!);
    assert.equal(results.values.scoreRatio, 1, 'a student identical to its teacher');
    assert.ok(results.values.studentScore! > 1 && results.values.examples === 3);
    const onGpu = await runInWorker(input!, 'webgpu-software');
    assert.ok(Math.abs(onGpu.values.studentScore! - results.values.studentScore!) <= 1e-4 * results.values.studentScore!, `perplexity on WebGPU ${onGpu.values.studentScore} vs cpu ${results.values.studentScore}`);
  });

  test('pre-training has no suite', async () => {
    const res = validateJobSpec({ name: 'p', model: CONFIG, data: { corpus: 'demo' }, training: { steps: 1, batchSize: 1, seqLen: 32 } });
    assert.ok(res.ok);
    assert.equal(await suiteInput({ spec: res.spec, data: {}, model: files, artifacts: undefined as never, registry: undefined as never }), null);
  });
});
