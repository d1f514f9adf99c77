/**
 * The byte-level BPE tokenizer: training (exact size, determinism, known merges), encode/decode round trips on
 * arbitrary Unicode, and the tokenizer.json format including the errors a corrupt file gives.
 * Run: node --import tsx --test test/model/tokenizer.test.ts
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { BYTE_TO_CHAR, preTokenize } from '../../model/byte-level.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { ModelError } from '../../model/errors.ts';
import { END_OF_TEXT, Tokenizer, trainBpe } from '../../model/tokenizer.ts';

/** A small mixed corpus: English prose plus accented, CJK and emoji text, so multi-byte characters get merges too. */
const SMALL_CORPUS = [
  ...loadDemoCorpus().documents.slice(0, 3),
  'Ünïcödé façade café naïve résumé. Ünïcödé café! '.repeat(20),
  '日本語のテキストです。日本語のテキスト。'.repeat(20),
  'emoji 🙂🙂 party 🎉🎉 and 🙂 again '.repeat(20),
  "I'm sure they'll say we've done what's right, didn't they?\n\n\tIndented\ttabs  and  spaces\r\n".repeat(10),
];

let cached: Promise<Tokenizer> | undefined;
const smallTokenizer = () => (cached ??= trainBpe(SMALL_CORPUS, { vocabSize: 800 }));

describe('pre-tokenization and the byte table', () => {
  test('GPT-2 pre-tokenization splits contractions, leading spaces, numbers and whitespace runs', () => {
    assert.deepEqual(preTokenize("Hello world's  2024 tests!!\n\n"), ['Hello', ' world', "'s", ' ', ' 2024', ' tests', '!!', '\n\n']);
  });

  test('the byte table maps the 256 bytes to 256 distinct printable characters, space to Ġ and newline to Ċ', () => {
    assert.equal(new Set(BYTE_TO_CHAR).size, 256);
    assert.equal(BYTE_TO_CHAR[0x20], 'Ġ');
    assert.equal(BYTE_TO_CHAR[0x0a], 'Ċ');
    assert.equal(BYTE_TO_CHAR[0x41], 'A');
  });
});

describe('training', () => {
  test('a known small corpus learns the expected merges in order, ties going to the smaller pair', async () => {
    const tok = await trainBpe(['hug hug hug pug pun bun hugs'], { vocabSize: 256 + 5 + 1, minFrequency: 2 });
    // (u,g)×5, then (h,ug)×4, (Ġ,hug)×3, then a tie at 2 between (Ġ,p) and (u,n): Ġ (byte 32) < u (byte 117).
    assert.deepEqual(tok.toJSON().model.merges, ['u g', 'h ug', 'Ġ hug', 'Ġ p', 'u n']);
    assert.deepEqual(tok.encode(' hug'), [tok.toJSON().model.vocab['Ġhug']]);
    assert.equal(tok.endOfText, 261);
  });

  test('asking for more tokens than the corpus has frequent pairs fails with a clear error', async () => {
    await assert.rejects(trainBpe(['hug hug hug pug pun bun hugs'], { vocabSize: 256 + 6 + 1, minFrequency: 2 }), (err: unknown) => {
      assert.ok(err instanceof ModelError);
      assert.equal(err.code, 'MDL_ERR_TOKENIZER_TRAINING');
      assert.match(err.message, /too small for vocabSize 263.*minFrequency 2/);
      return true;
    });
  });

  test('a vocabulary too small for the bytes and special tokens is refused', async () => {
    await assert.rejects(trainBpe(['abc'], { vocabSize: 256 }), /vocabSize must be an integer from 257/);
  });

  test('the vocabulary has exactly vocabSize ids, special tokens last', async () => {
    for (const vocabSize of [258, 300, 777]) {
      const tok = await trainBpe(SMALL_CORPUS, { vocabSize, specialTokens: ['<|pad|>', END_OF_TEXT] });
      assert.equal(tok.vocabSize, vocabSize);
      assert.equal(Object.keys(tok.toJSON().model.vocab).length, vocabSize);
      assert.equal(tok.specialId('<|pad|>'), vocabSize - 2);
      assert.equal(tok.endOfText, vocabSize - 1);
    }
  });

  test('training twice on the same corpus gives the same tokenizer, from sync and async iterables alike', async () => {
    async function* stream() {
      for (const t of SMALL_CORPUS) yield t;
    }
    const a = await trainBpe(SMALL_CORPUS, { vocabSize: 600 });
    const b = await trainBpe(stream(), { vocabSize: 600 });
    assert.equal(JSON.stringify(a.toJSON()), JSON.stringify(b.toJSON()));
  });

  test('progress is reported for counting and for merging', async () => {
    const phases = new Set<string>();
    await trainBpe(SMALL_CORPUS, { vocabSize: 600, onProgress: (p) => phases.add(p.phase) });
    assert.deepEqual([...phases], ['count', 'merge']);
  });

  test('training on a few hundred KB of the demo corpus finishes and compresses English text', async () => {
    const docs: string[] = [];
    let bytes = 0;
    for (const d of loadDemoCorpus().documents) {
      if (bytes > 400_000) break;
      docs.push(d);
      bytes += Buffer.byteLength(d);
    }
    const tok = await trainBpe(docs, { vocabSize: 2048 });
    assert.equal(tok.vocabSize, 2048);
    const sample = docs[0]!;
    const ids = tok.encode(sample);
    assert.equal(tok.decode(ids), sample);
    assert.ok(Buffer.byteLength(sample) / ids.length > 3, 'expected more than 3 bytes per token on training text');
  });
});

