/**
 * The tokenizer's file formats, parsed and checked: a `tokenizers` tokenizer.json (`parseTokenizerJson`) and GPT-2's
 * published vocab.json + merges.txt (`parseGpt2Files`), each into the ordinary tokens by id, the merges in rank
 * order and the special tokens. Anything malformed fails with MDL_ERR_TOKENIZER_FILE naming the file and the field
 * or line. model/tokenizer.ts builds the Tokenizer from what these return.
 */
import { BYTE_TO_CHAR, fromByteLevel } from './byte-level.ts';
import { ModelError } from './errors.ts';

/** GPT-2's end-of-text special token: the last id of a vocabulary. */
export const END_OF_TEXT = '<|endoftext|>';

type Fail = (msg: string) => never;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** id → token of a vocabulary object, checking that every id is a distinct non-negative integer. */
function vocabById(vocab: Record<string, unknown>, where: string, fail: Fail): Map<number, string> {
  const byId = new Map<number, string>();
  for (const [token, id] of Object.entries(vocab)) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      return fail(`${where}[${JSON.stringify(token)}] must be a non-negative integer id, got ${JSON.stringify(id)}`);
    }
    if (byId.has(id)) return fail(`${where}: id ${id} is given to both ${JSON.stringify(byId.get(id))} and ${JSON.stringify(token)}`);
    byId.set(id, token);
  }
  return byId;
}

/**
 * The ordinary tokens in id order: ids must run from 0 without gaps, the special tokens (`specialIds`, id → content)
 * taking the last ones, every token must be byte-level and every byte must have a token.
 */
function ordinaryTokens(byId: Map<number, string>, specialIds: Map<number, string>, where: string, fail: Fail): string[] {
  const size = new Set([...byId.keys(), ...specialIds.keys()]).size;
  for (let id = 0; id < size; id++) {
    if (!byId.has(id) && !specialIds.has(id)) return fail(`ids must run from 0 to ${size - 1} without gaps; id ${id} is missing`);
  }
  // Non-special ids come first; the special tokens take the last ids (the order this module writes, and GPT-2's).
  const firstSpecial = size - specialIds.size;
  for (const [id, content] of specialIds) {
    if (id < firstSpecial) {
      return fail(`special token ${JSON.stringify(content)} has id ${id}; special tokens must come after every ordinary token (ids ${firstSpecial}–${size - 1})`);
    }
  }
  const tokens: string[] = [];
  for (let id = 0; id < firstSpecial; id++) {
    const t = byId.get(id)!;
    if (fromByteLevel(t) === undefined) {
      return fail(`${where}: token ${JSON.stringify(t)} (id ${id}) has characters outside the byte-level alphabet`);
    }
    tokens.push(t);
  }
  const present = new Set(tokens);
  for (let b = 0; b < 256; b++) {
    if (present.has(BYTE_TO_CHAR[b]!)) continue;
    // A vocabulary in byte order (every one trained here) has byte b at id b, so name that slot.
    const inByteOrder = BYTE_TO_CHAR.every((c, i) => i === b || tokens[i] === c);
    return fail(
      inByteOrder
        ? `${where}: id ${b} must be the byte token ${JSON.stringify(BYTE_TO_CHAR[b])}, got ${JSON.stringify(tokens[b])}`
        : `${where}: byte ${b} has no token; ${JSON.stringify(BYTE_TO_CHAR[b])} is missing`,
    );
  }
  return tokens;
}

/** Text from a file's contents; bytes must be UTF-8. */
function fileText(contents: string | Uint8Array, fail: Fail): string {
  if (typeof contents === 'string') return contents;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(contents);
  } catch (err) {
    return fail(`not UTF-8 (${(err as Error).message})`);
  }
}

