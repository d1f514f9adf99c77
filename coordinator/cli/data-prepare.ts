/**
 * coordinator data prepare --source NAME=PATH[:RATIO] … --out DIR [--vocab N | --tokenizer FILE] [--config prepare.json] …
 *
 * The command-line face of model/dataprep/pipeline.ts: options (or a JSON config file, options winning) become
 * one DataPrepConfig; a live progress line goes to stderr (rewritten in place on a terminal, a line every 5 s
 * otherwise), then a human summary on stderr and the whole report as JSON on stdout. Bad settings are usage
 * errors (exit 2) naming what to fix.
 */
import { readFileSync } from 'node:fs';
import { parseCli, UsageError } from '../../common/cli.ts';
import { ModelError } from '../../model/errors.ts';
import { DEFAULT_DATAPREP, DEFAULT_FILTERS, type DataPrepInput } from '../../model/dataprep/config.ts';
import { prepareData, type DataPrepProgress } from '../../model/dataprep/pipeline.ts';
import { summarizeReport } from '../../model/dataprep/report.ts';

export const DATA_HELP = `Usage: coordinator data prepare --source NAME=PATH[:RATIO] [--source …] --out DIR [options]

Cleans raw text into a training dataset: extracts .txt/.jsonl/.md/.html (a folder is read recursively), strips
markup and boilerplate, masks e-mails, phone numbers, IPs and card numbers, drops low-quality documents, exact and
near-duplicates, mixes the sources by ratio, holds out a share, trains (or reuses) a BPE tokenizer and writes token
shards. A job whose data.corpus is DIR trains on it as is. DIR/report.json says what each step removed.

Options:
  --source NAME=PATH[:RATIO]  a source (repeatable); RATIO: its target share of the output's characters
                              (normalized over the sources; give all or none)
  --out DIR                   output folder (shards, index.json, tokenizer.json, report.json)
  --vocab N                   vocabulary of the tokenizer to train (default: ${DEFAULT_DATAPREP.vocabSize})
  --tokenizer FILE            reuse this tokenizer.json instead of training one
  --near-dup-threshold X      Jaccard similarity of word 5-grams at which a document is a near-duplicate (default: ${DEFAULT_DATAPREP.nearDupThreshold})
  --held-out X                share of documents held out for evaluation (default: ${DEFAULT_DATAPREP.heldOutFraction})
  --seed N                    seeds the split, the mix and MinHash (default: ${DEFAULT_DATAPREP.seed})
  --min-chars N               drop shorter documents (default: ${DEFAULT_FILTERS.minChars})
  --max-chars N               drop longer documents (default: ${DEFAULT_FILTERS.maxChars})
  --text-field F              the JSONL field holding the text (default: text)
  --keep-cleaned              also write DIR/cleaned.jsonl, the cleaned documents in output order
  --config FILE               settings as JSON (the DataPrepConfig of model/dataprep/config.ts); options override it
  --json                      print only the JSON report on stdout, no summary
`;

