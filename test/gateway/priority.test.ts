/**
 * Foreground before background on the real GPT backend: a shadow's forward passes wait while any client request
 * waits or runs on a backend sharing the gate, background output is unchanged by the waiting, and a step's
 * background prompt tokens are bounded (a client arriving meanwhile waits one short step).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { GPT } from '../../model/gpt.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { GptBackend } from '../../gateway/gpt-backend.ts';
import { PriorityGate } from '../../gateway/priority-gate.ts';
import { BatchScheduler, batchSettings } from '../../gateway/batch-scheduler.ts';
import { PagedGptEngine } from '../../gateway/paged-gpt.ts';
import type { GenerateRequest } from '../../gateway/inference-backend.ts';
import { generateRequest } from './support.ts';

await tf.setBackend('cpu');
const tokenizer = await trainBpe([loadDemoCorpus().documents[5]!], { vocabSize: 300 });
const config = { vocabSize: 304, nCtx: 64, nLayer: 2, nHead: 2, nEmbd: 16 };

/** A backend on the gate whose decode forwards are logged as `name`. */
function backend(t: TestContext, name: string, gate: PriorityGate, log: string[], seed = 11): GptBackend {
  const b = new GptBackend(new GPT(config, { seed }), tokenizer, { id: name, createdS: 0, ownedBy: 'test' });
  b.configureBatching({ gate, maxWaitMs: 0, onBatch: () => log.push(name) });
  t.after(() => b.close());
  return b;
}

const request = (prompt: string, over: Partial<GenerateRequest> = {}) => generateRequest(tokenizer.encode(prompt), { maxTokens: 16, ...over });

test('a background request on another backend runs no forward pass while a client request runs', async (t) => {
  const gate = new PriorityGate();
  const log: string[] = [];
  const primary = backend(t, 'primary', gate, log);
  const shadow = backend(t, 'shadow', gate, log, 12);
  const alone = await new GptBackend(new GPT(config, { seed: 12 }), tokenizer, { id: 'ref', createdS: 0, ownedBy: 'test' }).generate(request('We the people'));
  log.length = 0;
  const bg = shadow.generate(request('We the people'), { priority: 'background' });
  await new Promise((r) => setImmediate(r)); // the shadow starts first: its first forward is under way
  const started = performance.now();
  const fg = primary.generate(request('The state of the Union'));
  const fgResult = await fg;
  const fgMs = performance.now() - started;
  const bgResult = await bg;
  const firstPrimary = log.indexOf('primary');
  const lastPrimary = log.lastIndexOf('primary');
  const shadowDuring = log.slice(firstPrimary, lastPrimary).filter((n) => n === 'shadow').length;
  assert.equal(shadowDuring, 0, `no shadow forward between the client's first and last: ${log.join(' ')}`);
  assert.ok(log.slice(0, firstPrimary).filter((n) => n === 'shadow').length <= 1, `at most the one shadow forward under way when the client came: ${log.join(' ')}`);
  assert.equal(fgResult.choices[0]!.sampledTokens, 16);
  assert.deepEqual(bgResult.choices, alone.choices, 'parking does not change what the shadow generates');
  assert.ok(bgResult.serviceMs! < fgMs + 1000, 'service time is reported');
});

test('on one backend, foreground sequences are admitted before background ones that arrived earlier', async (t) => {
  const gate = new PriorityGate();
  const b = backend(t, 'both', gate, []);
  b.configureBatching({ maxBatchSize: 1 }); // one row: admission order is completion order
  const run = async (startBackgroundFirst: boolean) => {
    const order: string[] = [];
    const bgs = [0, 1].map((i) => b.generate(request('We the people', { seed: i, maxTokens: 4 }), { priority: 'background' }).then(() => order.push(`bg${i}`)));
    if (startBackgroundFirst) await new Promise((r) => setImmediate(r)); // bg0 takes the row
    const fgs = [0, 1].map((i) => b.generate(request('The Union', { seed: i, maxTokens: 4 })).then(() => order.push(`fg${i}`)));
    await Promise.all([...bgs, ...fgs]);
    return order;
  };
  assert.deepEqual(await run(false), ['fg0', 'fg1', 'bg0', 'bg1'], 'submitted together: the clients first');
  assert.deepEqual(await run(true), ['bg0', 'fg0', 'fg1', 'bg1'], 'bg0 already running finishes; then the clients, then the rest of the background');
});

