/**
 * Which chat template a version is served with (gateway/chat-templates.ts) and how a derived version finds the
 * lineage of its training (gateway/training-lineage.ts): SFT/DPO versions render exactly as training did, imported
 * models' Jinja templates as transformers renders them, and a model with neither refuses with a 400 that says what
 * to do.
 *
 * Run: npx tsx --test test/gateway/chat-templates.test.ts
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ModelRegistry } from '../../coordinator/registry/registry.ts';
import { SqliteStateStore } from '../../coordinator/store/state-store.ts';
import { renderPrompt, type ChatMessage } from '../../model/chat-template.ts';
import { Tokenizer } from '../../model/tokenizer.ts';
import { chatTemplateFor, trainedOnChats } from '../../gateway/chat-templates.ts';
import { GatewayError } from '../../gateway/errors.ts';
import type { ModelFiles, RegistrySource } from '../../gateway/registry-source.ts';
import { DirRegistrySource } from '../../gateway/registry-source.ts';
import { trainingLineage, withTrainingLineage } from '../../gateway/training-lineage.ts';
import { gptBackendFactory } from '../../gateway/gpt-backend.ts';
import { createGateway } from '../../gateway/server.ts';
import { silentLogger } from '../../common/log.ts';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { writeGpt2Folder } from '../support/gpt2-folder.ts';

const tokenizer = Tokenizer.fromJSON(JSON.parse(readFileSync(new URL('../model/fixtures/tokenizer-512.json', import.meta.url), 'utf8')));
const EOT = tokenizer.endOfText!;

const CONVERSATION: ChatMessage[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hello there' },
  { role: 'assistant', content: 'Hi.' },
  { role: 'user', content: 'Name a colour' },
];

const json = (value: unknown) => new Uint8Array(Buffer.from(JSON.stringify(value)));
const filesOf = (entries: Record<string, unknown>): ModelFiles => new Map(Object.entries(entries).map(([k, v]) => [k, json(v)]));
const sftLineage = { jobId: 'job-1', spec: { kind: 'sft', data: { corpus: '/data/chats.jsonl' } }, parent: { name: 'base', version: 1 } };

/** A ChatML-like template in the style of transformers' examples, with the bos and eos tokens it is given. */
const CHATML = "{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
/** tokenizer_config.json as a GPT-2 folder has it, plus a chat template. */
const GPT2_TOKENIZER_CONFIG = { add_prefix_space: false, bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', unk_token: '<|endoftext|>', model_max_length: 1024, tokenizer_class: 'GPT2Tokenizer', chat_template: CHATML };

function refusal(fn: () => unknown): GatewayError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof GatewayError, String(err));
    return err;
  }
  assert.fail('expected a refusal');
}

describe('the template a version trained here on conversations is served with', () => {
  test('an SFT version renders a conversation to exactly the ids renderPrompt gives the trainer, and ends a turn at <|endoftext|>', () => {
    const chat = chatTemplateFor({ files: new Map(), training: sftLineage, label: 'chat v1' }, tokenizer);
    assert.equal(chat.source, 'meshtrain');
    assert.deepEqual(chat.render(CONVERSATION), renderPrompt(CONVERSATION, tokenizer));
    assert.deepEqual(chat.endOfTurn, [EOT]);
    // A user who types the end-of-text marker gets its characters, not the special token: as in training, and
    // unlike rendering the conversation as text and tokenizing that.
    const typed: ChatMessage[] = [{ role: 'user', content: 'say <|endoftext|> now' }];
    const ids = chat.render(typed);
    assert.deepEqual(ids, renderPrompt(typed, tokenizer));
    assert.ok(!ids.includes(EOT));
    assert.notDeepEqual(ids, tokenizer.encode(tokenizer.decode(ids)));
  });

  test('SFT, DPO and distillation on conversations are trained with the template; pretraining and distillation on text are not', () => {
    const spec = (kind: string, corpus = '/data/x.jsonl') => ({ spec: { kind, data: { corpus } } });
    assert.equal(trainedOnChats(spec('sft')), true);
    assert.equal(trainedOnChats(spec('dpo')), true);
    assert.equal(trainedOnChats(spec('distill')), true);
    assert.equal(trainedOnChats(spec('distill', 'demo')), false);
    assert.equal(trainedOnChats(spec('pretrain', 'demo')), false);
    assert.equal(trainedOnChats({}), false);
    assert.equal(trainedOnChats({ spec: 'sft' }), false, 'a malformed lineage is not trusted');
  });

  test('it wins over a tokenizer_config.json template the files may carry: the model learned its own', () => {
    const chat = chatTemplateFor({ files: filesOf({ 'tokenizer_config.json': GPT2_TOKENIZER_CONFIG }), training: sftLineage, label: 'chat v1' }, tokenizer);
    assert.equal(chat.source, 'meshtrain');
  });

  test('a system message after the first, or a conversation that does not end with the user, is a 400 naming messages', () => {
    const chat = chatTemplateFor({ files: new Map(), training: sftLineage, label: 'chat v1' }, tokenizer);
    const late = refusal(() => chat.render([{ role: 'user', content: 'hi' }, { role: 'system', content: 'late' }, { role: 'user', content: 'hi' }]));
    assert.equal(late.statusCode, 400);
    assert.equal(late.param, 'messages');
    assert.match(late.message, /messages\[1\]: a system message may only come first/);
    assert.match(refusal(() => chat.render([{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }])).message, /The last message must be from the user/);
  });
});

