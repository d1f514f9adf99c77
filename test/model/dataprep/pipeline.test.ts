import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prepareData } from '../../../model/dataprep/pipeline.ts';
import { readShardIndex } from '../../../model/shard-index.ts';
import { tagOf, writePlantedCorpus } from '../../support/planted-corpus.ts';

const readCleaned = (dir: string) =>
  readFileSync(join(dir, 'cleaned.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { text: string; source: string });

test('a planted corpus comes out with every duplicate, near-duplicate and piece of personal data counted and removed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dataprep-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const planted = writePlantedCorpus(join(dir, 'in'));
  const out = join(dir, 'out');
  const report = await prepareData({ sources: planted.sources, outDir: out, vocabSize: 320, keepCleaned: true, heldOutFraction: 0.1 });
  const docs = readCleaned(out);
  const step = (name: string) => report.steps.find((s) => s.step === name)!;

  // Every distinct document survives exactly once; every copy is gone.
  const perTag = new Map<string, number>();
  for (const d of docs) perTag.set(tagOf(d.text)!, (perTag.get(tagOf(d.text)!) ?? 0) + 1);
  assert.deepEqual(planted.tags.filter((tag) => !perTag.has(tag)), [], 'no distinct document is removed');
  const nearKept = docs.length - planted.tags.length; // copies still there (exact ones are all gone, checked below)
  assert.equal(step('exact_dedup').removed.exact_duplicate, planted.exactCopies);
  assert.ok(1 - nearKept / planted.nearCopies >= 0.95, `near-duplicate recall ${1 - nearKept / planted.nearCopies}`);
  assert.equal(step('near_dedup').removed.near_duplicate, planted.nearCopies - nearKept);
  assert.equal(step('extract').removed.malformed_jsonl, planted.malformedLines);
  assert.deepEqual(step('filter').removed, {}, 'no planted document fails a quality filter');

  // Personal data: every planted item masked and counted, no distractor touched.
  assert.deepEqual(report.pii, planted.pii);
  const all = docs.map((d) => d.text).join('\n');
  for (const v of planted.piiValues) assert.ok(!all.includes(v), `${v} is masked`);
  for (const v of planted.distractors) assert.ok(all.includes(v), `${v} is left alone`);

  // Markup and boilerplate are gone; the text inside stays.
  for (const m of planted.markupMarkers) assert.ok(!all.includes(m), `${m} is stripped`);
  assert.doesNotMatch(all, /<\/?[a-z][^>]*>|&raquo;|\]\(https|```|Field notes|shared code sample/);
  assert.ok(step('boilerplate').notes.repeated_lines! >= 285, 'the newsletter line of 95 pages, the heading and code line of 95 notes');

  // The folder is a shard set a job can train on, split as reported.
  const index = readShardIndex(out);
  assert.equal(index.vocabSize, 320);
  assert.equal(index.splits.train.documents + index.splits.heldOut.documents, docs.length);
  assert.deepEqual(report.split.heldOut.documents, index.splits.heldOut.documents);
  assert.ok(index.splits.heldOut.documents > 0);
  const onDisk = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8'));
  assert.equal(onDisk.steps.length, report.steps.length);
});

test('sources are mixed to their ratios of characters by down-sampling the over-represented one', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dataprep-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const planted = writePlantedCorpus(join(dir, 'in'), { distinct: 400, exactCopies: 0, nearCopies: 0, piiDocs: 0, distractorDocs: 0 });
  const books = planted.sources.find((s) => s.name === 'books')!;
  const forum = planted.sources.find((s) => s.name === 'forum')!;
  const out = join(dir, 'out');
  const tokenizer = join(dir, 'tok.json');
  // Reuse a tokenizer trained by a first run, so the second run trains none.
  await prepareData({ sources: [books], outDir: join(dir, 'first'), vocabSize: 300 });
  writeFileSync(tokenizer, readFileSync(join(dir, 'first', 'tokenizer.json')));
  const report = await prepareData({
    sources: [{ ...books, ratio: 1 }, { ...forum, ratio: 3 }],
    outDir: out, tokenizer, keepCleaned: true, seed: 5,
  });
  const [b, f] = report.mix;
  assert.ok(Math.abs(b!.share - 0.25) < 0.03 && Math.abs(f!.share - 0.75) < 0.03, `shares ${b!.share} ${f!.share}`);
  assert.equal(f!.keepProbability, 1, 'the scarcer source is kept whole');
  assert.equal(report.tokenizer.trained, false);
  const mixStep = report.steps.find((s) => s.step === 'mix')!;
  assert.equal(mixStep.docsOut + (mixStep.removed.downsampled ?? 0), mixStep.docsIn);
  // Interleaved: the first tenth of the output already has both sources.
  const head = readCleaned(out).slice(0, Math.ceil(mixStep.docsOut / 10)).map((d) => d.source);
  assert.ok(head.includes('books') && head.includes('forum'));
});

test('a missing source, a bad ratio and an unknown setting fail before anything is written, naming what to fix', async () => {
  await assert.rejects(prepareData({ sources: [{ name: 'a', path: '/nonexistent/x.txt' }], outDir: '/tmp/never' }), { code: 'MDL_ERR_DATA_INPUT', message: /\/nonexistent\/x\.txt/ });
  await assert.rejects(prepareData({ sources: [{ name: 'a', path: 'x.txt', ratio: -1 }], outDir: '/tmp/never' }), { code: 'MDL_ERR_DATAPREP_CONFIG', message: /ratio/ });
  await assert.rejects(prepareData({ sources: [{ name: 'a', path: 'x.txt' }], outDir: '/tmp/never', nearDupThreshhold: 0.5 } as never), { code: 'MDL_ERR_DATAPREP_CONFIG', message: /nearDupThreshhold/ });
});
