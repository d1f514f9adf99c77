/**
 * A synthetic corpus with known content planted in it, for the data-preparation tests and benchmark: distinct
 * documents (each tagged with a unique word `zqNNNNk`, so any copy can be traced back to its original), exact
 * duplicates (verbatim, upper-cased, re-spaced), near-duplicates (one or two words changed or inserted in a
 * ~160-word document: Jaccard of 5-word shingles ≥ 0.88), personal data of every kind, and distractors that must
 * survive unmasked (years, prices, versions, dates, ISBN-like numbers that fail Luhn). Written as four sources:
 * `web` (HTML files with scripts, menus, footers and a repeated newsletter line), `books` (.txt), `forum` (.jsonl,
 * with one malformed line) and `notes` (Markdown files).
 */
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { seededRandom } from '../../common/random.ts';
import { luhnValid } from '../../model/dataprep/pii.ts';

export interface PlantedOptions {
  seed?: number;
  /** Distinct documents (PII and distractor documents included). */
  distinct?: number;
  exactCopies?: number;
  nearCopies?: number;
  /** Documents carrying one e-mail, one phone, one IP and one card each. */
  piiDocs?: number;
  distractorDocs?: number;
}

export interface PlantedCorpus {
  sources: Array<{ name: string; path: string }>;
  /** Tag of every distinct document; copies carry their original's tag. */
  tags: string[];
  exactCopies: number;
  nearCopies: number;
  pii: { email: number; phone: number; ip: number; card: number };
  /** Every planted personal-data string, and every distractor string that must come out unchanged. */
  piiValues: string[];
  distractors: string[];
  /** Strings that only occur inside markup or boilerplate that extraction must drop. */
  markupMarkers: string[];
  malformedLines: number;
}

export const tagOf = (text: string) => text.toLowerCase().match(/\bzq\d{5}k\b/)?.[0] ?? null;

export function writePlantedCorpus(dir: string, opts: PlantedOptions = {}): PlantedCorpus {
  const { seed = 7, distinct = 300, exactCopies = 40, nearCopies = 40, piiDocs = 12, distractorDocs = 12 } = opts;
  const rand = seededRandom(seed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)]!;
  const syllables = ['ka', 'lo', 'mi', 'ne', 'ru', 'sa', 'ti', 'vo', 'den', 'mar', 'pol', 'ster', 'bri', 'gan', 'tho', 'wel', 'quo', 'fen'];
  const vocab = Array.from({ length: 4000 }, () => Array.from({ length: 2 + Math.floor(rand() * 2) }, () => pick(syllables)).join(''));
  const words = (n: number) => Array.from({ length: n }, () => pick(vocab));
  const sentences = (ws: string[]) => {
    const out: string[] = [];
    for (let i = 0; i < ws.length; i += 12) out.push(ws.slice(i, i + 12).join(' ') + '.');
    return out.join(' ');
  };

  const corpus: PlantedCorpus = {
    sources: [], tags: [], exactCopies, nearCopies, pii: { email: 0, phone: 0, ip: 0, card: 0 }, piiValues: [], distractors: [],
    markupMarkers: ['SCRIPTMARKER', 'STYLEMARKER', 'NAVMARKER', 'FOOTERMARKER', 'Subscribe to our newsletter'], malformedLines: 1,
  };
  const bases: string[][] = []; // word lists of the distinct documents
  const docs: string[] = []; // every document's text, originals first
  for (let i = 0; i < distinct; i++) {
    const tag = `zq${String(i).padStart(5, '0')}k`;
    corpus.tags.push(tag);
    const ws = [tag, ...words(150 + Math.floor(rand() * 30))];
    bases.push(ws);
    let text = sentences(ws);
    if (i < piiDocs) text += ' ' + piiSentence(i, corpus, rand);
    else if (i < piiDocs + distractorDocs) text += ' ' + distractorSentence(i, corpus, rand);
    docs.push(text);
  }
  for (let c = 0; c < exactCopies; c++) {
    const text = docs[piiDocs + distractorDocs + Math.floor(rand() * (distinct - piiDocs - distractorDocs))]!;
    docs.push(c % 3 === 0 ? text : c % 3 === 1 ? text.toUpperCase() : `  ${text.replace(/ /g, '   ')}  `);
  }
  for (let c = 0; c < nearCopies; c++) {
    const base = bases[piiDocs + distractorDocs + Math.floor(rand() * (distinct - piiDocs - distractorDocs))]!;
    for (;;) {
      const ws = [...base];
      for (let e = 0; e < 1 + (c % 2); e++) {
        const at = 1 + Math.floor(rand() * (ws.length - 1));
        if (e === 0) ws[at] = pick(vocab);
        else ws.splice(at, 0, pick(vocab));
      }
      if (jaccard(base, ws, 5) >= 0.88) {
        docs.push(sentences(ws));
        break;
      }
    }
  }
  // Shuffle the copies among the originals (originals of copies stay first only by chance).
  const order = docs.map((_, i) => i).sort(() => rand() - 0.5);

  const web = join(dir, 'web'), notes = join(dir, 'notes');
  mkdirSync(web, { recursive: true });
  mkdirSync(notes, { recursive: true });
  const books: string[] = [], forum: string[] = [];
  order.forEach((d, n) => {
    const text = docs[d]!;
    const name = `${String(n).padStart(5, '0')}`;
    switch (n % 4) {
      case 0: writeFileSync(join(web, `${name}.html`), htmlPage(text, n)); break;
      case 1: books.push(text); break;
      case 2: forum.push(JSON.stringify({ text, id: n })); break;
      // The heading and the fenced line repeat in every note (boilerplate); the tag's link keeps its text only.
      default: writeFileSync(join(notes, `${name}.md`), `# Field notes\n\n${text.replace(/\b(zq\d{5}k)\b/i, '[$1](https://example.org/x)')}\n\n\`\`\`\nshared code sample line\n\`\`\`\n`);
    }
  });
  forum.splice(Math.floor(forum.length / 2), 0, '{"text": "this line is cut off');
  writeFileSync(join(dir, 'books.txt'), books.join('\n\n') + '\n');
  writeFileSync(join(dir, 'forum.jsonl'), forum.join('\n') + '\n');
  corpus.sources = [
    { name: 'web', path: web },
    { name: 'books', path: join(dir, 'books.txt') },
    { name: 'forum', path: join(dir, 'forum.jsonl') },
    { name: 'notes', path: notes },
  ];
  return corpus;
}