describe("an imported model's tokenizer_config.json chat_template, rendered with @huggingface/jinja", () => {
  const imported = (files: Record<string, unknown>) => chatTemplateFor({ files: filesOf(files), training: { imported: { source: '/models/gpt2' } }, label: 'gpt2 v1' }, tokenizer);

  test('a GPT-2-style config renders with its bos and eos tokens and the generation prompt, tokenized with specials recognised', () => {
    const chat = imported({ 'tokenizer_config.json': GPT2_TOKENIZER_CONFIG });
    assert.equal(chat.source, 'tokenizer_config.json');
    const want = '<|endoftext|><|im_start|>system\nBe brief.<|endoftext|>\n<|im_start|>user\nHello there<|endoftext|>\n<|im_start|>assistant\nHi.<|endoftext|>\n<|im_start|>user\nName a colour<|endoftext|>\n<|im_start|>assistant\n';
    const ids = chat.render(CONVERSATION);
    assert.deepEqual(ids, tokenizer.encode(want));
    assert.equal(ids[0], EOT, 'bos_token is the special token, not its characters');
    assert.equal(ids.filter((id) => id === EOT).length, 5);
    assert.deepEqual(chat.endOfTurn, [EOT], 'eos_token ends the turn');
  });

  test("generation_config.json's eos_token_id ends the turn too, and an AddedToken-object eos_token is read by its content", () => {
    const other = tokenizer.encode(' the');
    assert.equal(other.length, 1);
    const chat = imported({
      'tokenizer_config.json': { ...GPT2_TOKENIZER_CONFIG, eos_token: { __type: 'AddedToken', content: '<|endoftext|>', special: true } },
      'generation_config.json': { eos_token_id: [EOT, other[0]] },
    });
    assert.deepEqual([...chat.endOfTurn].sort((a, b) => a - b), [other[0]!, EOT].sort((a, b) => a - b));
    assert.match(tokenizer.decode(chat.render([{ role: 'user', content: 'x' }])), /^<\|endoftext\|><\|im_start\|>user\nx<\|endoftext\|>\n/);
  });

  test('a list of named templates uses the "default" one, as transformers does', () => {
    const chat = imported({ 'tokenizer_config.json': { ...GPT2_TOKENIZER_CONFIG, chat_template: [{ name: 'tool_use', template: 'TOOLS' }, { name: 'default', template: '{{ messages[0].content }}!' }] } });
    assert.equal(tokenizer.decode(chat.render([{ role: 'user', content: 'hey' }])), 'hey!');
  });

  test("a template that raises refuses the conversation with a 400 carrying the template's own message", () => {
    const strict = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System messages are not supported') }}{% endif %}{{ m.content }}{% endfor %}";
    const err = refusal(() => imported({ 'tokenizer_config.json': { chat_template: strict } }).render(CONVERSATION));
    assert.equal(err.statusCode, 400);
    assert.equal(err.code, 'GW_ERR_BAD_REQUEST');
    assert.match(err.message, /chat template \(tokenizer_config\.json\) refused the conversation: System messages are not supported/);
  });
});

