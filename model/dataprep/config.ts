/**
 * The settings of one data-preparation run (`coordinator data prepare`, pipeline.ts): defaults with a comment
 * each, checked once by `resolveDataPrepConfig` (unknown keys and out-of-range values rejected with the setting
 * named), then frozen and saved in report.json.
 */
import { ModelError } from '../errors.ts';

export interface SourceConfig {
  /** Name in the report and the mix (letters, digits, _ . -). */
  name: string;
  /** A .txt/.jsonl/.md/.markdown/.html/.htm file, or a folder read recursively in sorted order. */
  path: string;
  /** Target share of the output's characters; normalized over the sources. null: keep the source as it comes. */
  ratio: number | null;
  /** The JSONL field that holds a document's text. */
  textField: string;
}

export interface FilterConfig {
  minChars: number; // shorter documents say too little to learn from
  maxChars: number; // longer ones are usually dumps (logs, tables), not prose
  minWords: number;
  minLetterShare: number; // letters among non-space characters
  maxDigitShare: number; // digits among non-space characters: tables, logs
  maxSymbolShare: number; // punctuation and symbols among non-space characters: code dumps, ASCII art
  maxControlShare: number; // control characters removed by normalization, per character: binary junk
  maxRepeatedLineShare: number; // characters in lines that repeat an earlier line of the same document
  minMeanWordLength: number;
  maxMeanWordLength: number;
}

export interface DataPrepConfig {
  sources: SourceConfig[];
  outDir: string;
  /** Vocabulary of the BPE tokenizer trained on the train split; ignored when `tokenizer` is given. */
  vocabSize: number;
  /** A tokenizer.json to reuse instead of training one. */
  tokenizer: string | null;
  /** Share of the mixed documents held out for evaluation, in [0, 1). */
  heldOutFraction: number;
  /** Seeds the held-out split, the mix's down-sampling and the MinHash permutations. */
  seed: number;
  /** Estimated Jaccard similarity of word shingles at or above which a document is a near-duplicate of a kept one. */
  nearDupThreshold: number;
  /** MinHash permutations; more estimate Jaccard better and cost time linearly. */
  numPerm: number;
  /** Words per shingle. */
  shingleWords: number;
  /** A line is boilerplate when it appears in at least this many distinct documents of its source… */
  boilerplateMinDocs: number;
  /** …and in at least this share of them. */
  boilerplateMinShare: number;
  filters: FilterConfig;
  /** Keep the mixed, cleaned documents as cleaned.jsonl ({"text", "source"} per line) in outDir. */
  keepCleaned: boolean;
  tokensPerShard: number;
}

export const DEFAULT_FILTERS: Readonly<FilterConfig> = Object.freeze({
  minChars: 64,
  maxChars: 1_000_000,
  minWords: 8,
  minLetterShare: 0.55,
  maxDigitShare: 0.25,
  maxSymbolShare: 0.2,
  maxControlShare: 0.01,
  maxRepeatedLineShare: 0.3,
  minMeanWordLength: 2.5,
  maxMeanWordLength: 12,
});

export const DEFAULT_DATAPREP: Readonly<Omit<DataPrepConfig, 'sources' | 'outDir' | 'filters'>> = Object.freeze({
  vocabSize: 4096,
  tokenizer: null,
  heldOutFraction: 0.05,
  seed: 1337,
  nearDupThreshold: 0.8,
  numPerm: 128,
  shingleWords: 5,
  boilerplateMinDocs: 10,
  boilerplateMinShare: 0.005,
  keepCleaned: false,
  tokensPerShard: 1 << 24,
});

type SourceInput = Partial<SourceConfig> & { name: string; path: string };
export type DataPrepInput = Partial<Omit<DataPrepConfig, 'sources' | 'filters'>> & {
  sources: SourceInput[];
  outDir: string;
  filters?: Partial<FilterConfig>;
};

