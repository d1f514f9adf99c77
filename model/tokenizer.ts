/**
 * GPT-2's byte-level BPE tokenizer: train it on a corpus (`trainBpe`), encode and decode text, and save or load it
 * as a `tokenizers` tokenizer.json, the file `transformers`' PreTrainedTokenizerFast(tokenizer_file=...) reads, so
 * a model trained here can be used from Python with the same token ids.
 *
 * It also loads GPT-2's own published files, vocab.json and merges.txt (`fromGpt2Files`), and encodes exactly as
 * GPT-2's encoder.py does (test/model/gpt2-tokenizer.test.ts checks it against the `gpt-3-encoder` port).
 *
 * Ids: a tokenizer trained here has 0–255 as the bytes, then the learned tokens in the order they were learned, then
 * the special tokens (`<|endoftext|>` last, as in GPT-2). A loaded one may place the 256 byte tokens at any ids, as
 * GPT-2's vocabulary does ("!" is 0); only the special tokens must come last. Any text round-trips:
 * decode(encode(s)) === s for every well-formed string.
 */
import { BYTE_TO_CHAR, fromByteLevel, preTokenize } from './byte-level.ts';
import { escapeRegExp, trainBpeModel, type TrainBpeOptions } from './bpe-trainer.ts';
import { ModelError } from './errors.ts';
import { END_OF_TEXT, parseGpt2Files, parseTokenizerJson } from './tokenizer-files.ts';

export type { TrainBpeOptions, TrainProgress } from './bpe-trainer.ts';

export { END_OF_TEXT } from './tokenizer-files.ts';

/** The subset of the `tokenizers` tokenizer.json this module writes and reads. */
export interface TokenizerJson {
  version: '1.0';
  truncation: null;
  padding: null;
  added_tokens: Array<{
    id: number;
    content: string;
    single_word: boolean;
    lstrip: boolean;
    rstrip: boolean;
    normalized: boolean;
    special: boolean;
  }>;
  normalizer: null;
  pre_tokenizer: { type: 'ByteLevel'; add_prefix_space: false; trim_offsets: boolean; use_regex: true };
  post_processor: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  decoder: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  model: {
    type: 'BPE';
    dropout: null;
    unk_token: null;
    continuing_subword_prefix: '';
    end_of_word_suffix: '';
    fuse_unk: false;
    byte_fallback: false;
    ignore_merges: false;
    vocab: Record<string, number>;
    merges: string[];
  };
}

/** Trains a tokenizer of exactly `vocabSize` tokens on `texts` (see bpe-trainer.ts for how). */
export async function trainBpe(
  texts: Iterable<string> | AsyncIterable<string>,
  options: TrainBpeOptions,
): Promise<Tokenizer> {
  const { tokens, merges, specialTokens } = await trainBpeModel(texts, options);
  return new Tokenizer(tokens, merges, specialTokens);
}

/** Word encodings kept; past this the cache starts over (a corpus has far fewer distinct frequent words). */
const CACHE_LIMIT = 200_000;
const SHIFT = 2 ** 20;
/** ignoreBOM: a text that starts with U+FEFF must keep it (the default decoder drops a leading BOM). */
const UTF8 = new TextDecoder('utf-8', { ignoreBOM: true });
const UTF8_ENCODER = new TextEncoder();

export class Tokenizer {
  #tokens: string[]; // id → byte-level string; special ids → their content
  #bytes: Uint8Array[]; // id → the bytes it decodes to
  #byteIds = new Int32Array(256); // byte → id of its one-byte token, where BPE starts
  #merges: Array<[string, string]>;
  #ranks = new Map<number, { rank: number; id: number }>(); // pair of ids → merge rank and result
  #specials = new Map<string, number>();
  #specialSplit: RegExp | null;
  #cache = new Map<string, number[]>();

