/**
 * Mixing sources by ratio. Each source's cleaned documents wait in a JSONL spill file (pass 1); `planMix` decides,
 * from the characters each source kept, which share of each to keep so that the output's characters split as the
 * ratios say (normalized); only over-represented sources are down-sampled, none is repeated. `mixSpills` (pass 2)
 * then reads the spills side by side, keeps each document with its source's probability (a seeded hash of source
 * and position, so a run is reproducible) and interleaves the sources so every stretch of the output has the mix.
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { mix32 } from '../../common/random.ts';

export interface MixSource {
  name: string;
  /** Normalized or not; null for every source means no mixing (everything kept). */
  ratio: number | null;
  chars: number;
  documents: number;
}

export interface MixPlanEntry {
  name: string;
  /** The ratio normalized over the sources (their natural share when no ratios are given). */
  targetShare: number;
  keepProbability: number;
}

/** Keep-probabilities that meet the ratios while keeping as much as possible: the scarcest source (per ratio) is kept whole. */
export function planMix(sources: readonly MixSource[]): MixPlanEntry[] {
  const totalChars = sources.reduce((s, x) => s + x.chars, 0);
  if (sources.every((s) => s.ratio === null)) {
    return sources.map((s) => ({ name: s.name, targetShare: totalChars ? s.chars / totalChars : 0, keepProbability: 1 }));
  }
  const ratioSum = sources.reduce((s, x) => s + (x.ratio ?? 0), 0);
  const shares = sources.map((s) => (s.ratio ?? 0) / ratioSum);
  // Output characters T must satisfy T·share_s ≤ chars_s for every source: the largest such T.
  const total = Math.min(...sources.map((s, i) => (shares[i]! > 0 ? s.chars / shares[i]! : Infinity)));
  return sources.map((s, i) => ({
    name: s.name,
    targetShare: shares[i]!,
    keepProbability: s.chars > 0 && Number.isFinite(total) ? Math.min(1, (total * shares[i]!) / s.chars) : 0,
  }));
}

export interface SpillInput {
  name: string;
  path: string;
  keepProbability: number;
  /** Characters the source is expected to contribute: its kept chars × keepProbability. */
  expectedChars: number;
}

export interface MixedDocument {
  source: number;
  text: string;
}

/** Whether document `i` of source `source` is kept at probability `p`; depends only on (seed, source, i). */
export function keepDocument(seed: number, source: number, i: number, p: number): boolean {
  if (p >= 1) return true;
  return mix32(mix32(mix32(seed ^ 0x5bd1e995) ^ source) ^ i) / 2 ** 32 < p;
}

/**
 * The kept documents of every spill, interleaved: next comes the source furthest behind its expected characters.
 * `onDropped` hears each down-sampled document.
 */
export async function* mixSpills(spills: readonly SpillInput[], seed: number, onDropped: (source: number, chars: number) => void): AsyncGenerator<MixedDocument> {
  const readers = spills.map((s) => createInterface({ input: createReadStream(s.path, { encoding: 'utf8', highWaterMark: 1 << 16 }), crlfDelay: Infinity })[Symbol.asyncIterator]());
  const emitted = spills.map(() => 0);
  const position = spills.map(() => 0);
  const open = spills.map(() => true);
  try {
    for (;;) {
      let pick = -1;
      let behind = Infinity;
      for (let s = 0; s < spills.length; s++) {
        if (!open[s]) continue;
        const progress = emitted[s]! / Math.max(1, spills[s]!.expectedChars);
        if (progress < behind) (behind = progress), (pick = s);
      }
      if (pick < 0) return;
      // Read until one document of `pick` is kept (or it runs out).
      for (;;) {
        const next = await readers[pick]!.next();
        if (next.done) {
          open[pick] = false;
          break;
        }
        if (next.value === '') continue;
        const text = (JSON.parse(next.value) as { text: string }).text;
        if (!keepDocument(seed, pick, position[pick]!++, spills[pick]!.keepProbability)) {
          onDropped(pick, text.length);
          continue;
        }
        emitted[pick]! += text.length;
        yield { source: pick, text };
        break;
      }
    }
  } finally {
    for (const r of readers) await r.return?.();
  }
}