export function parseGpt2Files(
  vocabJson: string | Uint8Array,
  mergesTxt: string | Uint8Array,
): { tokens: string[]; merges: Array<[string, string]>; specials: string[] } {
  const failVocab: Fail = (msg) => {
    throw new ModelError('MDL_ERR_TOKENIZER_FILE', `invalid GPT-2 ${msg.startsWith('vocab.json') ? msg : `vocab.json: ${msg}`}`);
  };
  const failMerges: Fail = (msg) => {
    throw new ModelError('MDL_ERR_TOKENIZER_FILE', `invalid GPT-2 merges.txt: ${msg}`);
  };
  let vocab: unknown;
  try {
    vocab = JSON.parse(fileText(vocabJson, failVocab));
  } catch (err) {
    if (err instanceof ModelError) throw err;
    throw new ModelError('MDL_ERR_TOKENIZER_FILE', `invalid GPT-2 vocab.json: not JSON (${(err as Error).message})`, { cause: err });
  }
  if (!isObject(vocab)) return failVocab('the top level must be an object of token → id');
  const byId = vocabById(vocab, 'vocab.json', failVocab);
  const eot = vocab[END_OF_TEXT];
  const specialIds = new Map<number, string>(typeof eot === 'number' ? [[eot, END_OF_TEXT]] : []);
  const tokens = ordinaryTokens(byId, specialIds, 'vocab.json', failVocab);

  // GPT-2's encoder.py drops the first line unread; `tokenizers` skips it only when it starts with "#version",
  // as here. A final newline ends the last line rather than adding an empty one.
  const known = new Set(tokens);
  const lines = fileText(mergesTxt, failMerges).split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const merges: Array<[string, string]> = [];
  lines.forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (i === 0 && line.startsWith('#version')) return;
    // Byte-level tokens never contain a space (it is 'Ġ'), so one space is the only separator.
    const pair = line.split(' ');
    if (pair.length !== 2 || pair[0] === '' || pair[1] === '') {
      return failMerges(`line ${i + 1} must be "left right", got ${JSON.stringify(line.slice(0, 80))}`);
    }
    if (!known.has(pair[0]!) || !known.has(pair[1]!)) return failMerges(`line ${i + 1}: "${line}" uses a token that is not in vocab.json`);
    if (!known.has(line.replace(' ', ''))) return failMerges(`line ${i + 1}: "${line}" makes ${JSON.stringify(line.replace(' ', ''))}, which is not in vocab.json`);
    merges.push([pair[0]!, pair[1]!]);
  });
  return { tokens, merges, specials: [...specialIds.values()] };
}