function htmlPage(text: string, n: number): string {
  return `<!DOCTYPE html><html><head><title>Page ${n}</title><script>var SCRIPTMARKER = "<p>not text</p>";</script>` +
    `<style>.STYLEMARKER { color: red }</style></head><body><header>Site header</header>` +
    `<nav><a href="/">Home</a> | <a href="/about">NAVMARKER About</a></nav>` +
    `<p><a href="/a">Home</a> &raquo; <a href="/b">Articles</a></p>` +
    `<div>Subscribe to our newsletter for weekly updates</div>` +
    `<article><p>${text.replace(/&/g, '&amp;').replace(/</g, '&lt;')}</p></article>` +
    `<footer>FOOTERMARKER &copy; 2024 Example Corp. All rights reserved.</footer></body></html>`;
}

function piiSentence(i: number, c: PlantedCorpus, rand: () => number): string {
  const d = (n: number) => Array.from({ length: n }, () => Math.floor(rand() * 10)).join('');
  const email = `user.${i}${d(2)}@mail${i % 5}.example.com`;
  const phone = [`+44 20 ${d(4)} ${d(4)}`, `(202) 555-${d(4)}`, `202-555-${d(4)}`, `+1-415-555-${d(4)}`, `030 ${d(4)} ${d(4)}`][i % 5]!;
  const ip = i % 2 === 0 ? `192.168.${i % 250}.${10 + (i % 200)}` : `2001:db8:85a3::${(i + 16).toString(16)}:370:7334`;
  let card = '';
  do card = `4${d(15)}`; while (!luhnValid(card));
  const cardText = i % 2 === 0 ? card.replace(/(\d{4})(?=\d)/g, '$1 ') : card.replace(/(\d{4})(?=\d)/g, '$1-');
  c.pii.email++, c.pii.phone++, c.pii.ip++, c.pii.card++;
  c.piiValues.push(email, phone, ip, cardText);
  return `Write to ${email} or call ${phone} today. The server at ${ip} charged card ${cardText} twice.`;
}

