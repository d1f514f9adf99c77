/**
 * The data-preparation pipeline behind `coordinator data prepare` (coordinator/cli/data-prepare.ts):
 *
 *   per source: extract → boilerplate → normalize → PII mask → quality filters → exact dedup → near dedup → spill
 *   then:       mix the spills by ratio → cleaned.jsonl → BPE tokenizer (trained on the train split, or reused)
 *               → token shards + index.json (model/data.ts's format, so a job can train on the folder) → report.json
 *
 * Streaming throughout: documents pass one at a time; what stays in memory is the per-run de-duplication state
 * (dedup.ts: ~16 bytes per document for exact, ~240 bytes per kept document for near, off the JS heap), a 1.5 MB
 * line sketch per source (boilerplate.ts) and the writers' buffers. Each source is read twice — once to count its
 * repeated lines, once to clean it — and its cleaned documents wait in a JSONL spill file for the mix.
 * Tokenizer training is the exception: trainBpe keeps a table of the distinct words of the train split.
 */
import { once } from 'node:events';
import { createWriteStream, mkdirSync, readFileSync, rmSync, statSync, writeFileSync, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { writeTokenShards } from '../data.ts';
import { ModelError } from '../errors.ts';
import { trainingDocuments } from '../prepare-data.ts';
import { Tokenizer, trainBpe } from '../tokenizer.ts';
import { LineCounter, removeBoilerplate } from './boilerplate.ts';
import { resolveDataPrepConfig, type DataPrepConfig, type DataPrepInput } from './config.ts';
import { ExactDeduper, NearDeduper } from './dedup.ts';
import { extractDocuments, listSourceFiles, newExtractCounters } from './extract.ts';
import { checkQuality, normalizeText } from './filters.ts';
import { mixSpills, planMix } from './mix.ts';
import { maskPii, newPiiCounts } from './pii.ts';
import { StepCounter, type DataPrepReport, type MixReport, type SourceReport, type StepName } from './report.ts';

export interface DataPrepProgress {
  /** 'count' (pass 1a: repeated lines), 'clean' (pass 1b), 'mix', 'tokenizer', 'shards'. */
  phase: 'count' | 'clean' | 'mix' | 'tokenizer' | 'shards';
  source: string | null;
  documents: number;
  /** Input bytes read in this phase so far, and in all (null when unknown). */
  bytes: number;
  bytesTotal: number | null;
  elapsedMs: number;
}

export interface DataPrepOptions {
  onProgress?: (p: DataPrepProgress) => void;
}

const STEPS: StepName[] = ['extract', 'boilerplate', 'normalize', 'pii', 'filter', 'exact_dedup', 'near_dedup', 'mix'];

/** Runs the whole pipeline into `input.outDir`; returns (and writes as report.json) what each step did. */
export async function prepareData(input: DataPrepInput | DataPrepConfig, options: DataPrepOptions = {}): Promise<DataPrepReport> {
  const cfg = resolveDataPrepConfig(input as DataPrepInput);
  const started = performance.now();
  const timings: Record<string, number> = {};
  const lap = (name: string, t0: number) => (timings[name] = Math.round(performance.now() - t0));
  // Every source is listed up front, so a missing path fails before anything is written.
  const listed = cfg.sources.map((s) => {
    const files = listSourceFiles(s.path);
    return { files, bytes: files.reduce((n, f) => n + statSync(f).size, 0) };
  });
  const tokenizerGiven = cfg.tokenizer !== null ? loadTokenizer(cfg.tokenizer) : null;

  mkdirSync(cfg.outDir, { recursive: true });
  const tmp = join(cfg.outDir, `.dataprep-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  try {
    const steps = Object.fromEntries(STEPS.map((s) => [s, new StepCounter(s)])) as Record<StepName, StepCounter>;
    const pii = newPiiCounts();
    const exact = new ExactDeduper();
    const near = new NearDeduper({ threshold: cfg.nearDupThreshold, numPerm: cfg.numPerm, shingleWords: cfg.shingleWords, seed: cfg.seed });
    const sources: SourceReport[] = [];
    const spills: string[] = [];
    let progressAt = 0;
    const progress = (p: Omit<DataPrepProgress, 'elapsedMs'>, force = false) => {
      const now = performance.now();
      if (!options.onProgress || (!force && now - progressAt < 200)) return;
      progressAt = now;
      options.onProgress({ ...p, elapsedMs: now - started });
    };

    // Pass 1: clean each source into its spill file.
    const tClean = performance.now();
    for (const [si, src] of cfg.sources.entries()) {
      const { files, bytes } = listed[si]!;
      const lines = await countLines(files, src.textField, (documents, read) => progress({ phase: 'count', source: src.name, documents, bytes: read, bytesTotal: bytes }));
      const counters = newExtractCounters();
      const spillPath = join(tmp, `${si}.jsonl`);
      spills.push(spillPath);
      const spill = new JsonlWriter(spillPath);
      const report: SourceReport = { name: src.name, path: src.path, files: files.length, bytes, documents: 0, keptDocuments: 0, keptChars: 0 };
      for await (const raw of extractDocuments(files, src.textField, counters)) {
        report.documents++;
        steps.extract.in(raw.length);
        steps.extract.out(raw.length);
        progress({ phase: 'clean', source: src.name, documents: report.documents, bytes: counters.bytes, bytesTotal: bytes });
        const text = cleanOne(raw, cfg, lines, steps, pii, exact, near);
        if (text === null) continue;
        report.keptDocuments++;
        report.keptChars += text.length;
        await spill.write({ text });
      }
      await spill.close();
      // A malformed JSONL line is a document that came in and was removed by extraction.
      for (let i = 0; i < counters.malformedLines; i++) (steps.extract.in(0), steps.extract.remove('malformed_jsonl'));
      steps.extract.note('link_lines_dropped', counters.linkLines);
      sources.push(report);
    }
    lap('clean', tClean);

    // Pass 2: mix the spills into one JSONL of documents, in output order.
    const tMix = performance.now();
    const plan = planMix(cfg.sources.map((s, i) => ({ name: s.name, ratio: s.ratio, chars: sources[i]!.keptChars, documents: sources[i]!.keptDocuments })));
    const mixed = cfg.keepCleaned ? join(cfg.outDir, 'cleaned.jsonl') : join(tmp, 'cleaned.jsonl');
    const mix: MixReport[] = plan.map((p) => ({ ...p, documents: 0, chars: 0, share: 0 }));
    const out = new JsonlWriter(mixed);
    const spillInputs = plan.map((p, i) => ({ name: p.name, path: spills[i]!, keepProbability: p.keepProbability, expectedChars: sources[i]!.keptChars * p.keepProbability }));
    let mixedDocs = 0;
    for (const s of sources) for (let i = 0; i < s.keptDocuments; i++) steps.mix.in(0);
    steps.mix.report.charsIn = sources.reduce((n, s) => n + s.keptChars, 0);
    for await (const doc of mixSpills(spillInputs, cfg.seed, () => steps.mix.remove('downsampled'))) {
      steps.mix.out(doc.text.length);
      mix[doc.source]!.documents++;
      mix[doc.source]!.chars += doc.text.length;
      await out.write({ text: doc.text, source: cfg.sources[doc.source]!.name });
      progress({ phase: 'mix', source: null, documents: ++mixedDocs, bytes: 0, bytesTotal: null });
    }
    await out.close();
    const totalChars = mix.reduce((n, m) => n + m.chars, 0);
    for (const m of mix) m.share = totalChars ? m.chars / totalChars : 0;
    lap('mix', tMix);
    if (mixedDocs === 0) throw new ModelError('MDL_ERR_DATA_INPUT', 'no document survived cleaning; see the report of what each step removed (lower the filters, e.g. --min-chars)');

    // Tokenizer: reused, or trained on the documents writeTokenShards will put in the train split.
    const tTok = performance.now();
    const tokenizer = tokenizerGiven ?? await trainBpe(trainingDocuments(mixed, cfg.seed, cfg.heldOutFraction), {
      vocabSize: cfg.vocabSize,
      onProgress: (p) => progress({ phase: 'tokenizer', source: null, documents: p.texts, bytes: 0, bytesTotal: null }),
    });
    lap('tokenizer', tTok);
    const tShards = performance.now();
    const index = await writeTokenShards(mixed, {
      tokenizer,
      outDir: cfg.outDir,
      heldOutFraction: cfg.heldOutFraction,
      seed: cfg.seed,
      tokensPerShard: cfg.tokensPerShard,
      onProgress: (p) => progress({ phase: 'shards', source: null, documents: 0, bytes: p.bytesDone, bytesTotal: p.bytesTotal }),
    });
    lap('shards', tShards);

    const seconds = (performance.now() - started) / 1000;
    const bytesIn = sources.reduce((n, s) => n + s.bytes, 0);
    const report: DataPrepReport = {
      config: cfg,
      sources,
      steps: STEPS.map((s) => steps[s].report),
      pii,
      nearDup: { threshold: cfg.nearDupThreshold, numPerm: cfg.numPerm, bands: near.bands, rows: near.rows, shingleWords: cfg.shingleWords },
      mix,
      split: {
        train: { documents: index.splits.train.documents, tokens: index.splits.train.tokens },
        heldOut: { documents: index.splits.heldOut.documents, tokens: index.splits.heldOut.tokens },
      },
      tokenizer: { vocabSize: index.vocabSize, trained: tokenizerGiven === null, sha256: index.tokenizerSha256 },
      bytesIn,
      seconds,
      mbPerSecond: bytesIn / 1e6 / seconds,
      timingsMs: timings,
    };
    writeFileSync(join(cfg.outDir, 'report.json'), JSON.stringify(report, null, 2) + '\n');
    return report;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** One document through boilerplate → normalize → PII → filters → exact → near; the kept text, or null. */
function cleanOne(
  raw: string,
  cfg: DataPrepConfig,
  lines: LineCounter,
  steps: Record<StepName, StepCounter>,
  pii: Record<string, number>,
  exact: ExactDeduper,
  near: NearDeduper,
): string | null {
  steps.boilerplate.in(raw.length);
  const bp = removeBoilerplate(raw, lines, cfg.boilerplateMinDocs, cfg.boilerplateMinShare);
  steps.boilerplate.note('repeated_lines', bp.repeated);
  steps.boilerplate.note('phrase_lines', bp.phrase);
  if (bp.text.trim() === '') return (steps.boilerplate.remove('all_boilerplate'), null);
  steps.boilerplate.out(bp.text.length);

  steps.normalize.in(bp.text.length);
  const norm = normalizeText(bp.text);
  if (norm.text === '') return (steps.normalize.remove('empty'), null);
  steps.normalize.out(norm.text.length);

  steps.pii.in(norm.text.length);
  const masked = maskPii(norm.text);
  let found = 0;
  for (const [k, v] of Object.entries(masked.counts)) (pii[k] = pii[k]! + v), (found += v);
  if (found > 0) steps.pii.note('documents_masked');
  steps.pii.out(masked.text.length);
  const text = masked.text;

  steps.filter.in(text.length);
  const reason = checkQuality(text, norm.controlChars, cfg.filters);
  if (reason) return (steps.filter.remove(reason), null);
  steps.filter.out(text.length);

  steps.exact_dedup.in(text.length);
  if (exact.isDuplicate(text)) return (steps.exact_dedup.remove('exact_duplicate'), null);
  steps.exact_dedup.out(text.length);

  steps.near_dedup.in(text.length);
  if (near.isDuplicate(text)) return (steps.near_dedup.remove('near_duplicate'), null);
  steps.near_dedup.out(text.length);
  return text;
}

/** Pass 1a: the repeated lines of a source, counted once per distinct document. */
async function countLines(files: string[], textField: string, onProgress: (documents: number, bytes: number) => void): Promise<LineCounter> {
  const counter = new LineCounter();
  const distinct = new ExactDeduper();
  const counters = newExtractCounters();
  let docs = 0;
  for await (const raw of extractDocuments(files, textField, counters)) {
    onProgress(++docs, counters.bytes);
    if (!distinct.isDuplicate(raw)) counter.addDocument(raw);
  }
  return counter;
}

function loadTokenizer(path: string): Tokenizer {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ModelError('MDL_ERR_DATA_INPUT', `${path}: cannot read the tokenizer (${(err as Error).message})`, { cause: err });
  }
  return Tokenizer.fromJSON(text);
}

/** JSON lines to a file, waiting when the stream's buffer is full so a fast producer cannot fill memory. */
class JsonlWriter {
  #stream: WriteStream;
  #error: Error | null = null;

  constructor(path: string) {
    this.#stream = createWriteStream(path, { highWaterMark: 1 << 20 });
    this.#stream.on('error', (err) => (this.#error = err));
  }

  async write(obj: unknown): Promise<void> {
    if (this.#error) throw this.#error;
    if (!this.#stream.write(JSON.stringify(obj) + '\n')) await once(this.#stream, 'drain');
  }

  async close(): Promise<void> {
    this.#stream.end();
    await once(this.#stream, 'finish');
    if (this.#error) throw this.#error;
  }
}
