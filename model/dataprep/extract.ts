/**
 * Documents out of source files, by extension: .txt and .jsonl by model/corpus-reader.ts, the reader a job's
 * corpus goes through too (documents separated by blank lines; one object per line with the text in a configurable
 * field, a malformed line counted and skipped; a byte-order mark dropped; blank documents skipped), and
 * .md/.markdown and .html/.htm (one document per file, markup stripped, a byte-order mark dropped). A folder is read
 * recursively, files in sorted order, so a run is reproducible.
 *
 * .txt and .jsonl are streamed line by line; a Markdown or HTML file is read whole (one document), so a single
 * such file must fit in memory — the corpus as a whole need not.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';
import { isBlankDocument, readCorpusFile, stripBom, type CorpusReadStats } from '../corpus-reader.ts';
import { ModelError } from '../errors.ts';

export const SOURCE_EXTENSIONS = ['.txt', '.jsonl', '.md', '.markdown', '.html', '.htm'] as const;

export interface ExtractCounters extends CorpusReadStats {
  /** Navigation lines (only links and separators) dropped from HTML. */
  linkLines: number;
  files: number;
}

export const newExtractCounters = (): ExtractCounters => ({ bytes: 0, malformedLines: 0, linkLines: 0, files: 0 });

/** The readable files of a source path, sorted; MDL_ERR_DATA_INPUT when it is missing or holds none. */
export function listSourceFiles(path: string): string[] {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    throw new ModelError('MDL_ERR_DATA_INPUT', `${path}: cannot read the source (${(err as Error).message})`, { cause: err });
  }
  const supported = (f: string) => (SOURCE_EXTENSIONS as readonly string[]).includes(extname(f).toLowerCase());
  if (st.isFile()) {
    if (!supported(path)) throw new ModelError('MDL_ERR_DATA_INPUT', `${path}: unsupported file type; use ${SOURCE_EXTENSIONS.join(', ')}`);
    return [path];
  }
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      if (e.name.startsWith('.')) continue;
      if (e.isDirectory()) walk(join(dir, e.name));
      else if (e.isFile() && supported(e.name)) files.push(join(dir, e.name));
    }
  };
  walk(path);
  if (files.length === 0) throw new ModelError('MDL_ERR_DATA_INPUT', `${path}: the folder holds no ${SOURCE_EXTENSIONS.join('/')} files`);
  return files;
}

/** Every document of `files`, extracted to plain text (not yet normalized). */
export async function* extractDocuments(files: readonly string[], textField: string, counters: ExtractCounters): AsyncGenerator<string> {
  for (const file of files) {
    counters.files++;
    const ext = extname(file).toLowerCase();
    if (ext === '.txt' || ext === '.jsonl') {
      yield* readCorpusFile(file, ext === '.jsonl' ? 'jsonl' : 'txt', counters, textField);
      continue;
    }
    const raw = readFileSync(file, 'utf8');
    counters.bytes += Buffer.byteLength(raw);
    const body = stripBom(raw);
    const text = ext === '.html' || ext === '.htm' ? htmlToText(body, counters) : markdownToText(body);
    if (!isBlankDocument(text)) yield text;
  }
}

/** Elements whose whole content is chrome or code, not text. */
const DROPPED_ELEMENTS = ['script', 'style', 'noscript', 'template', 'svg', 'iframe', 'nav', 'header', 'footer', 'aside', 'form', 'button', 'select'];
const BLOCK_TAGS = /<\/?(?:p|div|br|hr|li|ul|ol|h[1-6]|tr|td|th|table|section|article|main|blockquote|pre|dd|dt|dl|figure|figcaption)\b[^>]*>/gi;
const LINK_OPEN = '\u0001';
const LINK_CLOSE = '\u0002';

