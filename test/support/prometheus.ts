/**
 * Reading Prometheus text exposition in tests with an independent parser (parse-prometheus-text-format, not
 * prom-client's own code), plus the checks it leaves out, so a test that parses /metrics also fails on values that
 * are not numbers, families without a TYPE, families split in two, and inconsistent histograms.
 *
 * The parser's prom2json-style output cannot represent a labelled histogram: its flattening keeps one bucket map
 * for the whole family and drops `_sum` and `_count` lines that carry labels. So histograms and summaries are read
 * from a second pass of the same parser over the same text with their TYPE lines saying `untyped`, where every
 * `_bucket`, `_sum` and `_count` line comes back as a plain sample with all its labels; the series are assembled
 * from those here.
 */
import parsePrometheusTextFormat, { type PromFamily } from 'parse-prometheus-text-format';

export interface Series {
  labels: Record<string, string>;
  value?: number; // counters, gauges
  buckets?: Array<[le: number, cumulative: number]>; // histograms, by upper bound
  count?: number; // histograms, summaries
  sum?: number;
}

export interface Family {
  name: string;
  help: string;
  type: Exclude<PromFamily['type'], 'UNTYPED'>;
  series: Series[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
/** What Go's strconv.ParseFloat takes, which the format defers to: special values in any case ("Nan" from prom-client too). */
const FLOAT = /^[+-]?(?:inf|infinity|nan|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)$/i;

/** A sample value as a number ("+Inf" → Infinity); throws on anything the format does not allow. */
export function promNumber(text: string | undefined, where = 'value'): number {
  if (text === undefined || !FLOAT.test(text)) throw new Error(`${where}: '${text}' is not a Prometheus float`);
  const t = text.toLowerCase();
  if (t.endsWith('nan')) return NaN;
  if (t.endsWith('inf') || t.endsWith('infinity')) return t.startsWith('-') ? -Infinity : Infinity;
  return Number(text);
}

/** Parses an exposition and checks it strictly; throws with the reason on the first problem. */
export function parseExposition(text: string): Map<string, Family> {
  const parsed = parsePrometheusTextFormat(text); // throws on a malformed line
  const raw = new Map<string, PromFamily['metrics']>();
  for (const f of parsePrometheusTextFormat(text.replace(/^# TYPE (\S+) (?:histogram|summary)$/gm, '# TYPE $1 untyped'))) {
    raw.set(f.name, [...(raw.get(f.name) ?? []), ...f.metrics]);
  }
  const families = new Map<string, Family>();
  for (const f of parsed) {
    if (!METRIC_NAME.test(f.name)) throw new Error(`family name '${f.name}' is not a valid metric name`);
    if (families.has(f.name)) throw new Error(`family ${f.name} appears twice (its samples are not grouped together)`);
    if (f.type === 'UNTYPED') throw new Error(`family ${f.name} has no # TYPE line`);
    const series = f.type === 'HISTOGRAM' || f.type === 'SUMMARY' ? distributions(f.name, f.type, raw) : f.metrics.map((s) => ({ labels: s.labels ?? {}, value: promNumber(s.value, f.name) }));
    for (const s of series) for (const label of Object.keys(s.labels)) if (!LABEL_NAME.test(label)) throw new Error(`${f.name}: label name '${label}' is invalid`);
    families.set(f.name, { name: f.name, help: f.help, type: f.type, series });
  }
  return families;
}

/** A histogram's or summary's series, from its raw `_bucket`/quantile, `_sum` and `_count` samples. */
function distributions(name: string, type: 'HISTOGRAM' | 'SUMMARY', raw: Map<string, PromFamily['metrics']>): Series[] {
  const split = type === 'HISTOGRAM' ? 'le' : 'quantile';
  const byLabels = new Map<string, Series>();
  const seriesOf = (labels: Record<string, string> = {}): Series => {
    const rest = Object.fromEntries(Object.entries(labels).filter(([k]) => k !== split).sort(([a], [b]) => a.localeCompare(b)));
    const key = JSON.stringify(rest);
    let s = byLabels.get(key);
    if (!s) byLabels.set(key, (s = { labels: rest, ...(type === 'HISTOGRAM' ? { buckets: [] } : {}) }));
    return s;
  };
  if (type === 'HISTOGRAM') {
    for (const b of raw.get(`${name}_bucket`) ?? []) {
      const le = b.labels?.le;
      if (le === undefined) throw new Error(`${name}_bucket without an le label`);
      seriesOf(b.labels).buckets!.push([promNumber(le, `${name} le`), promNumber(b.value, `${name}_bucket`)]);
    }
  }
  for (const c of raw.get(`${name}_count`) ?? []) seriesOf(c.labels).count = promNumber(c.value, `${name}_count`);
  for (const c of raw.get(`${name}_sum`) ?? []) seriesOf(c.labels).sum = promNumber(c.value, `${name}_sum`);
  for (const s of byLabels.values()) {
    const where = `${name}${JSON.stringify(s.labels)}`;
    if (s.count === undefined || s.sum === undefined) throw new Error(`${where}: no _count or no _sum`);
    if (!s.buckets) continue;
    s.buckets.sort((a, b) => a[0] - b[0]);
    const top = s.buckets.at(-1);
    if (top?.[0] !== Infinity) throw new Error(`${where}: no +Inf bucket`);
    if (top[1] !== s.count) throw new Error(`${where}: the +Inf bucket (${top[1]}) differs from _count (${s.count})`);
    s.buckets.forEach(([le, n], i) => {
      if (i > 0 && n < s.buckets![i - 1]![1]) throw new Error(`${where}: bucket le=${le} holds fewer than the one below it (buckets are cumulative)`);
    });
  }
  return [...byLabels.values()];
}

/** Fetches `url` (a /metrics endpoint), checks the content type, and parses it strictly. */
export async function scrape(url: string): Promise<{ text: string; families: Map<string, Family> }> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status}`);
  const type = res.headers.get('content-type') ?? '';
  if (!type.startsWith('text/plain') || !type.includes('version=0.0.4')) throw new Error(`GET ${url}: content-type ${type} is not text exposition 0.0.4`);
  const text = await res.text();
  return { text, families: parseExposition(text) };
}

/** The series of `family` whose labels include `match` (every series when it is empty); throws if there is no such family. */
export function seriesOf(families: Map<string, Family>, family: string, match: Record<string, string> = {}): Series[] {
  const f = families.get(family);
  if (!f) throw new Error(`no family ${family}; there are ${[...families.keys()].join(', ')}`);
  return f.series.filter((s) => Object.entries(match).every(([k, v]) => s.labels[k] === v));
}

/** The value of the one series of `family` matching `match` (a histogram's or summary's: its count). */
export function valueOf(families: Map<string, Family>, family: string, match: Record<string, string> = {}): number {
  const found = seriesOf(families, family, match);
  if (found.length !== 1) throw new Error(`${family}${JSON.stringify(match)}: ${found.length} series, expected 1`);
  return found[0]!.value ?? found[0]!.count!;
}
