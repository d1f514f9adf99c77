/**
 * Normalization and the quality filters: what a document looks like before it is compared or kept, and whether
 * it is prose worth training on. Each filter is a threshold in FilterConfig (config.ts); `checkQuality` returns
 * the first one a document fails, as the reason counted in the report, or null.
 */
import type { FilterConfig } from './config.ts';

export interface Normalized {
  text: string;
  /** Control characters (other than tab and newline) removed: a sign of binary junk. */
  controlChars: number;
}

/** NFC, \r\n → \n, control characters dropped, runs of spaces collapsed, lines trimmed, at most one blank line. */
export function normalizeText(raw: string): Normalized {
  let text = raw.normalize('NFC').replace(/\r\n?/g, '\n');
  const before = text.length;
  // eslint-disable-next-line no-control-regex
  text = text.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\ufffd]/g, '');
  const controlChars = before - text.length;
  text = text
    .replace(/[ \t\u00a0\u2000-\u200b\u202f\u205f\u3000]+/g, ' ')
    .replace(/ ?\n ?/g, '\n')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
  return { text, controlChars };
}

export type FilterReason =
  | 'too_short'
  | 'too_long'
  | 'too_few_words'
  | 'few_letters'
  | 'many_digits'
  | 'many_symbols'
  | 'control_chars'
  | 'repeated_lines'
  | 'odd_word_length';

/** The first filter `text` fails, or null when it passes them all. `controlChars` comes from normalizeText. */
export function checkQuality(text: string, controlChars: number, f: FilterConfig): FilterReason | null {
  const n = text.length;
  if (n < f.minChars) return 'too_short';
  if (n > f.maxChars) return 'too_long';
  if (controlChars / (n + controlChars) > f.maxControlShare) return 'control_chars';
  let letters = 0, digits = 0, spaces = 0, symbols = 0;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if ((c >= 97 && c <= 122) || (c >= 65 && c <= 90)) letters++;
    else if (c >= 48 && c <= 57) digits++;
    else if (c === 32 || c === 10 || c === 9) spaces++;
    else if (c < 128) symbols++;
    else if (/\p{L}|\p{M}/u.test(text[i]!)) letters++;
    else if (/\p{N}/u.test(text[i]!)) digits++;
    else if (/\s/.test(text[i]!)) spaces++;
    else symbols++;
  }
  const visible = Math.max(1, n - spaces);
  const words = text.match(/[\p{L}\p{N}][\p{L}\p{N}'’-]*/gu) ?? [];
  if (words.length < f.minWords) return 'too_few_words';
  if (letters / visible < f.minLetterShare) return 'few_letters';
  if (digits / visible > f.maxDigitShare) return 'many_digits';
  if (symbols / visible > f.maxSymbolShare) return 'many_symbols';
  const meanWord = words.reduce((s, w) => s + w.length, 0) / words.length;
  if (meanWord < f.minMeanWordLength || meanWord > f.maxMeanWordLength) return 'odd_word_length';
  if (repeatedLineShare(text) > f.maxRepeatedLineShare) return 'repeated_lines';
  return null;
}

/** Share of the characters of `text` in lines that repeat an earlier line of it. */
export function repeatedLineShare(text: string): number {
  if (!text.includes('\n')) return 0;
  const seen = new Set<string>();
  let repeated = 0;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (seen.has(line)) repeated += line.length;
    else seen.add(line);
  }
  return repeated / text.length;
}
