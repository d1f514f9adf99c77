/**
 * The byte-level pieces of GPT-2's tokenizer: the pre-tokenization regex and the bytes-to-unicode table. BPE works
 * on bytes, but the `tokenizers` file format stores tokens as strings, so every byte is given a printable
 * character (space becomes 'Ġ', newline 'Ċ'), exactly as GPT-2's encoder.py and `tokenizers`' ByteLevel do; a
 * tokenizer.json written with this table loads in `transformers` and means the same tokens there.
 */

/**
 * GPT-2's split of text into words before BPE: contractions, letters with one optional leading space, numbers,
 * other symbols, and whitespace (a run of spaces keeps its last one for the next word). Every character falls in one
 * alternative, so the matches always concatenate back to the input.
 *
 * It is GPT-2's 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ with \s spelled
 * \p{White_Space}: JavaScript's \s differs from the Unicode whitespace that Python's `regex` and `tokenizers` use
 * (it includes U+FEFF, leaves out U+0085), and those characters would otherwise split differently from transformers.
 */
export const GPT2_SPLIT =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;

/** The words of `text` under GPT-2's pre-tokenization, in order; joined they equal `text`. */
export function preTokenize(text: string): string[] {
  return text.match(GPT2_SPLIT) ?? [];
}

/**
 * byte → character: printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100 onwards in byte
 * order (GPT-2's `bytes_to_unicode`).
 */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const table: string[] = new Array(256);
  let next = 0;
  for (let b = 0; b < 256; b++) table[b] = String.fromCharCode(printable(b) ? b : 0x100 + next++);
  return table;
})();

/** character → byte, the inverse of BYTE_TO_CHAR. */
export const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

/** The bytes a byte-level string stands for, or undefined when it holds a character outside the table. */
export function fromByteLevel(token: string): Uint8Array | undefined {
  const bytes = new Uint8Array(token.length);
  for (let i = 0; i < token.length; i++) {
    const b = CHAR_TO_BYTE.get(token[i]!);
    if (b === undefined) return undefined;
    bytes[i] = b;
  }
  return bytes;
}
