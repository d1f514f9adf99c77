/**
 * Duplicate removal over the whole run (across sources): the first copy of a document is kept, later ones go.
 *
 * Exact: sha256 of the text lowercased with whitespace collapsed, of which 8 bytes are kept in an open-addressing
 * table off the JS heap (16 bytes per document at ≤ 50 % load).
 *
 * Near: MinHash over word k-shingles with `numPerm` permutations (h_i(x) = a_i·x + b_i mod 2^32 on 32-bit shingle
 * hashes, a_i odd: a bijection, cheap, and min-wise enough on already-mixed inputs), then LSH banding: b bands of r
 * rows, chosen for the threshold as datasketch does (minimising the integrated false-positive and false-negative
 * probabilities) but with false negatives weighted 0.9 rather than 0.5 — a missed duplicate stays in the data, a
 * false candidate only costs one signature comparison (at 0.8: 14 bands × 9 rows, a pair at Jaccard 0.85 becomes
 * a candidate with probability 0.975, at 0.5 with 0.027) — put a document in one bucket per band; documents sharing a bucket are candidates,
 * and a candidate counts only when its estimated Jaccard similarity reaches the threshold. For the estimate each
 * kept document keeps its signature as 8-bit values (b-bit minwise hashing: two 8-bit values agree by chance with
 * probability 1/256, which the estimate corrects for). Memory, all off the JS heap: per kept document numPerm bytes
 * of signature + bands × ~12 bytes of LSH index (a 32-bit bucket key and head at ≤ 50 % load, a 4-byte chain link)
 * — ~300 bytes at the defaults (128 permutations, 14 bands), so ~300 MB per million kept documents.
 */
import { createHash } from 'node:crypto';
import { mix32 } from '../../common/random.ts';

/** A set of 64-bit keys (as two uint32 halves) in typed arrays; grows by doubling. */
export class HashSet64 {
  #hi = new Uint32Array(1024);
  #lo = new Uint32Array(1024);
  #used = new Uint8Array(1024);
  #size = 0;

  get size(): number {
    return this.#size;
  }

