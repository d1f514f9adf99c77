/**
 * Documents out of a .txt or .jsonl corpus file: the one reader behind a job's corpus (data.ts, writeTokenShards)
 * and `coordinator data prepare` (dataprep/extract.ts), so the same file gives both the same documents. The rules:
 *
 *   - The file is UTF-8; a byte-order mark at its start is dropped (it is not text).
 *   - A line ends at \n, \r\n or \r; the line break is not part of the text.
 *   - .txt: documents are separated by lines that are empty or only whitespace; a document is its lines as they
 *     are, joined with \n.
 *   - .jsonl: one JSON object per line, the document in its string field `textField` ("text" unless the source
 *     says otherwise); lines that are empty or only whitespace are passed over. A line that is not JSON, or has no
 *     string `textField`, is skipped and counted (`malformedLines`; `firstMalformed` names its file, line number and
 *     fault), so one stray line in a large scraped file does not sink a run, and the count is reported.
 *   - A document that is empty or only whitespace is skipped (isBlankDocument).
 *
 * Read line by line, so a file of any size streams through.
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';

export type CorpusFormat = 'txt' | 'jsonl';

/** What reading counted, added to as documents are read. */
export interface CorpusReadStats {
  /** Raw input consumed, UTF-8 bytes (each line's bytes plus one for its line break). */
  bytes: number;
  /** JSONL lines skipped because they are not JSON or lack the string text field. */
  malformedLines: number;
  /** The first of them, as `file:line: fault`. */
  firstMalformed?: string;
}

export const newCorpusReadStats = (): CorpusReadStats => ({ bytes: 0, malformedLines: 0 });

/** The format of a corpus file by its extension (any case), or undefined for another file. */
export function corpusFormat(path: string): CorpusFormat | undefined {
  return /\.txt$/i.test(path) ? 'txt' : /\.jsonl$/i.test(path) ? 'jsonl' : undefined;
}

/** Whether a document has no text worth training on: empty or only whitespace. */
export const isBlankDocument = (text: string): boolean => text.trim() === '';

/** `text` without a leading byte-order mark. */
export const stripBom = (text: string): string => (text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);

/** Every document of the corpus file `path`, by the rules above; `stats` is added to as it reads. */
export async function* readCorpusFile(path: string, format: CorpusFormat, stats: CorpusReadStats, textField = 'text'): AsyncGenerator<string> {
  const lines = createInterface({ input: createReadStream(path, { encoding: 'utf8', highWaterMark: 1 << 16 }), crlfDelay: Infinity });
  let paragraph: string[] = [];
  let lineNo = 0;
  for await (const raw of lines) {
    stats.bytes += Buffer.byteLength(raw) + 1;
    const line = lineNo++ === 0 ? stripBom(raw) : raw;
    if (format === 'jsonl') {
      if (line.trim() === '') continue;
      let text: unknown;
      let fault = `no string "${textField}"`;
      try {
        text = (JSON.parse(line) as Record<string, unknown> | null)?.[textField];
      } catch (err) {
        fault = `not JSON (${(err as Error).message})`;
      }
      if (typeof text !== 'string') {
        if (stats.malformedLines++ === 0) stats.firstMalformed = `${path}:${lineNo}: ${fault}`;
      } else if (!isBlankDocument(text)) {
        yield text;
      }
    } else if (line.trim() === '') {
      if (paragraph.length > 0) yield paragraph.join('\n');
      paragraph = [];
    } else {
      paragraph.push(line);
    }
  }
  if (paragraph.length > 0) yield paragraph.join('\n');
}