describe('encode and decode', () => {
  test('decode(encode(s)) is s for arbitrary Unicode strings', async () => {
    const tok = await smallTokenizer();
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 200 }), fc.string({ unit: 'grapheme', maxLength: 200 })), (s) => {
        assert.equal(tok.decode(tok.encode(s)), s);
        assert.equal(tok.decode(tok.encodeOrdinary(s)), s);
      }),
      { numRuns: 500 },
    );
  });

  test('strings made of corpus words, whitespace and special tokens round-trip', async () => {
    const tok = await smallTokenizer();
    const piece = fc.constantFrom('the', ' The', 'café', ' 日本語', '🙂', "'ll", ' ', '  ', '\n', '\r\n', '\t', END_OF_TEXT, '<|', '|>', '1790', '.');
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 40 }), (pieces) => {
        const s = pieces.join('');
        assert.equal(tok.decode(tok.encode(s)), s);
      }),
      { numRuns: 300 },
    );
  });

  test('a special token in the text is one id with encode and ordinary characters with encodeOrdinary', async () => {
    const tok = await smallTokenizer();
    const ids = tok.encode(`a${END_OF_TEXT}b`);
    assert.deepEqual(ids, [...tok.encode('a'), tok.endOfText, ...tok.encode('b')]);
    assert.ok(!tok.encodeOrdinary(`a${END_OF_TEXT}b`).includes(tok.endOfText!));
  });

  test('encoding is the same with a warm word cache as with a cold one', async () => {
    const tok = await smallTokenizer();
    const text = loadDemoCorpus().documents[5]!;
    const cold = Tokenizer.fromJSON(tok.toJSON()).encode(text);
    assert.deepEqual(tok.encode(text), cold);
    assert.deepEqual(tok.encode(text), cold);
  });

  test('ids outside the vocabulary are refused by decode, and a cut-off character decodes to U+FFFD', async () => {
    const tok = await smallTokenizer();
    assert.throws(() => tok.decode([tok.vocabSize]), RangeError);
    assert.equal(tok.decode([0xe6]), '\uFFFD'); // first byte of a three-byte character alone
  });

  test('a text starting with a byte-order mark keeps it', async () => {
    const tok = await smallTokenizer();
    assert.equal(tok.decode(tok.encode('\uFEFFhello')), '\uFEFFhello');
  });
});

