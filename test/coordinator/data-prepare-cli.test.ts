import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writePlantedCorpus } from '../support/planted-corpus.ts';

const BIN = new URL('../../bin/coordinator.js', import.meta.url).pathname;
const run = (...args: string[]) => spawnSync(process.execPath, [BIN, 'data', 'prepare', ...args], { encoding: 'utf8', timeout: 60_000 });

test('coordinator data prepare writes a dataset and prints the report as JSON on stdout and a summary on stderr', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dataprep-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const planted = writePlantedCorpus(join(dir, 'in'), { distinct: 120, exactCopies: 10, nearCopies: 10, piiDocs: 4, distractorDocs: 4 });
  const r = run(...planted.sources.map((s) => `--source=${s.name}=${s.path}`), '--out', join(dir, 'out'), '--vocab', '300', '--near-dup-threshold', '0.75');
  assert.equal(r.status, 0, r.stderr);
  const report = JSON.parse(r.stdout);
  assert.equal(report.nearDup.threshold, 0.75);
  assert.equal(report.pii.card, 4);
  assert.match(r.stderr, /exact_dedup .*exact_duplicate 10/);
});

test('bad input is refused with a message naming what to fix', () => {
  const unknown = run('--source', 'a=x.txt', '--out', '/tmp/x', '--bogus');
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /bogus/);
  const ratio = run('--source', 'a=x.txt:zero', '--out', '/tmp/x');
  assert.equal(ratio.status, 2);
  assert.match(ratio.stderr, /--source a: ratio must be a positive number, got 'zero'/);
  const missing = run('--source', 'a=/nonexistent/corpus.txt', '--out', '/tmp/x');
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /MDL_ERR_DATA_INPUT: \/nonexistent\/corpus\.txt: cannot read the source/);
});