export function parseTokenizerJson(json: unknown): { tokens: string[]; merges: Array<[string, string]>; specials: string[] } {
  const fail: Fail = (msg) => {
    throw new ModelError('MDL_ERR_TOKENIZER_FILE', `invalid tokenizer.json: ${msg}`);
  };
  let root = json;
  if (typeof json === 'string') {
    try {
      root = JSON.parse(json);
    } catch (err) {
      throw new ModelError('MDL_ERR_TOKENIZER_FILE', `invalid tokenizer.json: not JSON (${(err as Error).message})`, { cause: err });
    }
  }
  if (!isObject(root)) return fail('the top level must be an object');
  const model = root.model;
  if (!isObject(model)) return fail('model is missing or not an object');
  if (model.type !== 'BPE') return fail(`model.type must be "BPE", got ${JSON.stringify(model.type)}`);
  // Options GPT-2's BPE does not use; `tokenizers` writes them as null, "" or false.
  const unused: Record<string, readonly unknown[]> = {
    dropout: [null, undefined],
    unk_token: [null, undefined],
    continuing_subword_prefix: ['', null, undefined],
    end_of_word_suffix: ['', null, undefined],
    byte_fallback: [false, undefined],
  };
  for (const [field, allowed] of Object.entries(unused)) {
    if (!allowed.includes(model[field])) {
      return fail(`model.${field} is ${JSON.stringify(model[field])}; a byte-level BPE here has none`);
    }
  }
  if (root.normalizer != null) return fail('normalizer must be null: byte-level BPE sees the raw text');
  const pre = root.pre_tokenizer;
  if (!isObject(pre) || pre.type !== 'ByteLevel') {
    return fail(`pre_tokenizer must be {"type": "ByteLevel"}, got ${JSON.stringify(pre)}`);
  }
  if (pre.add_prefix_space !== false) return fail('pre_tokenizer.add_prefix_space must be false');
  if (pre.use_regex === false) return fail('pre_tokenizer.use_regex must be true (GPT-2 pre-tokenization)');
  const decoder = root.decoder;
  if (!isObject(decoder) || decoder.type !== 'ByteLevel') {
    return fail(`decoder must be {"type": "ByteLevel"}, got ${JSON.stringify(decoder)}`);
  }

  const vocab = model.vocab;
  if (!isObject(vocab)) return fail('model.vocab is missing or not an object');
  const byId = vocabById(vocab, 'model.vocab', fail);
  const added = root.added_tokens ?? [];
  if (!Array.isArray(added)) return fail('added_tokens must be an array');
  const specialIds = new Map<number, string>();
  added.forEach((t: unknown, i) => {
    if (!isObject(t) || typeof t.content !== 'string' || t.content.length === 0 || !Number.isInteger(t.id)) {
      return fail(`added_tokens[${i}] must have a non-empty string content and an integer id`);
    }
    const id = t.id as number;
    if (specialIds.has(id)) return fail(`added_tokens[${i}]: id ${id} is used by an earlier added token too`);
    const inVocab = byId.get(id);
    if (inVocab !== undefined && inVocab !== t.content) {
      return fail(`added_tokens[${i}] (${JSON.stringify(t.content)}) has id ${id}, which model.vocab gives to ${JSON.stringify(inVocab)}`);
    }
    specialIds.set(id, t.content);
  });
  const tokens = ordinaryTokens(byId, specialIds, 'model.vocab', fail);

  if (!Array.isArray(model.merges)) return fail('model.merges is missing or not an array');
  const merges = model.merges.map((m: unknown, i): [string, string] => {
    // `tokenizers` writes "a b" (before 0.20) or ["a", "b"]; byte-level tokens never contain a space.
    const pair = typeof m === 'string' ? m.split(' ') : m;
    if (!Array.isArray(pair) || pair.length !== 2 || pair.some((p) => typeof p !== 'string' || p.length === 0)) {
      return fail(`model.merges[${i}] must be "left right" or ["left", "right"], got ${JSON.stringify(m)}`);
    }
    return [pair[0] as string, pair[1] as string];
  });
  const specials = [...specialIds].sort(([a], [b]) => a - b).map(([, content]) => content);
  return { tokens, merges, specials };
}

/**
 * How many ids a tokenizer.json that was checked when it was written (a registered version's) gives: its largest id
 * in model.vocab or added_tokens, plus one. About 20 ms for GPT-2's, where building the Tokenizer takes ~120 ms:
 * enough to check that a vocabulary fits a model on a request thread. Fails with MDL_ERR_TOKENIZER_FILE when there
 * is no id to count.
 */
export function tokenizerJsonIdCount(json: unknown): number {
  const fail: Fail = (msg) => {
    throw new ModelError('MDL_ERR_TOKENIZER_FILE', `tokenizer.json: ${msg}`);
  };
  const root = isObject(json) ? json : fail('not a JSON object');
  const vocab = isObject(root.model) && isObject(root.model.vocab) ? root.model.vocab : fail('model.vocab is missing or not an object');
  let max = -1;
  for (const id of Object.values(vocab)) if (typeof id === 'number' && id > max) max = id;
  for (const t of Array.isArray(root.added_tokens) ? root.added_tokens : []) if (isObject(t) && typeof t.id === 'number' && t.id > max) max = t.id;
  return max >= 0 ? max + 1 : fail('model.vocab holds no ids');
}