describe('a model with no chat template', () => {
  const none = (files: Record<string, unknown>, training: Record<string, unknown> = { jobId: 'job-9', spec: { kind: 'pretrain', data: { corpus: 'demo' } } }) =>
    refusal(() => chatTemplateFor({ files: filesOf(files), training, label: 'base v2' }, tokenizer).render(CONVERSATION));

  test('answers 400 GW_ERR_NO_CHAT_TEMPLATE in OpenAI shape, saying why and what to do instead', () => {
    const err = none({ 'tokenizer_config.json': { model_max_length: 64 } });
    assert.equal(err.statusCode, 400);
    assert.deepEqual(err.toBody().error, { message: err.message, type: 'invalid_request_error', param: 'model', code: null });
    assert.match(err.message, /base v2 has none: it was not trained here with SFT or DPO, and it has no tokenizer_config\.json with a chat_template/);
    assert.match(err.message, /Send a prompt you format yourself to v1\/completions, or serve a version that has one/);
  });

  test('a chat_template that does not parse, or a tokenizer_config.json that is not JSON, is no template, and the 400 says so', () => {
    assert.match(none({ 'tokenizer_config.json': { chat_template: '{% for m in messages %}' } }).message, /does not parse/);
    assert.match(refusal(() => chatTemplateFor({ files: new Map([['tokenizer_config.json', new Uint8Array(Buffer.from('[1,'))]]), training: {}, label: 'x v1' }, tokenizer).render(CONVERSATION)).message, /its tokenizer_config\.json is not a JSON object/);
  });
});

describe('the training lineage of a version no job trained', () => {
  function registryDir(t: TestContext) {
    const data = mkdtempSync(join(tmpdir(), 'gw-lineage-'));
    t.after(() => rmSync(data, { recursive: true, force: true }));
    const state = new SqliteStateStore(join(data, 'state.db'));
    t.after(() => state.close());
    return { dir: join(data, 'registry'), registry: new ModelRegistry(join(data, 'registry'), state.database) };
  }
  const weights = (tag: string) => ({ 'config.json': Buffer.from('{}'), 'model.safetensors': Buffer.from(tag), 'tokenizer.json': Buffer.from('{}') });

  test("a quantized version of a merged adapter of an SFT job is served as the SFT job's training says, reading lineage only", async (t) => {
    const { dir, registry } = registryDir(t);
    await registry.register('chat', weights('sft'), sftLineage); // v1: an SFT job's
    await registry.register('chat', weights('merged'), { merged: true, parent: { name: 'chat', version: 1 } }); // v2
    await registry.register('chat', weights('int8'), { parent: { name: 'chat', version: 2 }, quantization: { scheme: 'int8' } }); // v3
    await registry.register('chat', weights('retrained'), { ...sftLineage, spec: { kind: 'pretrain', data: { corpus: 'demo' } }, parent: { name: 'chat', version: 3 } }); // v4: a job of its own
    const source = new DirRegistrySource(dir);
    const loads: string[] = [];
    const counting: RegistrySource = { ...source, models: () => source.models(), lineage: (n, v) => source.lineage(n, v), load: (n, v) => (loads.push(`${n}@${v}`), source.load(n, v)) };
    const v3 = await withTrainingLineage(counting).load('chat', 3);
    assert.deepEqual(v3.meta.training, sftLineage);
    assert.deepEqual(loads, ['chat@3'], 'the ancestors were read as lineage only, not loaded');
    assert.equal((await withTrainingLineage(counting).load('chat', 4)).meta.training, undefined, 'a version a job trained is its own lineage');
    assert.equal((await withTrainingLineage(counting).load('chat', 1)).meta.training, undefined);
  });

  test('a walk stops after MAX_HOPS rather than following a cycle, and a removed parent leaves the version without one', async (t) => {
    const cycle = { parent: { name: 'm', version: 1 }, quantization: {} };
    let reads = 0;
    const looped = await trainingLineage({ lineage: async () => (reads++, cycle) }, cycle);
    assert.equal(looped, cycle);
    assert.equal(reads, 8);
    const { dir, registry } = registryDir(t);
    await registry.register('q', weights('int8'), { parent: { name: 'gone', version: 7 }, quantization: { scheme: 'int8' } });
    const v1 = await withTrainingLineage(new DirRegistrySource(dir)).load('q', 1);
    assert.equal(v1.meta.training, undefined);
  });

  test("the folder source checks a version's lineage.json against its manifest before trusting it", async (t) => {
    const { dir, registry } = registryDir(t);
    const v = await registry.register('m', weights('x'), sftLineage);
    const source = new DirRegistrySource(dir);
    assert.deepEqual(await source.lineage('m', 1), sftLineage);
    writeFileSync(join(v.path, 'lineage.json'), JSON.stringify({ ...sftLineage, spec: { kind: 'dpo' } }, null, 2));
    await assert.rejects(source.lineage('m', 1), (err: GatewayError) => err.code === 'GW_ERR_CHECKSUM');
    await assert.rejects(source.lineage('m', 9), (err: GatewayError) => err.code === 'GW_ERR_REGISTRY');
  });
});