function distractorSentence(i: number, c: PlantedCorpus, rand: () => number): string {
  const d = (n: number) => Array.from({ length: n }, () => Math.floor(rand() * 10)).join('');
  let isbn = '';
  do isbn = `978${d(10)}`; while (luhnValid(isbn));
  const isbnText = `${isbn.slice(0, 3)}-${isbn.slice(3, 4)}-${isbn.slice(4, 7)}-${isbn.slice(7, 12)}-${isbn.slice(12)}`;
  const items = [`${1900 + (i % 120)}`, `$1,${d(3)}.99`, `version ${i % 9}.${i % 7}.${i % 5}`, `v10.0.${d(5)}`, isbnText, `2023-0${1 + (i % 9)}-1${i % 10}`, `12:3${i % 10}:45`, `order ${d(8)}`];
  c.distractors.push(...items);
  return `In ${items[0]} it cost ${items[1]}, ran ${items[2]} and ${items[3]}, ISBN ${items[4]}, shipped on ${items[5]} at ${items[6]} as ${items[7]}.`;
}

/** Jaccard similarity of the k-word shingle sets of two word lists. */
export function jaccard(a: string[], b: string[], k: number): number {
  const sh = (ws: string[]) => new Set(ws.map((_, i) => ws.slice(i, i + k).join(' ')).slice(0, Math.max(1, ws.length - k + 1)));
  const sa = sh(a), sb = sh(b);
  let inter = 0;
  for (const s of sa) if (sb.has(s)) inter++;
  return inter / (sa.size + sb.size - inter);
}

export interface LargeCorpus {
  path: string;
  bytes: number;
  distinct: number;
  exactCopies: number;
  nearCopies: number;
  emails: number;
}

/**
 * A .txt corpus of about `bytes` bytes, written in 4 MB chunks so the generator's own memory stays small: distinct
 * ~2 KB documents, and after every 500th one an exact copy, a near copy (one word changed) and an e-mail address.
 */
export function writeLargeCorpus(path: string, bytes: number, seed = 11): LargeCorpus {
  const rand = seededRandom(seed);
  const syllables = ['ka', 'lo', 'mi', 'ne', 'ru', 'sa', 'ti', 'vo', 'den', 'mar', 'pol', 'ster', 'bri', 'gan', 'tho', 'wel'];
  const vocab = Array.from({ length: 4000 }, (_, i) => syllables[i % 16]! + syllables[(i >> 4) % 16]! + syllables[(i >> 8) % 16]!);
  const fd = openSync(path, 'w');
  const c: LargeCorpus = { path, bytes: 0, distinct: 0, exactCopies: 0, nearCopies: 0, emails: 0 };
  let chunk: string[] = [];
  let chunkBytes = 0;
  const emit = (doc: string) => {
    chunk.push(doc, '\n\n');
    chunkBytes += doc.length + 2;
    if (chunkBytes > 4 << 20) flush();
  };
  const flush = () => {
    writeSync(fd, chunk.join(''));
    c.bytes += chunkBytes;
    chunk = [];
    chunkBytes = 0;
  };
  while (c.bytes + chunkBytes < bytes) {
    const ws = [`zq${String(c.distinct).padStart(7, '0')}k`];
    for (let i = 0; i < 300; i++) ws.push(vocab[Math.floor(rand() * vocab.length)]!);
    c.distinct++;
    emit(ws.join(' ') + '.');
    if (c.distinct % 500 === 0) {
      emit(ws.join(' ') + '.');
      c.exactCopies++;
      ws[150] = 'changedword';
      emit(ws.join(' ') + '.');
      c.nearCopies++;
      ws[0] = `zq${String(c.distinct).padStart(7, '0')}m`; // a distinct document (its own tag) …
      for (let i = 1; i < 300; i += 7) ws[i] = vocab[Math.floor(rand() * vocab.length)]!; // … with other words
      emit(ws.join(' ') + ` Mail me at person${c.distinct}@example.org please.`);
      c.distinct++;
      c.emails++;
    }
  }
  flush();
  closeSync(fd);
  return c;
}