describe('tokenizer.json', () => {
  test('toJSON then fromJSON gives the same file and the same encodings', async () => {
    const tok = await smallTokenizer();
    const text = JSON.stringify(tok.toJSON());
    const back = Tokenizer.fromJSON(text);
    assert.equal(JSON.stringify(back.toJSON()), text);
    const sample = SMALL_CORPUS.join(END_OF_TEXT);
    assert.deepEqual(back.encode(sample), tok.encode(sample));
  });

  test('the file is a ByteLevel BPE in the tokenizers format with the special tokens as added tokens', async () => {
    const json = (await smallTokenizer()).toJSON();
    assert.equal(json.model.type, 'BPE');
    assert.deepEqual(json.pre_tokenizer, { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true });
    assert.equal(json.decoder.type, 'ByteLevel');
    assert.deepEqual(
      json.added_tokens.map((t) => [t.id, t.content, t.special]),
      [[799, END_OF_TEXT, true]],
    );
    assert.equal(json.model.vocab[END_OF_TEXT], 799);
    assert.ok(json.model.merges.every((m) => m.split(' ').length === 2));
  });

  test('merges written as ["a", "b"] pairs (tokenizers ≥ 0.20) load too', async () => {
    const json = (await smallTokenizer()).toJSON();
    const pairs = { ...json, model: { ...json.model, merges: json.model.merges.map((m) => m.split(' ')) } };
    assert.deepEqual(Tokenizer.fromJSON(pairs).encode('the café'), Tokenizer.fromJSON(json).encode('the café'));
  });

  test('a malformed or corrupt file is rejected with an error naming what is wrong', async () => {
    const good = (await smallTokenizer()).toJSON();
    // Corruptions reach past the declared type on purpose, hence `any`.
    const edit = (f: (j: any) => void): unknown => {
      const j = structuredClone(good);
      f(j);
      return j;
    };
    const firstMerged = good.model.merges[0]!.replace(' ', '');
    const cases: Array<[what: string, input: unknown, message: RegExp]> = [
      ['text that is not JSON', '{"model": {', /not JSON/],
      ['a truncated file', JSON.stringify(good).slice(0, 500), /not JSON/],
      ['an array', [], /top level must be an object/],
      ['no model', edit((j) => delete j.model), /model is missing/],
      ['a WordPiece model', edit((j) => (j.model.type = 'WordPiece')), /model\.type must be "BPE", got "WordPiece"/],
      ['no vocab', edit((j) => delete j.model.vocab), /model\.vocab is missing/],
      ['a string id', edit((j) => (j.model.vocab['a'] = '97')), /model\.vocab\["a"\] must be a non-negative integer id/],
      ['an id given twice', edit((j) => (j.model.vocab['a'] = 98)), /id 98 is given to both/],
      ['a missing byte token', edit((j) => { const id = j.model.vocab['Ġ']; delete j.model.vocab['Ġ']; j.model.vocab['Ġ!'] = id; }), /id 32 must be the byte token "Ġ"/],
      ['a gap in the ids', edit((j) => (j.model.vocab[firstMerged] = 5000)), /id \d+ is missing/],
      ['a merge of an unknown token', edit((j) => j.model.merges.push('zzzz q')), /model\.merges\[\d+\]: "zzzz q" uses a token that is not in model\.vocab/],
      ['a merge whose result is not in the vocab', edit((j) => j.model.merges.push('Q Q')), /makes "QQ", which is not in model\.vocab/],
      ['a merge that is not a pair', edit((j) => (j.model.merges[3] = 'a b c')), /model\.merges\[3\] must be "left right"/],
      ['merges that are not an array', edit((j) => (j.model.merges = 'u g')), /model\.merges is missing or not an array/],
      ['a non-byte-level token', edit((j) => { j.model.vocab['a→b'] = j.model.vocab[firstMerged]; delete j.model.vocab[firstMerged]; }), /outside the byte-level alphabet/],
      ['a Whitespace pre-tokenizer', edit((j) => (j.pre_tokenizer = { type: 'Whitespace' })), /pre_tokenizer must be \{"type": "ByteLevel"\}/],
      ['add_prefix_space', edit((j) => (j.pre_tokenizer.add_prefix_space = true)), /add_prefix_space must be false/],
      ['a missing decoder', edit((j) => (j.decoder = null)), /decoder must be/],
      ['a normalizer', edit((j) => (j.normalizer = { type: 'Lowercase' })), /normalizer must be null/],
      ['an unk token', edit((j) => (j.model.unk_token = '<unk>')), /model\.unk_token/],
      ['dropout', edit((j) => (j.model.dropout = 0.1)), /model\.dropout/],
      ['an added token whose id the vocab gives to another token', edit((j) => (j.added_tokens[0].id = 300)), /added_tokens\[0\].*has id 300/],
      ['two added tokens with one id', edit((j) => j.added_tokens.push({ ...j.added_tokens[0], content: '<|pad|>' })), /id 799 is used by an earlier added token/],
      ['an added token without content', edit((j) => (j.added_tokens[0].content = 7)), /added_tokens\[0\] must have a non-empty string content/],
    ];
    for (const [what, input, message] of cases) {
      assert.throws(
        () => Tokenizer.fromJSON(input),
        (err: unknown) => err instanceof ModelError && err.code === 'MDL_ERR_TOKENIZER_FILE' && message.test(err.message),
        `${what}: expected MDL_ERR_TOKENIZER_FILE matching ${message}`,
      );
    }
  });
});

describe('agreement with Hugging Face tokenizers', () => {
  // The fixtures were made once: tokenizer-512.json by trainBpe here, the ids by the Rust `tokenizers` library and
  // transformers' PreTrainedTokenizerFast loading that file (see `about` in the encodings file).
  const fixture = (name: string) => readFileSync(new URL(`./fixtures/${name}`, import.meta.url), 'utf8');

  test('encode gives the ids that the tokenizers library gives for the same tokenizer.json', () => {
    const tok = Tokenizer.fromJSON(fixture('tokenizer-512.json'));
    const { cases } = JSON.parse(fixture('tokenizer-512-encodings.json')) as { cases: Array<{ text: string; ids: number[] }> };
    assert.ok(cases.length >= 8);
    for (const { text, ids } of cases) {
      assert.deepEqual(tok.encode(text), ids, `ids differ for ${JSON.stringify(text.slice(0, 40))}`);
      assert.equal(tok.decode(ids), text);
    }
  });
});

test('tokenizerJsonIdCount counts the ids of a tokenizer.json without building the tokenizer, and refuses one with none', async () => {
  const { tokenizerJsonIdCount } = await import('../../model/tokenizer-files.ts');
  const tok = await trainBpe([loadDemoCorpus().documents[0]!], { vocabSize: 300 });
  assert.equal(tokenizerJsonIdCount(tok.toJSON()), tok.vocabSize);
  assert.throws(() => tokenizerJsonIdCount({ model: { vocab: {} } }), /MDL_ERR_TOKENIZER_FILE|holds no ids/);
  assert.throws(() => tokenizerJsonIdCount([]), /not a JSON object/);
});
