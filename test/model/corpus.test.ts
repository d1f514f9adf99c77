/**
 * The bundled demo corpus: present, plain text, with its licence stated.
 * Run: node --import tsx --test test/model/corpus.test.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadDemoCorpus } from '../../model/corpus.ts';

test('the demo corpus has the 233 State of the Union addresses as plain-text documents, oldest first', () => {
  const corpus = loadDemoCorpus();
  assert.equal(corpus.name, 'sotu');
  assert.equal(corpus.documents.length, 233);
  assert.equal(corpus.titles.length, corpus.documents.length);
  assert.equal(corpus.titles[0], '1790 George Washington');
  assert.match(corpus.titles.at(-1)!, /^2021 Joseph R Biden$/);
  assert.match(corpus.documents[0]!, /^Fellow-Citizens of the Senate and House of Representatives:/);
  const bytes = corpus.documents.reduce((n, d) => n + Buffer.byteLength(d), 0);
  assert.ok(bytes > 10_000_000, `expected over 10 MB of text, got ${bytes}`);
});

test('every document is non-empty trimmed text without markup', () => {
  for (const [i, d] of loadDemoCorpus().documents.entries()) {
    assert.ok(d.length > 1000, `document ${i} is too short`);
    assert.equal(d, d.trim());
    assert.doesNotMatch(d, /<\/?[a-z]+>|\r/i, `document ${i} has markup or CR`);
  }
});

test('the licence and source are stated', () => {
  const { licence, source } = loadDemoCorpus();
  assert.match(licence, /public domain/i);
  assert.match(source, /@stdlib\/datasets-sotu/);
});

test('the corpus is read once per process', () => {
  assert.equal(loadDemoCorpus(), loadDemoCorpus());
});