describe("the GPT backend factory gives each version its template", () => {
  /** The files of a GPT-2 folder as an import registers them (context 16), with `config` as tokenizer_config.json. */
  function gpt2Files(t: TestContext, config: unknown): Map<string, Uint8Array> {
    const dir = mkdtempSync(join(tmpdir(), 'gw-chat-gpt2-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    writeGpt2Folder(dir);
    const files = new Map(['config.json', 'model.safetensors', 'tokenizer.json', 'generation_config.json'].map((f) => [f, new Uint8Array(readFileSync(join(dir, f)))]));
    if (config !== undefined) files.set('tokenizer_config.json', json(config));
    return files;
  }
  const meta = (lineage: Record<string, unknown>) => ({ name: 'gpt2', version: 1, createdMs: 0, source: 'test', manifest: {}, verified: true, lineage });

  test("an imported GPT-2 answers chat through its tokenizer_config.json template, as a completion of the rendered prompt's ids would", async (t) => {
    await tf.setBackend('wasm');
    // Short: the folder's model has a context of 16 tokens.
    const template = '{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}';
    const backend = await gptBackendFactory(gpt2Files(t, { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', chat_template: template }), meta({ imported: { source: '/gpt2' } }));
    const gateway = createGateway({ backends: new Map([['gpt2', backend]]), log: silentLogger });
    t.after(() => gateway.close());
    assert.equal(backend.chat?.source, 'tokenizer_config.json');
    const ids = backend.chat!.render([{ role: 'user', content: 'the fox' }]);
    assert.deepEqual(ids, backend.tokenize('<|endoftext|>the fox<|endoftext|>A:'));
    const chat = (await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model: 'gpt2', messages: [{ role: 'user', content: 'the fox' }], temperature: 0 } })).json();
    const completion = (await gateway.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'gpt2', prompt: ids, max_tokens: 16 - ids.length, temperature: 0 } })).json();
    assert.equal(chat.usage.prompt_tokens, ids.length);
    assert.equal(chat.choices[0].message.content, completion.choices[0].text);
    assert.equal(chat.choices[0].finish_reason, completion.choices[0].finish_reason);
  });

  test('a pretrained version with no tokenizer_config.json serves completions but refuses chat with the 400', async (t) => {
    await tf.setBackend('wasm');
    const backend = await gptBackendFactory(gpt2Files(t, undefined), meta({ jobId: 'job-1', spec: { kind: 'pretrain', data: { corpus: 'demo' } } }));
    const gateway = createGateway({ backends: new Map([['gpt2', backend]]), log: silentLogger });
    t.after(() => gateway.close());
    const chat = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model: 'gpt2', messages: [{ role: 'user', content: 'hi' }] } });
    assert.equal(chat.statusCode, 400);
    assert.match(chat.json().error.message, /gpt2 v1 has none: it was not trained here with SFT or DPO/);
    const completion = await gateway.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'gpt2', prompt: 'hi', max_tokens: 2 } });
    assert.equal(completion.statusCode, 200);
  });
});
