import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { renderPrompt } from '../../model/chat-template.ts';
import { ExampleReader, prepareExamples, readHeldOutRecords, tokenizerDigest } from '../../model/examples.ts';
import { trainBpe, type Tokenizer } from '../../model/tokenizer.ts';
import { preferenceRecords, reversalRecords, reversalTasks, writeJsonl } from '../support/synthetic-tasks.ts';

describe('instruction and preference examples', () => {
  let dir: string, tokenizer: Tokenizer, sha: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'examples-'));
    tokenizer = await trainBpe(Array.from({ length: 30 }, () => 'Reverse: red cat sky\nGreet: anna hello hi <|user|> <|assistant|>'), { vocabSize: 270 });
    sha = tokenizerDigest(JSON.stringify(tokenizer.toJSON()));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const prepare = async (name: string, lines: string[], format: 'chat' | 'preference', maxTokens = 200, heldOutFraction = 0) => {
    const corpus = join(dir, `${name}.jsonl`);
    writeFileSync(corpus, lines.join('\n') + '\n');
    const outDir = join(dir, name);
    return { outDir, index: await prepareExamples({ corpus, outDir, format, tokenizer, tokenizerSha256: sha, maxTokens, heldOutFraction, seed: 7 }) };
  };

  test('only the assistant reply and its end-of-text are learned; rows are padded with zero weight', async () => {
    const { outDir } = await prepare('chat', [
      JSON.stringify({ prompt: 'Reverse: red cat', response: 'cat red' }),
      JSON.stringify({ messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'Greet: anna' }, { role: 'assistant', content: 'hello anna' }] }),
    ], 'chat');
    const reader = new ExampleReader(outDir, { split: 'train', batchSize: 2, seqLen: 63 });
    const batch = reader.batchAt({ shard: 0, offset: 0 });
    const eot = tokenizer.endOfText!;
    for (let r = 0; r < 2; r++) {
      const row = batch.tokens.subarray(r * 64, (r + 1) * 64), w = batch.weights.subarray(r * 63, (r + 1) * 63);
      const learned = [...w.keys()].filter((t) => w[t] === 1).map((t) => row[t + 1]!);
      assert.equal(learned.at(-1), eot, 'the reply ends with end-of-text, which is learned');
      const reply = tokenizer.decode(learned.slice(0, -1));
      assert.ok(reply === 'cat red' || reply === 'hello anna', `learned ${JSON.stringify(reply)}`);
      const prompt = tokenizer.decode(row.subarray(0, [...w].indexOf(1) + 1));
      assert.ok(prompt.endsWith('<|assistant|>\n'), `the prompt is not learned: ${JSON.stringify(prompt)}`);
      const promptIds = renderPrompt(reply === 'cat red' ? [{ role: 'user', content: 'Reverse: red cat' }] : [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'Greet: anna' }], tokenizer);
      assert.deepEqual([...row.subarray(0, promptIds.length)], promptIds, 'a generation prompt is the exact prefix of its training row');
    }
  });

  test('data-parallel ranks together read exactly what one rank reads, and preference pairs stay together', async () => {
    const { outDir, index } = await prepare('pairs', preferenceRecords(2).map((r) => JSON.stringify(r)), 'preference');
    assert.equal(index.rowsPerExample, 2);
    const one = new ExampleReader(outDir, { batchSize: 4, seqLen: 40 }).batchAt({ shard: 0, offset: 4 });
    const parts = [0, 1].map((rank) => new ExampleReader(outDir, { batchSize: 2, seqLen: 40, rank, worldSize: 2 }).batchAt({ shard: 0, offset: 4 }));
    assert.deepEqual([...one.tokens], [...parts[0]!.tokens, ...parts[1]!.tokens]);
    assert.deepEqual([...one.weights], [...parts[0]!.weights, ...parts[1]!.weights]);
    for (let p = 0; p < 4; p++) {
      const text = (r: number) => tokenizer.decode(one.tokens.subarray(r * 41, (r + 1) * 41).filter((id) => id !== tokenizer.endOfText));
      const [chosen, rejected] = [text(2 * p), text(2 * p + 1)];
      assert.match(chosen, /hello (\w+)/);
      assert.equal(rejected, chosen.replace('hello', 'hi'), 'row 2i+1 is the rejected reply to row 2i\'s prompt');
    }
  });

  test('an epoch visits every example once, in an order that depends only on the seed and the epoch', async () => {
    const { outDir } = await prepare('epochs', reversalRecords(reversalTasks(12, 1)).map((r) => JSON.stringify(r)), 'chat');
    const read = () => {
      const reader = new ExampleReader(outDir, { batchSize: 4, seqLen: 63 });
      return Array.from({ length: 6 }, () => reader.next()).map((b) => tokenizer.decode(b.tokens));
    };
    const a = read(), b = read();
    assert.deepEqual(a, b);
    assert.notEqual(a.slice(0, 3).join(), a.slice(3).join(), 'the second epoch is shuffled differently');
    const reader = new ExampleReader(outDir, { batchSize: 4, seqLen: 63, cursor: { shard: 0, offset: 8 } });
    assert.deepEqual(reader.next().cursor, { shard: 0, offset: 8 });
    assert.deepEqual(reader.next().cursor, { shard: 1, offset: 0 }, 'the next epoch starts after the last whole batch');
  });

  test('too-long examples are dropped and counted, held-out ones kept for evaluation, bad lines named', async () => {
    const long = JSON.stringify({ prompt: 'Reverse: ' + 'red '.repeat(80), response: 'red' });
    const ok = reversalRecords(reversalTasks(40, 2)).map((r) => JSON.stringify(r));
    const { index, outDir } = await prepare('mixed', [...ok, long], 'chat', 60, 0.25);
    assert.equal(index.dropped.tooLong, 1);
    assert.equal(index.splits.train.examples + index.splits.heldOut.examples, 40);
    assert.ok(index.splits.heldOut.examples > 0);
    const held = readHeldOutRecords(outDir);
    assert.equal(held.length, index.splits.heldOut.examples);
    assert.ok(held.every((r) => r.kind === 'chat' && r.prompt[0]!.content.startsWith('Reverse:')));
    await assert.rejects(prepare('bad', [ok[0]!, '{"prompt": 1}'], 'chat'), /bad\.jsonl:2: a chat example needs string "prompt" and "response"/);
    await assert.rejects(prepare('bad2', ['not json'], 'chat'), /bad2\.jsonl:1: not JSON/);
    await assert.rejects(prepare('bad3', [JSON.stringify({ prompt: 'x', chosen: 'a' })], 'preference'), /"chosen" and "rejected"/);
    assert.throws(() => new ExampleReader(outDir, { batchSize: 64, seqLen: 59 }), /fewer than a global batch/);
  });
});