  /**
   * @param tokens id → byte-level token string for every non-special id; the 256 one-byte tokens may be at any ids
   * @param merges rank order; both halves and their concatenation must be tokens
   * @param specialTokens contents of the special tokens, given ids tokens.length onwards
   */
  constructor(tokens: readonly string[], merges: ReadonlyArray<readonly [string, string]>, specialTokens: readonly string[]) {
    const fail = (msg: string) => new ModelError('MDL_ERR_TOKENIZER_FILE', `invalid tokenizer: ${msg}`);
    const ids = new Map<string, number>();
    this.#bytes = tokens.map((t, id) => {
      const bytes = fromByteLevel(t);
      if (bytes === undefined || bytes.length === 0) {
        throw fail(`model.vocab: token ${JSON.stringify(t)} (id ${id}) is not a byte-level string`);
      }
      if (ids.has(t)) throw fail(`model.vocab: token ${JSON.stringify(t)} has two ids, ${ids.get(t)} and ${id}`);
      ids.set(t, id);
      return bytes;
    });
    for (let b = 0; b < 256; b++) {
      const id = ids.get(BYTE_TO_CHAR[b]!);
      if (id === undefined) throw fail(`model.vocab: byte ${b} has no token (${JSON.stringify(BYTE_TO_CHAR[b])})`);
      this.#byteIds[b] = id;
    }
    this.#merges = merges.map(([a, b], rank) => {
      const ia = ids.get(a);
      const ib = ids.get(b);
      const id = ids.get(a + b);
      if (ia === undefined || ib === undefined) throw fail(`model.merges[${rank}]: "${a} ${b}" uses a token that is not in model.vocab`);
      if (id === undefined) throw fail(`model.merges[${rank}]: "${a} ${b}" makes ${JSON.stringify(a + b)}, which is not in model.vocab`);
      const key = ia * SHIFT + ib;
      // A repeated merge takes its last rank, as in `tokenizers` (whose merge map is filled in file order).
      this.#ranks.set(key, { rank, id });
      return [a, b];
    });
    this.#tokens = [...tokens];
    for (const content of specialTokens) {
      if (content.length === 0 || this.#specials.has(content)) {
        throw fail(`added_tokens: special token ${JSON.stringify(content)} is empty or repeated`);
      }
      this.#specials.set(content, this.#tokens.length);
      this.#tokens.push(content);
      this.#bytes.push(UTF8_ENCODER.encode(content));
    }
    // Longest first, so a special that is a prefix of another never wins.
    const alternatives = [...this.#specials.keys()].sort((x, y) => y.length - x.length).map(escapeRegExp);
    this.#specialSplit = alternatives.length > 0 ? new RegExp(`(${alternatives.join('|')})`) : null;
  }

  /** Number of ids, special tokens included (the model's embedding rows). */
  get vocabSize(): number {
    return this.#tokens.length;
  }

  /** Id of `<|endoftext|>`, the document separator; undefined if this tokenizer has none. */
  get endOfText(): number | undefined {
    return this.#specials.get(END_OF_TEXT);
  }

  /** Id of a special token by its content. */
  specialId(content: string): number | undefined {
    return this.#specials.get(content);
  }

  /** Special token contents appearing in `text` become their ids, as `tokenizers` does for added tokens. */
  encode(text: string): number[] {
    if (!this.#specialSplit) return this.encodeOrdinary(text);
    const out: number[] = [];
    // split() with a capturing group puts the matched specials at the odd indices.
    text.split(this.#specialSplit).forEach((part, i) => {
      if (i % 2 === 1) out.push(this.#specials.get(part)!);
      else this.#encodeInto(part, out);
    });
    return out;
  }

  /** Encodes `text` as plain text: special token contents in it are tokenized like any other characters. */
  encodeOrdinary(text: string): number[] {
    const out: number[] = [];
    this.#encodeInto(text, out);
    return out;
  }

  /** The bytes token `id` stands for (a view: do not modify). Generation streams text from these. */
  tokenBytes(id: number): Uint8Array {
    const bytes = this.#bytes[id];
    if (bytes === undefined) throw new RangeError(`token id ${id} is outside the vocabulary (0–${this.vocabSize - 1})`);
    return bytes;
  }

  /** The text of `ids`. Byte sequences that are not valid UTF-8 (a cut-off character) decode to U+FFFD. */
  decode(ids: ArrayLike<number>): string {
    const parts: Uint8Array[] = [];
    let length = 0;
    for (let i = 0; i < ids.length; i++) {
      const bytes = this.#bytes[ids[i]!];
      if (bytes === undefined) throw new RangeError(`token id ${ids[i]} at position ${i} is outside the vocabulary (0–${this.vocabSize - 1})`);
      parts.push(bytes);
      length += bytes.length;
    }
    const all = new Uint8Array(length);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    return UTF8.decode(all);
  }

  #encodeInto(text: string, out: number[]): void {
    for (const word of preTokenize(text)) {
      let ids = this.#cache.get(word);
      if (ids === undefined) {
        ids = this.#bpe(word);
        if (this.#cache.size >= CACHE_LIMIT) this.#cache.clear();
        this.#cache.set(word, ids);
      }
      for (const id of ids) out.push(id);
    }
  }

  /** GPT-2's word encoding: start from the bytes and apply the lowest-ranked merge present until none is. */
  #bpe(word: string): number[] {
    let ids = Array.from(UTF8_ENCODER.encode(word), (b) => this.#byteIds[b]!);
    while (ids.length > 1) {
      let best: { rank: number; id: number } | undefined;
      let bestA = 0;
      let bestB = 0;
      for (let i = 0; i + 1 < ids.length; i++) {
        const m = this.#ranks.get(ids[i]! * SHIFT + ids[i + 1]!);
        if (m !== undefined && (best === undefined || m.rank < best.rank)) {
          best = m;
          bestA = ids[i]!;
          bestB = ids[i + 1]!;
        }
      }
      if (best === undefined) break;
      const next: number[] = [];
      for (let i = 0; i < ids.length; i++) {
        if (ids[i] === bestA && i + 1 < ids.length && ids[i + 1] === bestB) {
          next.push(best.id);
          i++;
        } else {
          next.push(ids[i]!);
        }
      }
      ids = next;
    }
    return ids;
  }

  /** The tokenizer.json object (`JSON.stringify` it to write the file). */
  toJSON(): TokenizerJson {
    const vocab: Record<string, number> = {};
    this.#tokens.forEach((t, id) => (vocab[t] = id));
    const byteLevel = { type: 'ByteLevel' as const, add_prefix_space: false, trim_offsets: true, use_regex: true };
    return {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [...this.#specials].map(([content, id]) => ({
        id,
        content,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      })),
      normalizer: null,
      pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      post_processor: { ...byteLevel, trim_offsets: false },
      decoder: byteLevel,
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: '',
        end_of_word_suffix: '',
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: false,
        vocab,
        merges: this.#merges.map(([a, b]) => `${a} ${b}`),
      },
    };
  }

  /** Loads a tokenizer.json (its text or the parsed object); anything else fails with MDL_ERR_TOKENIZER_FILE naming the field. */
  static fromJSON(json: unknown): Tokenizer {
    const { tokens, merges, specials } = parseTokenizerJson(json);
    return new Tokenizer(tokens, merges, specials);
  }

  /**
   * Loads GPT-2's published vocab.json (token → id) and merges.txt (an optional "#version" line, then one "left right"
   * merge per line in rank order), as text or bytes. `<|endoftext|>`, if in the vocabulary, is the special token and
   * must have the last id (50256 in GPT-2). Malformed files fail with MDL_ERR_TOKENIZER_FILE naming the file and line.
   */
  static fromGpt2Files(vocabJson: string | Uint8Array, mergesTxt: string | Uint8Array): Tokenizer {
    const { tokens, merges, specials } = parseGpt2Files(vocabJson, mergesTxt);
    return new Tokenizer(tokens, merges, specials);
  }
}
