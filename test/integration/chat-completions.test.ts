/**
 * Chat completions end to end with the official `openai` client: a coordinator and an agent train an SFT version
 * (2-word reversal tasks, from scratch, a few hundred steps), the job's exact-match suite judges it on held-out
 * tasks no training example has, and a real `gateway serve --registry DIR` process serves it. Its answers through
 * `chat.completions.create` — greedy, whole and streamed — are the evaluation's own answers, token for token, and
 * the held-out prompts get the answers the evaluation expects; then n, seed, stop, logprobs and include_usage on
 * the same model.
 *
 * Run: npx tsx --test test/integration/chat-completions.test.ts
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import OpenAI from 'openai';
import type { ModelVersion } from '../../coordinator/registry/registry.ts';
import { exactMatch } from '../../model/eval-suites.ts';
import { GPT } from '../../model/gpt.ts';
import { importHf } from '../../model/hf-format.ts';
import { spawnProc, startCluster, waitForLine, type LocalCluster, type Proc } from '../../scripts/local-cluster.ts';
import { runToEnd } from '../support/jobs.ts';
import { reversalRecords, reversalTasks, writeJsonl, type ReversalExample } from '../support/synthetic-tasks.ts';

const GATEWAY = new URL('../../bin/gateway.js', import.meta.url).pathname;
const KEY = 'sk-chat-integration';
const MAX_NEW_TOKENS = 8;

describe('chat completions of an SFT version trained in the test, through the openai client', () => {
  let dir: string;
  let cluster: LocalCluster;
  let gateway: Proc | undefined;
  let client: OpenAI;
  let heldOut: ReversalExample[];
  let version: ModelVersion;
  let trainedInMs = 0;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'chat-e2e-'));
    // All 256 ordered pairs of distinct-or-not task words, shuffled: 8 held out for the evaluation and for us.
    const tasks = reversalTasks(256, 7, 2);
    heldOut = tasks.slice(0, 8);
    writeJsonl(join(dir, 'sft.jsonl'), reversalRecords(tasks.slice(8)));
    writeJsonl(join(dir, 'held-out.jsonl'), reversalRecords(heldOut));
    const started = Date.now();
    cluster = await startCluster({ agents: 1, agentArgs: ['--backend', 'wasm'] });
    const run = await runToEnd(cluster, {
      name: 'chat', kind: 'sft', model: { vocabSize: 320, nCtx: 48, nLayer: 2, nHead: 4, nEmbd: 64 }, // prompts are ~27 tokens: room for 8 more
      data: { corpus: join(dir, 'sft.jsonl'), heldOutFraction: 0.05 },
      training: { steps: 300, batchSize: 16, seqLen: 32, lr: 3e-3, evalBatches: 1 }, parallel: { data: 1 },
      eval: { tasks: join(dir, 'held-out.jsonl'), maxNewTokens: MAX_NEW_TOKENS, maxExamples: heldOut.length },
    }, 300_000);
    assert.equal(run.job.state, 'succeeded', run.job.stateReason);
    trainedInMs = Date.now() - started;
    version = await cluster.api<ModelVersion>('GET', '/api/models/chat/versions/1');
    gateway = spawnProc([GATEWAY, 'serve', '--registry', join(cluster.dataDir, 'registry'), '--api-key', KEY, '--port', '0', '--host', '127.0.0.1'], { stderr: 'capture', env: { LOG_LEVEL: 'warn' } });
    const port = Number((await waitForLine(gateway, /gateway listening on http:\/\/127\.0\.0\.1:(\d+)/, 60_000))[1]);
    client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: KEY, maxRetries: 0 });
  });
  after(async () => {
    gateway?.child.kill('SIGTERM');
    await gateway?.exited;
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const ask = (prompt: string, extra: Partial<OpenAI.ChatCompletionCreateParamsNonStreaming> = {}) =>
    client.chat.completions.create({ model: 'chat', messages: [{ role: 'user', content: prompt }], temperature: 0, max_tokens: MAX_NEW_TOKENS, ...extra });

  test("greedy answers to the held-out prompts are the SFT evaluation's, and answer them as it expects", async (t) => {
    // The evaluation's own code on the registered weights: what it answered for each held-out task.
    await tf.setBackend('wasm');
    const files = Object.fromEntries(await Promise.all(['config.json', 'model.safetensors', 'tokenizer.json'].map(async (f) => {
      const res = await cluster.fetch(`${cluster.url}/api/models/chat/versions/1/files/${f}`, { headers: { authorization: `Bearer ${cluster.token}` } });
      return [f, new Uint8Array(await res.arrayBuffer())] as const;
    })));
    const loaded = importHf(files);
    const model = new GPT(loaded.config, { flat: loaded.params });
    const records = heldOut.map((t) => ({ kind: 'chat' as const, prompt: [{ role: 'user' as const, content: t.prompt }], response: t.answer }));
    const evaluation = await exactMatch(model, loaded.tokenizer, records, { maxNewTokens: MAX_NEW_TOKENS, maxExamples: records.length, samples: records.length });
    model.dispose();
    assert.equal(evaluation.exactMatch, version.lineage.metrics?.exactMatch, 'the same score the job recorded');

    let right = 0;
    for (const [i, task] of heldOut.entries()) {
      const c = await ask(task.prompt);
      const answer = c.choices[0]!.message.content!;
      assert.equal(answer.trim(), evaluation.samples[i]!.got, `${task.prompt}: the gateway answers as the evaluation did`);
      if (answer.trim() === task.answer) {
        right++;
        assert.equal(c.choices[0]!.finish_reason, 'stop', 'the model ended its turn with <|endoftext|>');
      }
    }
    assert.equal(right / heldOut.length, evaluation.exactMatch);
    t.diagnostic(`cluster start and SFT job: ${(trainedInMs / 1000).toFixed(1)} s`);
    t.diagnostic(`held-out exact match ${evaluation.exactMatch}: ${evaluation.samples.map((x) => `${x.prompt} → ${x.got}`).join('; ')}`);
    assert.ok(evaluation.exactMatch >= 0.75, `the SFT version learned the task: exact match ${evaluation.exactMatch} on held-out prompts`);
    const first = heldOut.find((t, i) => evaluation.samples[i]!.got === t.answer)!;
    const c = await ask(first.prompt);
    assert.equal(c.choices[0]!.message.content, first.answer, `"${first.prompt}" → "${first.answer}", a word pair no training example has`);
    assert.equal(c.object, 'chat.completion');
    assert.equal(c.choices[0]!.message.role, 'assistant');
    assert.equal(c.usage!.total_tokens, c.usage!.prompt_tokens + c.usage!.completion_tokens);
  });

  test('a streamed answer adds up to the whole one, role first and finish_reason last, with the usage when asked', async () => {
    const prompt = heldOut[0]!.prompt;
    const whole = await ask(prompt);
    const stream = await client.chat.completions.create({ model: 'chat', messages: [{ role: 'user', content: prompt }], temperature: 0, max_tokens: MAX_NEW_TOKENS, stream: true, stream_options: { include_usage: true } });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    assert.equal(chunks[0]!.choices[0]!.delta.role, 'assistant');
    assert.equal(chunks.map((c) => c.choices[0]?.delta.content ?? '').join(''), whole.choices[0]!.message.content);
    assert.equal(chunks.at(-2)!.choices[0]!.finish_reason, whole.choices[0]!.finish_reason);
    assert.deepEqual(chunks.at(-1)!.choices, []);
    assert.deepEqual(chunks.at(-1)!.usage, whole.usage);
  });

  test('n choices sampled with a seed come back the same for the same seed; stop cuts; logprobs name the reply tokens', async () => {
    const prompt = heldOut[1]!.prompt;
    const sampled = { temperature: 1.5, n: 4, seed: 42 };
    const [a, b] = [await ask(prompt, sampled), await ask(prompt, sampled)];
    assert.equal(a.choices.length, 4);
    assert.deepEqual(a.choices.map((c) => c.message.content), b.choices.map((c) => c.message.content));
    assert.ok(a.usage!.completion_tokens >= 4);

    const greedy = (await ask(prompt)).choices[0]!.message.content!;
    const [firstWord] = greedy.split(' ');
    const cut = await ask(prompt, { stop: [' '] });
    assert.equal(cut.choices[0]!.message.content, firstWord);
    assert.equal(cut.choices[0]!.finish_reason, 'stop');

    const lp = await ask(prompt, { logprobs: true, top_logprobs: 3 });
    const content = lp.choices[0]!.logprobs!.content!;
    assert.equal(content.map((t) => t.token).join(''), greedy);
    for (const t of content) {
      assert.equal(t.top_logprobs.length, 3);
      assert.equal(t.top_logprobs[0]!.token, t.token, 'greedy picks the most likely token');
      assert.equal(t.top_logprobs[0]!.logprob, t.logprob);
      assert.deepEqual(t.bytes, [...Buffer.from(t.token)]);
    }
  });
});
