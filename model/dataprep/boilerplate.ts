/**
 * Boilerplate lines: the lines a site or source repeats in document after document (cookie banners, "subscribe"
 * boxes, copyright footers, menus), plus lines matching a few well-known boilerplate phrases.
 *
 * Repetition is counted in a first pass over a source with a count-min sketch of line hashes (3 × 2^18 16-bit
 * counters, 1.5 MB off the JS heap, whatever the corpus size), once per distinct document — an exact duplicate
 * does not make its own lines look like boilerplate — and once per line per document. A count-min sketch only
 * over-counts, so a rare line may be taken for boilerplate only when it collides with frequent ones in all three
 * rows, which at these sizes is negligible for corpora of up to millions of distinct lines.
 */
import { mix32 } from '../../common/random.ts';

const ROWS = 3;
const WIDTH_BITS = 18;
const WIDTH = 1 << WIDTH_BITS;
/** Lines longer than this are content even when repeated (a repeated long paragraph is a duplicate, not chrome). */
const MAX_LINE_CHARS = 400;

/** Phrases that mark a line as boilerplate wherever it occurs (short lines only). */
const PATTERNS: readonly RegExp[] = [
  /\ball rights reserved\b/i,
  /^\s*(©|\(c\)|copyright\b)/i,
  /\b(we|this (web)?site) uses? cookies\b/i,
  /\baccept (all )?cookies\b/i,
  /\b(privacy policy|terms of (use|service))\b.*\|/i,
  /^\s*(skip to (main )?content|back to top|share (this|on)\b|follow us\b|sign up for our newsletter)/i,
];
const PATTERN_MAX_CHARS = 200;

export class LineCounter {
  #counts = new Uint16Array(ROWS * WIDTH);
  #docs = 0;

  get documents(): number {
    return this.#docs;
  }

  /** Counts each distinct line of one (distinct) document once. */
  addDocument(text: string): void {
    this.#docs++;
    const seen = new Set<number>();
    for (const line of text.split('\n')) {
      const key = lineKey(line);
      if (key === null) continue;
      const h = hashLine(key);
      if (seen.has(h)) continue;
      seen.add(h);
      for (let r = 0; r < ROWS; r++) {
        const i = r * WIDTH + slot(h, r);
        if (this.#counts[i]! < 0xffff) this.#counts[i]!++;
      }
    }
  }

  /** Documents containing `line`, over-estimated at worst. */
  count(line: string): number {
    const key = lineKey(line);
    if (key === null) return 0;
    const h = hashLine(key);
    let min = Infinity;
    for (let r = 0; r < ROWS; r++) min = Math.min(min, this.#counts[r * WIDTH + slot(h, r)]!);
    return min;
  }
}

export interface BoilerplateResult {
  text: string;
  /** Lines removed for repeating across documents, and for matching a boilerplate phrase. */
  repeated: number;
  phrase: number;
}

/** `text` without its boilerplate lines: those in ≥ max(minDocs, minShare × documents) documents, or matching PATTERNS. */
export function removeBoilerplate(text: string, counter: LineCounter | null, minDocs: number, minShare: number): BoilerplateResult {
  const threshold = counter ? Math.max(minDocs, Math.ceil(minShare * counter.documents)) : Infinity;
  let repeated = 0;
  let phrase = 0;
  const kept: string[] = [];
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (t.length > 0 && t.length <= PATTERN_MAX_CHARS && PATTERNS.some((p) => p.test(t))) {
      phrase++;
      continue;
    }
    if (counter && counter.count(line) >= threshold) {
      repeated++;
      continue;
    }
    kept.push(line);
  }
  return repeated + phrase === 0 ? { text, repeated, phrase } : { text: kept.join('\n'), repeated, phrase };
}

/** The form of a line that is compared: trimmed, spaces collapsed, lowercased; null for lines never counted. */
function lineKey(line: string): string | null {
  const t = line.trim();
  if (t.length < 8 || t.length > MAX_LINE_CHARS) return null;
  return t.replace(/\s+/g, ' ').toLowerCase();
}

/** FNV-1a over UTF-16 code units, finished with the murmur3 mixer. */
export function hashLine(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return mix32(h);
}

const slot = (h: number, row: number) => mix32(h + Math.imul(row + 1, 0x9e3779b9)) & (WIDTH - 1);

