/**
 * One corpus file, one set of documents: a job's corpus (model/data.ts readDocuments) and `coordinator data
 * prepare` (model/dataprep/extract.ts) both read .txt and .jsonl through model/corpus-reader.ts, so a file with a
 * byte-order mark, CRLF line ends, a bad JSONL line and a whitespace-only document gives both the same documents.
 * Run: node --import tsx --test test/model/corpus-reader.test.ts
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { newCorpusReadStats } from '../../model/corpus-reader.ts';
import { readDocuments } from '../../model/data.ts';
import { extractDocuments, newExtractCounters } from '../../model/dataprep/extract.ts';

let root: string;
before(() => (root = mkdtempSync(join(tmpdir(), 'meshtrain-corpus-reader-'))));
after(() => rmSync(root, { recursive: true, force: true }));

async function collect(docs: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const d of docs) out.push(d);
  return out;
}

/** The documents of `file` as a job reads them and as data preparation reads them, with what each counted. */
async function bothPaths(file: string) {
  const stats = newCorpusReadStats();
  const counters = newExtractCounters();
  return {
    job: await collect(readDocuments(file, undefined, stats)),
    prepare: await collect(extractDocuments([file], 'text', counters)),
    stats,
    counters,
  };
}

test('a .jsonl file with a BOM, CRLF, bad lines and a whitespace-only document gives both paths the same documents', async () => {
  const file = join(root, 'mixed.jsonl');
  const lines = [
    '\uFEFF{"text": "first, after the byte-order mark"}',
    '{"text": "second\\nwith a line break inside"}',
    '{"text": "not closed',
    '{"txt": "no text field"}',
    '{"text": " \\t \\n "}',
    '   ',
    '{"text": "  kept with its spaces  ", "id": 7}',
  ];
  writeFileSync(file, lines.join('\r\n') + '\r\n');
  const { job, prepare, stats, counters } = await bothPaths(file);
  const want = ['first, after the byte-order mark', 'second\nwith a line break inside', '  kept with its spaces  '];
  assert.deepEqual(job, want);
  assert.deepEqual(prepare, want);
  assert.equal(stats.malformedLines, 2);
  assert.equal(counters.malformedLines, 2);
  assert.match(stats.firstMalformed!, /mixed\.jsonl:3: not JSON/);
  assert.equal(counters.firstMalformed, stats.firstMalformed);
});

test('a .txt file with a BOM, CRLF and whitespace-only separator lines gives both paths the same paragraphs', async () => {
  const file = join(root, 'mixed.txt');
  const lines = ['\uFEFFFirst paragraph,', 'its second line.', '', ' \t ', '', 'Second paragraph.', '   ', 'Third, ünïcödé 🙂.', ''];
  writeFileSync(file, lines.join('\r\n'));
  const { job, prepare } = await bothPaths(file);
  const want = ['First paragraph,\nits second line.', 'Second paragraph.', 'Third, ünïcödé 🙂.'];
  assert.deepEqual(job, want);
  assert.deepEqual(prepare, want);
});

test('a document of only whitespace is skipped when documents are given directly too', async () => {
  assert.deepEqual(await collect(readDocuments(['one', '', ' \n\t', 'two'])), ['one', 'two']);
});