/** HTML → text: chrome elements dropped, block elements become line breaks, entities decoded, link-only lines removed. */
export function htmlToText(html: string, counters?: Pick<ExtractCounters, 'linkLines'>): string {
  let s = html.replace(/<!--[\s\S]*?-->/g, ' ').replace(/<!DOCTYPE[^>]*>/gi, ' ');
  for (const tag of DROPPED_ELEMENTS) s = s.replace(new RegExp(`<${tag}\\b[^>]*>[\\s\\S]*?</${tag}\\s*>`, 'gi'), '\n');
  s = s.replace(/<(?:script|style)\b[^>]*>[\s\S]*$/i, ''); // an unclosed script runs to the end
  s = s.replace(/<title\b[^>]*>[\s\S]*?<\/title\s*>/gi, '\n');
  s = s.replace(BLOCK_TAGS, '\n');
  // Mark link text so a line made only of links (a menu, breadcrumbs, "Share | Tweet") can be recognized below.
  s = s.replace(/<a\b[^>]*>/gi, LINK_OPEN).replace(/<\/a\s*>/gi, LINK_CLOSE);
  s = s.replace(/<[^>]*>/g, ' ');
  s = decodeEntities(s);
  const out: string[] = [];
  for (const rawLine of s.split('\n')) {
    const line = rawLine.replace(/[ \t\f\v\u00a0]+/g, ' ').trim();
    if (line === '') continue;
    if (line.includes(LINK_OPEN)) {
      const outside = line.replace(/\u0001[^\u0002]*\u0002?/g, '');
      if (/^[\s|·•»«/\\>:,–—-]*$/.test(outside)) {
        if (counters) counters.linkLines++;
        continue;
      }
    }
    out.push(line.replace(/[\u0001\u0002]/g, ''));
  }
  return out.join('\n');
}

const NAMED_ENTITIES: Record<string, string> = {
  amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: ' ', copy: '©', reg: '®', trade: '™', hellip: '…',
  mdash: '—', ndash: '–', lsquo: '‘', rsquo: '’', ldquo: '“', rdquo: '”', laquo: '«', raquo: '»', middot: '·',
  bull: '•', eacute: 'é', egrave: 'è', agrave: 'à', uuml: 'ü', ouml: 'ö', auml: 'ä', szlig: 'ß', euro: '€', pound: '£',
};

export function decodeEntities(s: string): string {
  return s.replace(/&(#x[0-9a-f]{1,6}|#\d{1,7}|[a-z]{2,8});/gi, (m, body: string) => {
    if (body[0] === '#') {
      const cp = body[1] === 'x' || body[1] === 'X' ? parseInt(body.slice(2), 16) : parseInt(body.slice(1), 10);
      return cp > 0 && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff) ? String.fromCodePoint(cp) : ' ';
    }
    return NAMED_ENTITIES[body.toLowerCase()] ?? m;
  });
}

/** Markdown → text, lightly: text kept, link targets, image URLs, fence markers, heading/quote marks and emphasis dropped. */
export function markdownToText(md: string): string {
  const out: string[] = [];
  for (let line of md.replace(/^---\n[\s\S]*?\n---\n/, '').split(/\r?\n/)) {
    if (/^\s*(```|~~~)/.test(line)) continue; // the code stays, its fences go
    if (/^\s{0,3}\[[^\]]+\]:\s*\S+/.test(line)) continue; // a reference link definition
    if (/^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(line)) continue; // a rule
    line = line
      .replace(/^\s{0,3}#{1,6}\s+/, '')
      .replace(/^\s{0,3}(>\s?)+/, '')
      .replace(/!\[([^\]]*)\]\([^)]*\)/g, '$1')
      .replace(/\[([^\]]+)\]\([^)]*\)/g, '$1')
      .replace(/\[([^\]]+)\]\[[^\]]*\]/g, '$1')
      .replace(/<https?:\/\/[^>]+>/g, '')
      .replace(/<\/?[a-z][^>]*>/gi, '')
      .replace(/(\*\*|__)(?=\S)(.+?)(?<=\S)\1/g, '$2')
      .replace(/(^|[^\w*])[*_](?=\S)(.+?)(?<=\S)[*_](?!\w)/g, '$1$2')
      .replace(/`([^`]+)`/g, '$1');
    out.push(line);
  }
  return decodeEntities(out.join('\n'));
}
