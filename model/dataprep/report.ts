/**
 * What a data-preparation run did, step by step (report.json): documents and characters into and out of every
 * step, and what each step removed, counted by reason. `StepCounter` keeps one step's numbers as the documents
 * stream past.
 */
import type { DataPrepConfig } from './config.ts';
import type { PiiCounts } from './pii.ts';

export type StepName = 'extract' | 'boilerplate' | 'normalize' | 'pii' | 'filter' | 'exact_dedup' | 'near_dedup' | 'mix';

export interface StepReport {
  step: StepName;
  docsIn: number;
  docsOut: number;
  charsIn: number;
  charsOut: number;
  /** Documents removed, by reason (e.g. too_short, malformed_jsonl, downsampled). */
  removed: Record<string, number>;
  /** Other things the step counted: boilerplate lines removed, documents changed, … */
  notes: Record<string, number>;
}

export class StepCounter {
  readonly report: StepReport;

  constructor(step: StepName) {
    this.report = { step, docsIn: 0, docsOut: 0, charsIn: 0, charsOut: 0, removed: {}, notes: {} };
  }

  in(chars: number): void {
    this.report.docsIn++;
    this.report.charsIn += chars;
  }

  out(chars: number): void {
    this.report.docsOut++;
    this.report.charsOut += chars;
  }

  remove(reason: string): void {
    this.report.removed[reason] = (this.report.removed[reason] ?? 0) + 1;
  }

  note(what: string, n = 1): void {
    if (n !== 0) this.report.notes[what] = (this.report.notes[what] ?? 0) + n;
  }
}

export interface SourceReport {
  name: string;
  path: string;
  files: number;
  bytes: number;
  /** Documents extracted, and documents and characters left after cleaning and de-duplication (before the mix). */
  documents: number;
  keptDocuments: number;
  keptChars: number;
}

export interface MixReport {
  name: string;
  targetShare: number;
  keepProbability: number;
  documents: number;
  chars: number;
  /** Share of the output's characters this source ended up with. */
  share: number;
}

export interface DataPrepReport {
  config: DataPrepConfig;
  sources: SourceReport[];
  steps: StepReport[];
  pii: PiiCounts;
  nearDup: { threshold: number; numPerm: number; bands: number; rows: number; shingleWords: number };
  mix: MixReport[];
  split: { train: { documents: number; tokens: number }; heldOut: { documents: number; tokens: number } };
  tokenizer: { vocabSize: number; trained: boolean; sha256: string };
  /** Raw input bytes, whole-run seconds, and input MB per second. */
  bytesIn: number;
  seconds: number;
  mbPerSecond: number;
  timingsMs: Record<string, number>;
}

/** A few lines for people: what came in, what each step removed, the mix and the splits. */
export function summarizeReport(r: DataPrepReport): string {
  const lines = [`data prepare: ${(r.bytesIn / 1e6).toFixed(1)} MB from ${r.sources.length} source(s) in ${r.seconds.toFixed(1)} s (${r.mbPerSecond.toFixed(1)} MB/s)`];
  for (const s of r.steps) {
    const removed = Object.entries(s.removed).map(([k, v]) => `${k} ${v}`).join(', ');
    const notes = Object.entries(s.notes).map(([k, v]) => `${k} ${v}`).join(', ');
    lines.push(`  ${s.step.padEnd(12)} ${String(s.docsIn).padStart(9)} → ${String(s.docsOut).padEnd(9)} docs${removed ? `  removed: ${removed}` : ''}${notes ? `  (${notes})` : ''}`);
  }
  lines.push(`  pii masked: ${Object.entries(r.pii).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  for (const m of r.mix) lines.push(`  mix ${m.name}: ${(m.share * 100).toFixed(1)} % of characters (target ${(m.targetShare * 100).toFixed(1)} %), ${m.documents} docs, kept ${(m.keepProbability * 100).toFixed(1)} %`);
  lines.push(`  split: train ${r.split.train.documents} docs / ${r.split.train.tokens} tokens, held out ${r.split.heldOut.documents} docs / ${r.split.heldOut.tokens} tokens; tokenizer ${r.tokenizer.trained ? 'trained' : 'reused'}, vocab ${r.tokenizer.vocabSize}`);
  return lines.join('\n');
}
