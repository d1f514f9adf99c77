import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { prepareDataset } from '../../coordinator/jobs/datasets.ts';
import { ArtifactStore } from '../../coordinator/store/artifact-store.ts';
import { validateJobSpec } from '../../protocol/job-spec.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { silentLogger } from '../../common/log.ts';
import { prepareTokenData } from '../../model/prepare-data.ts';

function specFor(corpus: string) {
  const res = validateJobSpec({
    name: 'tiny',
    model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
    data: { corpus, heldOutFraction: 0.2 },
    training: { steps: 2, batchSize: 2, seqLen: 16 },
  });
  assert.ok(res.ok);
  return res.spec;
}

test('a dataset is prepared once, its files stored by sha256, and reused by the next job with the same key', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'datasets-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const corpus = join(dir, 'corpus.txt');
  writeFileSync(corpus, loadDemoCorpus().documents.slice(0, 6).join('\n\n'));
  const artifacts = new ArtifactStore(join(dir, 'artifacts'));
  const files = await prepareDataset(specFor(corpus), dir, artifacts, silentLogger);
  assert.ok(files['tokenizer.json'] && files['index.json']);
  const shards = Object.keys(files).filter((f) => f.endsWith('.bin'));
  assert.ok(shards.length >= 2, `train and held-out shards: ${Object.keys(files).join(', ')}`);
  for (const [, digest] of Object.entries(files)) {
    const bytes = await artifacts.get(digest);
    assert.equal(createHash('sha256').update(bytes).digest('hex'), digest);
  }
  const index = JSON.parse((await artifacts.get(files['index.json']!)).toString());
  assert.equal(index.vocabSize, 300);

  const folder = join(dir, 'datasets');
  const before = statSync(folder).mtimeMs;
  const again = await prepareDataset(specFor(corpus), dir, artifacts, silentLogger);
  assert.deepEqual(again, files, 'the same key gives the same bytes');
  assert.equal(statSync(folder).mtimeMs, before, 'nothing was prepared again');
});

test('a corpus path that does not exist is an error, not an empty dataset', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'datasets-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  await assert.rejects(prepareDataset(specFor(join(dir, 'missing.txt')), dir, new ArtifactStore(join(dir, 'a')), silentLogger), /ENOENT/);
});

test('a corpus folder that is already a prepared dataset is used as it is, and refused when its vocabulary is larger than the model\'s', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'datasets-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const prepared = join(dir, 'prepared');
  await prepareTokenData({ corpus: 'demo', outDir: prepared, vocabSize: 290, heldOutFraction: 0.1 });
  writeFileSync(join(prepared, 'report.json'), '{}'); // not part of the dataset
  const artifacts = new ArtifactStore(join(dir, 'artifacts'));
  const files = await prepareDataset(specFor(prepared), dir, artifacts, silentLogger);
  assert.ok(files['index.json'] && files['tokenizer.json'] && files['train-00000.bin']);
  assert.equal(files['report.json'], undefined);
  const index = JSON.parse((await artifacts.get(files['index.json']!)).toString());
  assert.equal(index.vocabSize, 290, 'the folder\'s own tokenizer, not a new one of model.vocabSize');

  const small = specFor(prepared);
  small.model.vocabSize = 280;
  await assert.rejects(prepareDataset(small, dir, artifacts, silentLogger), { code: 'MDL_ERR_DATASET_MISMATCH', message: /vocabulary of 290.*model\.vocabSize 280/ });
});

test('a corpus whose train split cannot serve one global batch is refused once with MDL_ERR_DATASET_MISMATCH, saying what to change', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'datasets-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const corpus = join(dir, 'corpus.txt');
  writeFileSync(corpus, loadDemoCorpus().documents.slice(0, 6).join('\n\n'));
  const artifacts = new ArtifactStore(join(dir, 'artifacts'));
  const spec = specFor(corpus);
  spec.training.batchSize = 100_000; // far more tokens than six addresses hold
  await assert.rejects(prepareDataset(spec, dir, artifacts, silentLogger), (err: Error & { code?: string }) =>
    err.code === 'MDL_ERR_DATASET_MISMATCH' && /the train split has \d+ tokens in \d+ documents, and one global batch of 100000 × 16 needs 1600001 in one shard: use a larger corpus/.test(err.message));
  assert.ok((await prepareDataset(specFor(corpus), dir, artifacts, silentLogger))['index.json'], 'the same corpus serves a batch that fits');
});

test('malformed JSONL lines in a job\'s corpus are skipped and the coordinator says how many and where the first is', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'datasets-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const corpus = join(dir, 'corpus.jsonl');
  const docs = loadDemoCorpus().documents.slice(0, 6).map((text) => JSON.stringify({ text }));
  writeFileSync(corpus, [docs[0], '{"text": broken', ...docs.slice(1, 4), '{"title": "no text field"}', ...docs.slice(4)].join('\n'));
  const warnings: string[] = [];
  const log = { ...silentLogger, warn: (m: string) => warnings.push(m), child: () => log };
  const files = await prepareDataset(specFor(corpus), dir, new ArtifactStore(join(dir, 'artifacts')), log);
  assert.ok(files['index.json'], 'the well-formed documents still make a dataset');
  assert.equal(warnings.length, 1, warnings.join('\n'));
  assert.match(warnings[0]!, /skipped 2 malformed JSONL line\(s\)/);
  assert.match(warnings[0]!, /corpus\.jsonl:2/, 'the first bad line is named by file and line');
});
