/**
 * The data step of a job: the tokenizer is trained on the training documents only, then the shards are written.
 * Run: node --import tsx --test test/model/prepare-data.test.ts
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { isHeldOut, readShardIndex } from '../../model/data.ts';
import { prepareTokenData, trainingDocuments } from '../../model/prepare-data.ts';
import { trainBpe } from '../../model/tokenizer.ts';

const root = mkdtempSync(join(tmpdir(), 'meshtrain-prepare-'));
after(() => rmSync(root, { recursive: true, force: true }));
const DOCS = loadDemoCorpus().documents.slice(0, 30).map((d) => d.slice(0, 3000));

test('trainingDocuments yields exactly the documents that the shards put in the train split', async () => {
  const got: string[] = [];
  for await (const d of trainingDocuments(DOCS, 5, 0.3)) got.push(d);
  assert.deepEqual(got, DOCS.filter((_, i) => !isHeldOut(5, i, 0.3)));
  assert.ok(got.length < DOCS.length);
});

test('prepareTokenData trains the tokenizer without the held-out documents and writes shards made with it', async () => {
  const corpus = join(root, 'corpus.jsonl');
  writeFileSync(corpus, DOCS.map((text) => JSON.stringify({ text })).join('\n'));
  const outDir = join(root, 'out');
  const { tokenizer, index } = await prepareTokenData({ corpus, outDir, vocabSize: 700, heldOutFraction: 0.3, seed: 5 });
  const expected = await trainBpe(DOCS.filter((_, i) => !isHeldOut(5, i, 0.3)), { vocabSize: 700 });
  assert.deepEqual(tokenizer.toJSON(), expected.toJSON());
  assert.deepEqual(readShardIndex(outDir), index);
  assert.equal(readFileSync(join(outDir, 'tokenizer.json'), 'utf8'), JSON.stringify(expected.toJSON()));
  assert.equal(index.splits.heldOut.documents, DOCS.filter((_, i) => isHeldOut(5, i, 0.3)).length);
});
