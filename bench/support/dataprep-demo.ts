/**
 * The data-preparation measurement for the benchmark: plants exact duplicates, near-duplicates, personal data and
 * distractors in a generated corpus (test/support/planted-corpus.ts), runs the same pipeline the CLI runs
 * (model/dataprep/pipeline.ts) and scores the output against what was planted.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prepareData } from '../../model/dataprep/pipeline.ts';
import { tagOf, writePlantedCorpus, type PlantedOptions } from '../../test/support/planted-corpus.ts';

export interface DataPrepMeasurement {
  /** Near-duplicate copies removed / planted. */
  dedup_recall: number;
  /** Planted personal-data strings absent from the output / planted. */
  pii_recall: number;
  /** Exact copies (verbatim, case and whitespace variants) removed / planted. */
  exact_dup_recall: number;
  /** Distinct planted documents missing from the output. */
  false_removals: number;
  /** Distractors (years, prices, versions, ISBN-like numbers, dates) changed or missing in the output. */
  false_masks: number;
  docs_in: number;
  docs_out: number;
  seconds: number;
}

export async function measureDataPrep(opts: { seed?: number; workDir?: string; corpus?: PlantedOptions } = {}): Promise<DataPrepMeasurement> {
  const dir = opts.workDir ?? mkdtempSync(join(tmpdir(), 'dataprep-bench-'));
  try {
    const planted = writePlantedCorpus(join(dir, 'in'), { seed: opts.seed ?? 7, ...opts.corpus });
    const out = join(dir, 'out');
    const report = await prepareData({ sources: planted.sources, outDir: out, vocabSize: 320, keepCleaned: true, seed: opts.seed ?? 1337 });
    const docs = readFileSync(join(out, 'cleaned.jsonl'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { text: string }).text);
    const perTag = new Map<string, number>();
    for (const d of docs) perTag.set(tagOf(d)!, (perTag.get(tagOf(d)!) ?? 0) + 1);
    const exactRemoved = report.steps.find((s) => s.step === 'exact_dedup')!.removed.exact_duplicate ?? 0;
    // Copies still in the output: documents beyond one per distinct tag (exact ones are scored by the report's count).
    const extra = [...perTag.values()].reduce((n, c) => n + c - 1, 0);
    const all = docs.join('\n');
    return {
      dedup_recall: 1 - Math.max(0, extra - (planted.exactCopies - exactRemoved)) / planted.nearCopies,
      pii_recall: planted.piiValues.filter((v) => !all.includes(v)).length / planted.piiValues.length,
      exact_dup_recall: exactRemoved / planted.exactCopies,
      false_removals: planted.tags.filter((t) => !perTag.has(t)).length,
      false_masks: planted.distractors.filter((v) => !all.includes(v)).length,
      docs_in: report.steps[0]!.docsIn,
      docs_out: docs.length,
      seconds: report.seconds,
    };
  } finally {
    if (!opts.workDir) rmSync(dir, { recursive: true, force: true });
  }
}