  /** Adds the key; false if it was already there. */
  add(hi: number, lo: number): boolean {
    if ((this.#size + 1) * 2 > this.#used.length) this.#grow();
    const mask = this.#used.length - 1;
    for (let i = (hi ^ Math.imul(lo, 0x9e3779b1)) & mask; ; i = (i + 1) & mask) {
      if (!this.#used[i]) {
        this.#used[i] = 1;
        this.#hi[i] = hi;
        this.#lo[i] = lo;
        this.#size++;
        return true;
      }
      if (this.#hi[i] === hi && this.#lo[i] === lo) return false;
    }
  }

  #grow(): void {
    const { 0: hi, 1: lo, 2: used } = [this.#hi, this.#lo, this.#used];
    const n = used.length * 2;
    this.#hi = new Uint32Array(n);
    this.#lo = new Uint32Array(n);
    this.#used = new Uint8Array(n);
    this.#size = 0;
    for (let i = 0; i < used.length; i++) if (used[i]) this.add(hi[i]!, lo[i]!);
  }
}

export class ExactDeduper {
  #set = new HashSet64();

  /** True when a document with the same text (ignoring case and whitespace) was seen before; records it if not. */
  isDuplicate(text: string): boolean {
    const key = text.toLowerCase().replace(/\s+/g, ' ').trim();
    const h = createHash('sha256').update(key).digest();
    return !this.#set.add(h.readUInt32LE(0), h.readUInt32LE(4));
  }
}

/** The (bands, rows) with bands × rows ≤ numPerm minimising w·P(false positive) + (1 − w)·P(false negative) at `threshold`. */
export function lshParams(threshold: number, numPerm: number, falsePositiveWeight = 0.1): { bands: number; rows: number } {
  const integrate = (f: (s: number) => number, a: number, b: number) => {
    const n = 200, h = (b - a) / n;
    let sum = 0.5 * (f(a) + f(b));
    for (let i = 1; i < n; i++) sum += f(a + i * h);
    return sum * h;
  };
  let best = { bands: 1, rows: numPerm, error: Infinity };
  for (let b = 1; b <= numPerm; b++) {
    for (let r = 1; r <= Math.floor(numPerm / b); r++) {
      const fp = integrate((s) => 1 - (1 - s ** r) ** b, 0, threshold);
      const fn = integrate((s) => (1 - s ** r) ** b, threshold, 1);
      const error = falsePositiveWeight * fp + (1 - falsePositiveWeight) * fn;
      if (error < best.error) best = { bands: b, rows: r, error };
    }
  }
  return { bands: best.bands, rows: best.rows };
}

export interface NearDedupOptions {
  threshold: number;
  numPerm: number;
  shingleWords: number;
  seed: number;
}

export class NearDeduper {
  readonly bands: number;
  readonly rows: number;
  #o: NearDedupOptions;
  #a: Int32Array;
  #b: Int32Array;
  #sig: Int32Array; // signed: `| 0` arithmetic stays in small integers, and min over signed order is as good a permutation
  #bandKeys: Uint32Array;
  #docs = 0;
  #sigs: Uint8Array; // [doc][perm], low 8 bits
  #next: Int32Array; // [doc][band] → the previous doc in the same bucket, or -1
  #tableKeys = new Uint32Array(1 << 12);
  #tableHeads = new Int32Array(1 << 12).fill(-1);
  #tableUsed = 0;
  #seen = new Set<number>();

  constructor(options: NearDedupOptions) {
    this.#o = options;
    ({ bands: this.bands, rows: this.rows } = lshParams(options.threshold, options.numPerm));
    const n = options.numPerm;
    this.#a = new Int32Array(n);
    this.#b = new Int32Array(n);
    let s = options.seed >>> 0;
    for (let i = 0; i < n; i++) {
      s = mix32(s + 0x9e3779b9);
      this.#a[i] = s | 1;
      s = mix32(s + 0x9e3779b9);
      this.#b[i] = s;
    }
    this.#sig = new Int32Array(n);
    this.#bandKeys = new Uint32Array(this.bands);
    this.#sigs = new Uint8Array(1024 * n);
    this.#next = new Int32Array(1024 * this.bands);
  }

  get documents(): number {
    return this.#docs;
  }

  /**
   * True when `text` is a near-duplicate of a document kept earlier (estimated Jaccard ≥ threshold); otherwise the
   * document is indexed and false is returned. Texts with no words are never near-duplicates.
   */
  isDuplicate(text: string): boolean {
    const { numPerm, threshold } = this.#o;
    if (!this.#signature(text)) return false;
    const sig = this.#sig;
    for (let band = 0; band < this.bands; band++) {
      let h = mix32(band + 1);
      for (let r = band * this.rows; r < (band + 1) * this.rows; r++) h = mix32(Math.imul(h, 0x01000193) ^ sig[r]!);
      this.#bandKeys[band] = h;
    }
    // Candidates: documents sharing at least one bucket; each verified once by its stored 8-bit signature.
    const seen = this.#seen;
    seen.clear();
    const chance = 1 / 256;
    for (let band = 0; band < this.bands; band++) {
      for (let d = this.#head(this.#bandKeys[band]!); d >= 0; d = this.#next[d * this.bands + band]!) {
        if (seen.has(d)) continue;
        seen.add(d);
        let same = 0;
        const base = d * numPerm;
        for (let i = 0; i < numPerm; i++) if (this.#sigs[base + i] === (sig[i]! & 0xff)) same++;
        const jaccard = (same / numPerm - chance) / (1 - chance);
        if (jaccard >= threshold) return true;
      }
    }
    this.#insert();
    return false;
  }

  /** Fills #sig with the MinHash of the word shingles of `text`; false when it has no words. */
  #signature(text: string): boolean {
    const words = text.toLowerCase().match(/[\p{L}\p{N}]+/gu);
    if (!words) return false;
    const k = Math.min(this.#o.shingleWords, words.length);
    const wordHashes = new Uint32Array(words.length);
    for (let i = 0; i < words.length; i++) {
      const w = words[i]!;
      let h = 0x811c9dc5;
      for (let j = 0; j < w.length; j++) h = Math.imul(h ^ w.charCodeAt(j), 0x01000193);
      wordHashes[i] = h;
    }
    const sig = this.#sig.fill(0x7fffffff);
    const a = this.#a, b = this.#b, n = this.#o.numPerm;
    for (let i = 0; i + k <= words.length; i++) {
      let x = 0x9e3779b9;
      for (let j = i; j < i + k; j++) x = Math.imul(x ^ wordHashes[j]!, 0x01000193);
      x = mix32(x) | 0;
      for (let p = 0; p < n; p++) {
        const v = (Math.imul(a[p]!, x) + b[p]!) | 0;
        if (v < sig[p]!) sig[p] = v;
      }
    }
    return true;
  }

  #slot(key: number): number {
    const mask = this.#tableKeys.length - 1;
    let i = mix32(key) & mask;
    while (this.#tableHeads[i] !== -1 && this.#tableKeys[i] !== key) i = (i + 1) & mask;
    return i;
  }

  #head(key: number): number {
    return this.#tableHeads[this.#slot(key)]!;
  }

  #insert(): void {
    const d = this.#docs++;
    const { numPerm } = this.#o;
    if ((d + 1) * numPerm > this.#sigs.length) {
      const grown = new Uint8Array(this.#sigs.length * 2);
      grown.set(this.#sigs);
      this.#sigs = grown;
      const next = new Int32Array(this.#next.length * 2);
      next.set(this.#next);
      this.#next = next;
    }
    for (let i = 0; i < numPerm; i++) this.#sigs[d * numPerm + i] = this.#sig[i]! & 0xff;
    for (let band = 0; band < this.bands; band++) {
      if ((this.#tableUsed + 1) * 2 > this.#tableKeys.length) this.#growTable();
      const key = this.#bandKeys[band]!;
      const i = this.#slot(key);
      if (this.#tableHeads[i] === -1) {
        this.#tableUsed++;
        this.#tableKeys[i] = key;
      }
      this.#next[d * this.bands + band] = this.#tableHeads[i]!;
      this.#tableHeads[i] = d;
    }
  }

  #growTable(): void {
    const keys = this.#tableKeys, heads = this.#tableHeads;
    this.#tableKeys = new Uint32Array(keys.length * 2);
    this.#tableHeads = new Int32Array(keys.length * 2).fill(-1);
    for (let i = 0; i < keys.length; i++) {
      if (heads[i] === -1) continue;
      const j = this.#slot(keys[i]!);
      this.#tableKeys[j] = keys[i]!;
      this.#tableHeads[j] = heads[i]!;
    }
  }
}
