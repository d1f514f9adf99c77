import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { prepareData } from '../../../model/dataprep/pipeline.ts';
import { writeLargeCorpus } from '../../support/planted-corpus.ts';

/** JS heap of the child, and the corpus: 3× the heap (measured: ~13 s for 48 MB on one shared core, ~4 MB/s). */
const HEAP_MB = 16;
const CORPUS_MB = 48;

test('a corpus three times larger than the JS heap is prepared in a small-heap process with every planted item counted', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dataprep-stream-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const corpus = writeLargeCorpus(join(dir, 'big.txt'), CORPUS_MB * 1e6);
  // A small tokenizer trained on the corpus's first 300 kB, reused by the child so it trains none.
  writeFileSync(join(dir, 'head.txt'), readFileSync(join(dir, 'big.txt'), 'utf8').slice(0, 300_000).replace(/\n\n[^\n]*$/, ''));
  await prepareData({ sources: [{ name: 'head', path: join(dir, 'head.txt') }], outDir: join(dir, 'tok'), vocabSize: 300 });

  const { stdout } = await promisify(execFile)(
    process.execPath,
    [`--max-old-space-size=${HEAP_MB}`, '--import', 'tsx', new URL('../../support/dataprep-child.ts', import.meta.url).pathname, join(dir, 'big.txt'), join(dir, 'out'), join(dir, 'tok', 'tokenizer.json')],
    { maxBuffer: 1 << 24, timeout: 120_000 },
  );
  const { report } = JSON.parse(stdout);
  const step = (name: string) => report.steps.find((s: { step: string }) => s.step === name);
  assert.ok(report.bytesIn > 3 * HEAP_MB * 1e6);
  assert.equal(step('extract').docsOut, corpus.distinct + corpus.exactCopies + corpus.nearCopies);
  assert.equal(step('exact_dedup').removed.exact_duplicate, corpus.exactCopies);
  assert.equal(step('near_dedup').removed.near_duplicate, corpus.nearCopies);
  assert.equal(report.pii.email, corpus.emails);
  assert.equal(report.split.train.documents + report.split.heldOut.documents, corpus.distinct);
});