/** Runs `coordinator data …` with the arguments after 'data'; returns the exit code. */
export async function dataCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseCli(argv, {
    source: { type: 'string', multiple: true },
    out: { type: 'string' },
    vocab: { type: 'string' },
    tokenizer: { type: 'string' },
    'near-dup-threshold': { type: 'string' },
    'held-out': { type: 'string' },
    seed: { type: 'string' },
    'min-chars': { type: 'string' },
    'max-chars': { type: 'string' },
    'text-field': { type: 'string' },
    'keep-cleaned': { type: 'boolean' },
    config: { type: 'string' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return (process.stdout.write(DATA_HELP), 0);
  if (positionals[0] !== 'prepare' || positionals.length !== 1) {
    throw new UsageError(positionals.length === 0 ? "'data' needs a subcommand: prepare" : `unknown data subcommand '${positionals.join(' ')}'; try 'coordinator data prepare --help'`);
  }
  const input = readConfigFile(values.config);
  const number = (v: string | undefined, name: string): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got '${v}'`);
    return n;
  };
  if (values.source) input.sources = values.source.map((s) => parseSource(s, values['text-field']));
  else if (values['text-field']) input.sources = (input.sources ?? []).map((s) => ({ ...s, textField: values['text-field'] }));
  if (values.out !== undefined) input.outDir = values.out;
  if (values.tokenizer !== undefined) input.tokenizer = values.tokenizer;
  if (values['keep-cleaned']) input.keepCleaned = true;
  const set = <K extends keyof DataPrepInput>(k: K, v: DataPrepInput[K] | undefined) => v !== undefined && (input[k] = v);
  set('vocabSize', number(values.vocab, 'vocab'));
  set('nearDupThreshold', number(values['near-dup-threshold'], 'near-dup-threshold'));
  set('heldOutFraction', number(values['held-out'], 'held-out'));
  set('seed', number(values.seed, 'seed'));
  const minChars = number(values['min-chars'], 'min-chars'), maxChars = number(values['max-chars'], 'max-chars');
  if (minChars !== undefined || maxChars !== undefined) input.filters = { ...input.filters, ...(minChars !== undefined && { minChars }), ...(maxChars !== undefined && { maxChars }) };
  if (!input.sources?.length) throw new UsageError('at least one --source NAME=PATH[:RATIO] is required');
  if (!input.outDir) throw new UsageError('--out DIR is required');

  const tty = process.stderr.isTTY;
  let lastLine = 0;
  const onProgress = (p: DataPrepProgress) => {
    const now = performance.now();
    if (!tty && now - lastLine < 5000) return;
    lastLine = now;
    const line = progressLine(p);
    process.stderr.write(tty ? `\r\x1b[2K${line}` : `${line}\n`);
  };
  let report;
  try {
    report = await prepareData(input as DataPrepInput, { onProgress });
  } catch (err) {
    if (err instanceof ModelError && err.code === 'MDL_ERR_DATAPREP_CONFIG') throw new UsageError(`${err.code}: ${err.message}`);
    if (err instanceof ModelError) throw new Error(`${err.code}: ${err.message}`, { cause: err });
    throw err;
  } finally {
    if (tty) process.stderr.write('\r\x1b[2K');
  }
  if (!values.json) process.stderr.write(summarizeReport(report) + '\n');
  process.stdout.write(JSON.stringify(report) + '\n');
  return 0;
}

/** NAME=PATH[:RATIO]; a path may hold ':' (the ratio is only a trailing :number). */
export function parseSource(text: string, textField?: string): NonNullable<DataPrepInput['sources']>[number] {
  const m = /^([\w.-]+)=(.+?)(?::([^:/\\]*))?$/.exec(text);
  if (!m) throw new UsageError(`--source '${text}' must be NAME=PATH or NAME=PATH:RATIO, e.g. web=./crawl:0.7`);
  const [, name, path, ratioText] = m;
  let ratio: number | undefined;
  if (ratioText !== undefined) {
    ratio = Number(ratioText);
    if (ratioText.trim() === '' || !Number.isFinite(ratio) || ratio <= 0) throw new UsageError(`--source ${name}: ratio must be a positive number, got '${ratioText}'`);
  }
  return { name: name!, path: path!, ...(ratio !== undefined && { ratio }), ...(textField !== undefined && { textField }) };
}

function readConfigFile(path: string | undefined): Partial<DataPrepInput> {
  if (path === undefined) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UsageError(`--config ${path}: cannot read it as JSON (${(err as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new UsageError(`--config ${path}: must hold a JSON object`);
  return parsed as Partial<DataPrepInput>;
}

function progressLine(p: DataPrepProgress): string {
  const s = p.elapsedMs / 1000;
  const mb = p.bytes / 1e6;
  const of = p.bytesTotal ? `/${(p.bytesTotal / 1e6).toFixed(1)}` : '';
  const rate = p.phase === 'count' || p.phase === 'clean' || p.phase === 'shards' ? `, ${mb.toFixed(1)}${of} MB` : '';
  return `${p.phase}${p.source ? ` ${p.source}` : ''}: ${p.documents} docs${rate} (${s.toFixed(0)} s)`;
}