/** Checks `input`, fills in defaults and freezes the result; anything wrong is MDL_ERR_DATAPREP_CONFIG naming the setting. */
export function resolveDataPrepConfig(input: DataPrepInput): Readonly<DataPrepConfig> {
  const bad = (msg: string): never => {
    throw new ModelError('MDL_ERR_DATAPREP_CONFIG', msg);
  };
  if (typeof input !== 'object' || input === null) bad('the configuration must be an object');
  const known = new Set([...Object.keys(DEFAULT_DATAPREP), 'sources', 'outDir', 'filters']);
  for (const k of Object.keys(input)) if (!known.has(k)) bad(`unknown setting '${k}'; known: ${[...known].sort().join(', ')}`);
  const filtersIn = input.filters ?? {};
  for (const k of Object.keys(filtersIn)) if (!(k in DEFAULT_FILTERS)) bad(`unknown filter '${k}'; known: ${Object.keys(DEFAULT_FILTERS).join(', ')}`);
  const cfg: DataPrepConfig = {
    ...DEFAULT_DATAPREP,
    ...input,
    filters: { ...DEFAULT_FILTERS, ...filtersIn },
    sources: [],
  };
  const num = (v: unknown, name: string, lo: number, hi: number, int = false) => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi || (int && !Number.isInteger(v))) {
      bad(`${name} must be ${int ? 'an integer' : 'a number'} in [${lo}, ${hi}], got ${JSON.stringify(v)}`);
    }
  };
  if (typeof cfg.outDir !== 'string' || cfg.outDir === '') bad('outDir (--out DIR) is required');
  num(cfg.vocabSize, 'vocabSize', 258, 1 << 20, true);
  num(cfg.heldOutFraction, 'heldOutFraction', 0, 0.5);
  num(cfg.seed, 'seed', -(2 ** 31), 2 ** 32, true);
  num(cfg.nearDupThreshold, 'nearDupThreshold', 0.05, 1);
  num(cfg.numPerm, 'numPerm', 8, 1024, true);
  num(cfg.shingleWords, 'shingleWords', 1, 32, true);
  num(cfg.boilerplateMinDocs, 'boilerplateMinDocs', 2, 2 ** 31, true);
  num(cfg.boilerplateMinShare, 'boilerplateMinShare', 0, 1);
  num(cfg.tokensPerShard, 'tokensPerShard', 1, 2 ** 31, true);
  if (cfg.tokenizer !== null && typeof cfg.tokenizer !== 'string') bad('tokenizer must be a path to a tokenizer.json');
  if (typeof cfg.keepCleaned !== 'boolean') bad('keepCleaned must be true or false');
  for (const [k, v] of Object.entries(cfg.filters)) num(v, `filters.${k}`, 0, k === 'maxChars' || k === 'minChars' || k === 'minWords' ? 2 ** 31 : k.endsWith('Length') ? 1000 : 1);
  if (cfg.filters.minChars > cfg.filters.maxChars) bad(`filters.minChars (${cfg.filters.minChars}) is above filters.maxChars (${cfg.filters.maxChars})`);

  if (!Array.isArray(input.sources) || input.sources.length === 0) bad('at least one source (--source NAME=PATH[:RATIO]) is required');
  const names = new Set<string>();
  for (const s of input.sources) {
    if (typeof s !== 'object' || s === null) bad('each source must be an object with name and path');
    for (const k of Object.keys(s)) if (!['name', 'path', 'ratio', 'textField'].includes(k)) bad(`unknown source setting '${k}' in source ${JSON.stringify(s.name)}`);
    if (typeof s.name !== 'string' || !/^[\w.-]{1,64}$/.test(s.name)) bad(`source name ${JSON.stringify(s.name)} must be 1–64 letters, digits, _ . -`);
    if (names.has(s.name)) bad(`source name '${s.name}' is used twice`);
    names.add(s.name);
    if (typeof s.path !== 'string' || s.path === '') bad(`source '${s.name}' needs a path`);
    const ratio = s.ratio ?? null;
    if (ratio !== null && (typeof ratio !== 'number' || !Number.isFinite(ratio) || ratio <= 0)) {
      bad(`source '${s.name}': ratio must be a positive number, got ${JSON.stringify(s.ratio)}`);
    }
    const textField = s.textField ?? 'text';
    if (typeof textField !== 'string' || textField === '') bad(`source '${s.name}': textField must be a non-empty string`);
    cfg.sources.push(Object.freeze({ name: s.name, path: s.path, ratio, textField }));
  }
  const withRatio = cfg.sources.filter((s) => s.ratio !== null).length;
  if (withRatio !== 0 && withRatio !== cfg.sources.length) {
    bad(`either every source has a ratio or none does; missing on ${cfg.sources.filter((s) => s.ratio === null).map((s) => s.name).join(', ')}`);
  }
  Object.freeze(cfg.filters);
  Object.freeze(cfg.sources);
  return Object.freeze(cfg);
}