test('the gate wakes parked background work when the last foreground holder leaves', async () => {
  const gate = new PriorityGate(0);
  const a = {};
  const b = {};
  gate.enter(a);
  gate.enter(b);
  let woke = false;
  const idle = gate.idle().then(() => (woke = true));
  gate.leave(a);
  await new Promise((r) => setImmediate(r));
  assert.equal(woke, false, 'b still holds it');
  gate.leave(b);
  await idle;
  assert.equal(woke, true);
  assert.equal(gate.busy, false);
  await gate.idle(); // resolves at once when idle
});

test('background resumes only after the gate has been free for its grace period, and a holder returning within it defers that', async () => {
  const gate = new PriorityGate(40);
  const a = {};
  gate.enter(a);
  let wokeAt = -1;
  const idle = gate.idle().then(() => (wokeAt = performance.now()));
  gate.leave(a);
  const left = performance.now();
  assert.equal(gate.busy, true, 'still busy within the grace period');
  await new Promise((r) => setTimeout(r, 20));
  gate.enter(a); // the next client request arrives in the gap
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(wokeAt, -1, 'not woken while held again');
  gate.leave(a);
  const leftAgain = performance.now();
  await idle;
  assert.ok(wokeAt - leftAgain >= 39, `woken ${wokeAt - leftAgain} ms after the last leave (grace 40)`);
  assert.ok(wokeAt - left >= 99);
  assert.equal(gate.busy, false);
  assert.throws(() => new PriorityGate(-1), /graceMs must be a finite number ≥ 0/);
});

test('shadows run at most 32 prompt tokens a step all together, a client prompt all at once, and each gets what it gets alone', async () => {
  const model = new GPT(config, { seed: 11 });
  const engine = new PagedGptEngine(model);
  const chunkTokens: number[] = [];
  const step = engine.step.bind(engine);
  engine.step = (tokens, chunks) => {
    chunkTokens.push(chunks.reduce((n, c) => n + c.ids.length, 0));
    return step(tokens, chunks);
  };
  const text = { vocabSize: tokenizer.vocabSize, endOfText: tokenizer.endOfText, tokenBytes: (id: number) => tokenizer.tokenBytes(id), tokenString: (id: number) => tokenizer.decode([id]) };
  const scheduler = new BatchScheduler(engine, text, batchSettings({ maxWaitMs: 0 }));
  try {
    const ids = tokenizer.encode(loadDemoCorpus().documents[5]!).slice(0, 45);
    const requests = [0, 1, 2].map((i) => generateRequest(ids.slice(i), { maxTokens: 4, seed: i, temperature: 1 }));
    const shadows = await Promise.all(requests.map((r) => scheduler.submit(r, { priority: 'background' })));
    const shadowSteps = [...chunkTokens];
    assert.ok(shadowSteps.every((n) => n <= 32), `background prompt tokens per step: ${shadowSteps.join(' ')}`);
    assert.equal(shadowSteps.reduce((a, n) => a + n, 0), 45 + 44 + 43, 'every prompt token ran once');
    chunkTokens.length = 0;
    await scheduler.submit(requests[0]!);
    assert.equal(chunkTokens[0], 45, `a client's prompt is not capped: ${chunkTokens.join(' ')}`);
    const reference = new GptBackend(new GPT(config, { seed: 11 }), tokenizer, { id: 'ref', createdS: 0, ownedBy: 'test' });
    try {
      for (const [i, r] of requests.entries()) assert.deepEqual(shadows[i]!.choices, (await reference.generate(r)).choices, `request ${i}`);
    } finally {
      await reference.close();
    }
  } finally {
    await scheduler.close();
    engine.dispose();
    model.dispose();
  }
});
