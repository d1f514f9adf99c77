/**
 * POST /v1/chat/completions on FakeBackends, in process (app.inject): OpenAI's request and response shapes, the
 * chat template and its end of turn, streams, logprobs, validation, and that deployments, shadows, auth, rate
 * limits, prompt limits and metrics treat chat as they treat completions.
 *
 * Run: npx tsx --test test/gateway/chat-completions.test.ts
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../common/log.ts';
import { jinjaChatTemplate } from '../../gateway/chat-templates.ts';
import { DeploymentManager } from '../../gateway/deployments.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { FAKE_CHAT_TEMPLATE, FakeBackend, type FakeBackendOptions } from '../../gateway/fake-backend.ts';
import type { InferenceBackend } from '../../gateway/inference-backend.ts';
import { createGateway, type CreateGatewayOptions } from '../../gateway/server.ts';
import { generateRequest, MODEL, sseEvents } from './support.ts';

const KEY = 'sk-chat';
const ADMIN = 'adm-chat';

function served(t: TestContext, opts: { fake?: FakeBackendOptions; extra?: InferenceBackend[]; gateway?: Partial<CreateGatewayOptions> } = {}) {
  const fake = new FakeBackend({ id: MODEL, ...opts.fake });
  const backends = new Map<string, InferenceBackend>([[MODEL, fake], ...(opts.extra ?? []).map((b) => [b.info.id, b] as [string, InferenceBackend])]);
  const gateway = createGateway({ backends, log: silentLogger, ...opts.gateway });
  t.after(() => gateway.close());
  const chat = async (body: Record<string, unknown>, headers: Record<string, string> = {}) => {
    const res = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model: MODEL, ...body }, headers });
    let json: any;
    try {
      json = res.json();
    } catch {
      json = undefined;
    }
    return { status: res.statusCode, json, body: res.body, headers: res.headers };
  };
  return { gateway, fake, chat };
}

const HELLO = [{ role: 'user', content: 'Hello' }];
/** What the fake's template makes of HELLO: the prompt the model continues. */
const HELLO_PROMPT = 'user: Hello\nassistant:';
const fakeIds = (text: string) => new FakeBackend().tokenize(text);

describe('a chat completion', () => {
  test("has OpenAI's shape: a chat.completion whose choices hold the assistant's message, a finish_reason, and usage", async (t) => {
    const { chat } = served(t);
    const res = await chat({ messages: HELLO, max_tokens: 8, temperature: 0 });
    assert.equal(res.status, 200, res.body);
    const c = res.json;
    assert.match(c.id, /^chatcmpl-[0-9a-f]{24}$/);
    assert.equal(c.object, 'chat.completion');
    assert.equal(c.model, MODEL);
    assert.equal(typeof c.created, 'number');
    assert.equal(c.choices.length, 1);
    assert.deepEqual(Object.keys(c.choices[0]).sort(), ['finish_reason', 'index', 'logprobs', 'message']);
    assert.deepEqual(Object.keys(c.choices[0].message).sort(), ['content', 'refusal', 'role']);
    assert.equal(c.choices[0].message.role, 'assistant');
    assert.equal(c.choices[0].logprobs, null);
    assert.deepEqual(c.usage, { prompt_tokens: HELLO_PROMPT.length, completion_tokens: c.usage.completion_tokens, total_tokens: HELLO_PROMPT.length + c.usage.completion_tokens });
    assert.ok(res.headers['x-meshtrain-seed']);
  });

  test('the prompt is the template rendering the conversation, and the reply is what the model continues it with', async (t) => {
    const { chat, fake } = served(t);
    const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Yo' }, { role: 'user', content: 'More' }];
    const res = await chat({ messages, max_tokens: 12, temperature: 0 });
    const prompt = 'system: Be brief.\nuser: Hi\nassistant: Yo\nuser: More\nassistant:';
    const direct = await fake.generate(generateRequest(fakeIds(prompt), { maxTokens: 12, stopTokenIds: fakeIds('\n') }));
    assert.equal(res.json.usage.prompt_tokens, prompt.length);
    assert.equal(res.json.choices[0].message.content, direct.choices[0]!.text);
    // Text parts are one message's text, joined with newlines.
    const parts = await chat({ messages: [{ role: 'user', content: [{ type: 'text', text: 'Hel' }, { type: 'text', text: 'lo' }] }], max_tokens: 12, temperature: 0 });
    const joined = await chat({ messages: [{ role: 'user', content: 'Hel\nlo' }], max_tokens: 12, temperature: 0 });
    assert.deepEqual(parts.json.choices, joined.json.choices);
  });

  test("generation stops at the template's end-of-turn token, which is not part of the reply but is counted", async (t) => {
    // Greedy text of the fake for this prompt, then a template whose end of turn is its fourth character.
    const free = await new FakeBackend().generate(generateRequest(fakeIds(HELLO_PROMPT), { maxTokens: 12 }));
    const text = free.choices[0]!.text;
    const cut = text.indexOf(text[3]!);
    const template = jinjaChatTemplate(FAKE_CHAT_TEMPLATE, fakeIds, { specials: {}, endOfTurn: fakeIds(text[3]!), source: 'test' });
    const { chat } = served(t, { fake: { chat: template } });
    const res = await chat({ messages: HELLO, max_tokens: 12, temperature: 0 });
    assert.equal(res.json.choices[0].message.content, text.slice(0, cut));
    assert.equal(res.json.choices[0].finish_reason, 'stop');
    assert.equal(res.json.usage.completion_tokens, cut + 1);
    const short = await chat({ messages: HELLO, max_tokens: cut, temperature: 0 });
    assert.equal(short.json.choices[0].finish_reason, 'length');
  });

  test('without max_tokens a reply may use the rest of the context; max_completion_tokens is max_tokens by its new name', async (t) => {
    const { chat } = served(t, { fake: { contextLength: 40, chat: jinjaChatTemplate(FAKE_CHAT_TEMPLATE, fakeIds, { specials: {}, endOfTurn: [], source: 'test' }) } });
    const all = await chat({ messages: HELLO, temperature: 0 });
    assert.equal(all.json.usage.completion_tokens, 40 - HELLO_PROMPT.length);
    assert.equal(all.json.choices[0].finish_reason, 'length');
    const some = await chat({ messages: HELLO, temperature: 0, max_completion_tokens: 5 });
    assert.equal(some.json.usage.completion_tokens, 5);
    assert.equal(some.json.choices[0].message.content, all.json.choices[0].message.content.slice(0, 5));
    const tooMany = await chat({ messages: HELLO, max_tokens: 40 });
    assert.equal(tooMany.status, 400);
    assert.equal(tooMany.json.error.code, 'context_length_exceeded');
    assert.equal(tooMany.json.error.param, 'max_tokens');
  });

  test('n choices are independent, a seed reproduces them, stop sequences cut them', async (t) => {
    const { chat } = served(t);
    const body = { messages: HELLO, max_tokens: 16, temperature: 1, n: 3, seed: 7 };
    const a = await chat(body);
    const b = await chat(body);
    assert.deepEqual(a.json.choices, b.json.choices);
    assert.deepEqual(a.json.choices.map((c: any) => c.index), [0, 1, 2]);
    assert.ok(new Set(a.json.choices.map((c: any) => c.message.content)).size > 1, 'choices differ');
    assert.equal(a.json.usage.prompt_tokens, HELLO_PROMPT.length, 'the prompt is counted once');
    const content = a.json.choices[0].message.content as string;
    const stop = content.slice(4, 6);
    const cut = await chat({ ...body, n: 1, stop });
    assert.equal(cut.json.choices[0].message.content, content.slice(0, content.indexOf(stop)));
    assert.equal(cut.json.choices[0].finish_reason, 'stop');
  });

  test('logprobs: each reply token with its log-probability, bytes, and exactly top_logprobs alternatives', async (t) => {
    const { chat } = served(t);
    const res = await chat({ messages: HELLO, max_tokens: 10, temperature: 1, seed: 3, logprobs: true, top_logprobs: 3 });
    const c = res.json.choices[0];
    const content = c.logprobs.content as Array<{ token: string; logprob: number; bytes: number[]; top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }> }>;
    assert.equal(content.length, res.json.usage.completion_tokens);
    assert.equal(content.map((t) => t.token).join(''), c.message.content);
    for (const t of content) {
      assert.deepEqual(Object.keys(t).sort(), ['bytes', 'logprob', 'token', 'top_logprobs']);
      assert.deepEqual(t.bytes, [...Buffer.from(t.token)]);
      assert.equal(t.top_logprobs.length, 3, 'the chosen token is not added when it is not among the top 3');
      assert.ok(t.top_logprobs[0]!.logprob >= t.top_logprobs[2]!.logprob);
      assert.ok(t.logprob <= 0);
    }
    const sampledOutsideTop = content.some((t) => !t.top_logprobs.some((a) => a.token === t.token));
    assert.ok(sampledOutsideTop, 'at temperature 1 some sampled token lies outside the top 3 (else the test proves nothing)');
    const none = await chat({ messages: HELLO, max_tokens: 4, logprobs: true });
    assert.ok(none.json.choices[0].logprobs.content.every((t: any) => t.top_logprobs.length === 0));
  });
});

describe('a streamed chat completion', () => {
  test('sends the role first, then content deltas that add up to the whole reply, then the finish_reason, then [DONE]', async (t) => {
    const { chat } = served(t);
    const body = { messages: HELLO, max_tokens: 20, temperature: 0.8, seed: 11, n: 2 };
    const whole = await chat(body);
    const res = await chat({ ...body, stream: true });
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /^text\/event-stream/);
    const events = sseEvents(res.body) as any[];
    assert.equal(events.at(-1), '[DONE]');
    const chunks = events.slice(0, -1);
    for (const c of chunks) {
      assert.equal(c.object, 'chat.completion.chunk');
      assert.equal(c.id, chunks[0].id);
      assert.match(c.id, /^chatcmpl-/);
      assert.equal(c.choices.length, 1);
      assert.ok(!('usage' in c), 'no usage field unless include_usage');
    }
    for (const index of [0, 1]) {
      const mine = chunks.map((c) => c.choices[0]).filter((c) => c.index === index);
      assert.deepEqual(mine[0], { index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null });
      assert.deepEqual(mine.at(-1), { index, delta: {}, logprobs: null, finish_reason: whole.json.choices[index].finish_reason });
      assert.equal(mine.slice(1, -1).map((c) => c.delta.content).join(''), whole.json.choices[index].message.content);
      assert.ok(mine.slice(1, -1).every((c) => c.finish_reason === null && !('role' in c.delta)));
    }
  });

  test('with stream_options.include_usage every chunk has usage null and a last chunk with no choices has the usage', async (t) => {
    const { chat } = served(t);
    const body = { messages: HELLO, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 1 };
    const whole = await chat(body);
    const events = sseEvents((await chat({ ...body, stream: true, stream_options: { include_usage: true } })).body) as any[];
    const chunks = events.slice(0, -1);
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, whole.json.usage);
    assert.ok(chunks.slice(0, -1).every((c) => c.usage === null));
    const streamedLogprobs = chunks.slice(0, -1).flatMap((c) => c.choices[0].logprobs?.content ?? []);
    assert.deepEqual(streamedLogprobs, whole.json.choices[0].logprobs.content);
  });
});

describe('chat requests are checked as OpenAI checks them', () => {
  const BAD: Array<[string, Record<string, unknown>, { status: number; param: string | null; message: RegExp; code?: string | null }]> = [
    ['an unknown field', { messages: HELLO, tools: [] }, { status: 400, param: 'tools', message: /^Unrecognized request argument supplied: tools$/ }],
    ['no messages', {}, { status: 400, param: 'messages', message: /Missing required parameter: 'messages'/ }],
    ['an empty conversation', { messages: [] }, { status: 400, param: 'messages', message: /expected a non-empty array of messages/ }],
    ['a tool message', { messages: [{ role: 'tool', content: 'x', tool_call_id: 'a' }] }, { status: 400, param: 'messages[0]', message: /expected one of system, user, assistant, got "tool"/ }],
    ['a message with a name', { messages: [{ role: 'user', content: 'x', name: 'bob' }] }, { status: 400, param: 'messages[0]', message: /'messages\[0\]\.name' is not supported/, code: 'unsupported_parameter' }],
    ['an image part', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, { status: 400, param: 'messages[0]', message: /is a "image_url" part; this server reads text parts only/, code: 'unsupported_parameter' }],
    ['null content', { messages: [{ role: 'user', content: null }] }, { status: 400, param: 'messages[0]', message: /expected a string or a non-empty array of text parts/ }],
    ['top_logprobs without logprobs', { messages: HELLO, top_logprobs: 2 }, { status: 400, param: 'top_logprobs', message: /'logprobs' must be set to true/ }],
    ['top_logprobs over 20', { messages: HELLO, logprobs: true, top_logprobs: 21 }, { status: 400, param: 'top_logprobs', message: /between 0 and 20/ }],
    ['max_tokens and max_completion_tokens that disagree', { messages: HELLO, max_tokens: 3, max_completion_tokens: 4 }, { status: 400, param: 'max_completion_tokens', message: /disagree/ }],
    ['a presence penalty', { messages: HELLO, presence_penalty: 0.5 }, { status: 400, param: 'presence_penalty', message: /not supported by this server/, code: 'unsupported_parameter' }],
    ['JSON mode', { messages: HELLO, response_format: { type: 'json_object' } }, { status: 400, param: 'response_format', message: /not supported by this server/, code: 'unsupported_parameter' }],
    ['an unknown model', { model: 'gpt-4o', messages: HELLO }, { status: 404, param: 'model', message: /The model 'gpt-4o' does not exist/, code: 'model_not_found' }],
  ];
  for (const [what, body, want] of BAD) {
    test(`${what} is refused with ${want.status}, naming ${want.param}`, async (t) => {
      const res = await served(t).chat(body);
      assert.equal(res.status, want.status, res.body);
      assert.equal(res.json.error.param, want.param);
      assert.match(res.json.error.message, want.message);
      if (want.code !== undefined) assert.equal(res.json.error.code, want.code);
      assert.equal(res.json.error.type, 'invalid_request_error');
    });
  }

  test('the defaults of what is not implemented are accepted, as are nulls', async (t) => {
    const { chat } = served(t);
    const res = await chat({ messages: HELLO, max_tokens: 2, presence_penalty: 0, frequency_penalty: 0, logit_bias: {}, response_format: { type: 'text' }, stop: null, seed: null, n: null, user: 'u-1', logprobs: false });
    assert.equal(res.status, 200, res.body);
  });

  test("a model without a chat template answers 400 GW_ERR_NO_CHAT_TEMPLATE, pointing at /v1/completions, and generates nothing", async (t) => {
    const { chat, fake } = served(t, { fake: { chat: null } });
    const res = await chat({ messages: HELLO });
    assert.equal(res.status, 400);
    assert.equal(res.json.error.param, 'model');
    assert.equal(res.json.error.code, null);
    assert.match(res.json.error.message, /no chat template.*not supported in the v1\/chat\/completions endpoint.*v1\/completions/);
    assert.equal(fake.generateCalls, 0);
  });
});

describe('chat goes through the same machinery as completions', () => {
  test('API keys, rate limits and --max-prompt-tokens apply; /metrics counts chat under its route', async (t) => {
    const { chat } = served(t, { gateway: { apiKey: KEY, rateLimit: { rps: 0.001, burst: 2 }, maxPromptTokens: 30 } });
    const auth = { authorization: `Bearer ${KEY}` };
    assert.equal((await chat({ messages: HELLO, max_tokens: 2 })).status, 401);
    const ok = await chat({ messages: HELLO, max_tokens: 2 }, auth);
    assert.equal(ok.status, 200);
    const long = await chat({ messages: [{ role: 'user', content: 'x'.repeat(40) }] }, auth);
    assert.equal(long.status, 400);
    assert.equal(long.json.error.code, 'context_length_exceeded');
    assert.equal(long.json.error.param, 'messages');
    const limited = await chat({ messages: HELLO, max_tokens: 2 }, auth);
    assert.equal(limited.status, 429);
    assert.ok(limited.headers['retry-after']);
  });

  test('the request histogram and token counters include chat, labelled by route', async (t) => {
    const { chat, gateway } = served(t);
    await chat({ messages: HELLO, max_tokens: 3, temperature: 0 });
    await chat({ messages: HELLO, top_logprobs: 1 });
    await gateway.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'Hi', max_tokens: 2 } });
    const text = (await gateway.app.inject({ method: 'GET', url: '/metrics' })).body;
    assert.match(text, /^meshtrain_gateway_request_duration_seconds_count\{model="fake-char",status="200",route="\/v1\/chat\/completions"\} 1$/m);
    assert.match(text, /^meshtrain_gateway_request_duration_seconds_count\{model="fake-char",status="400",route="\/v1\/chat\/completions"\} 1$/m);
    assert.match(text, /^meshtrain_gateway_request_duration_seconds_count\{model="fake-char",status="200",route="\/v1\/completions"\} 1$/m);
    assert.match(text, new RegExp(`^meshtrain_gateway_prompt_tokens_total\\{model="fake-char"\\} ${HELLO_PROMPT.length + 2}$`, 'm'));
  });

  test('a deployment routes chat to its versions sticky by user, names the version, and mirrors chat to its shadow', async (t) => {
    const resolve = async (model: string, version: number) => {
      if (model !== 'tiny') throw new GatewayError('GW_ERR_REGISTRY', `no ${model}`);
      return new FakeBackend({ id: model, variant: version === 3 ? 3 : 0 });
    };
    const deployments = new DeploymentManager({ resolve });
    const { gateway } = served(t, { gateway: { adminKey: ADMIN, deployments } });
    const admin = { authorization: `Bearer ${ADMIN}` };
    const put = await gateway.app.inject({ method: 'PUT', url: '/admin/deployments/assistant', headers: admin, payload: { primary: { model: 'tiny', version: 1 }, arms: [{ model: 'tiny', version: 3, weight: 0.5 }], shadows: [{ model: 'tiny', version: 2, percent: 100 }], reason: 'test' } });
    assert.equal(put.statusCode, 200, put.body);
    const seen = new Map<string, string>();
    for (let i = 0; i < 24; i++) {
      const user = `user-${i % 8}`;
      const res = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model: 'assistant', messages: HELLO, max_tokens: 6, temperature: 0, user } });
      assert.equal(res.statusCode, 200, res.body);
      assert.equal(res.json().model, 'assistant');
      const version = String(res.headers['x-meshtrain-version']);
      if (seen.has(user)) assert.equal(version, seen.get(user), 'sticky by the user field');
      seen.set(user, version);
    }
    assert.deepEqual(new Set(seen.values()), new Set(['tiny@v1', 'tiny@v3']), 'both arms served chat');
    const primaryRequests = [...seen.entries()].filter(([, v]) => v === 'tiny@v1').length * 3;
    let shadow: any;
    for (let i = 0; i < 200; i++) {
      shadow = (await gateway.app.inject({ method: 'GET', url: '/admin/deployments/assistant/comparison', headers: admin })).json().shadows[0];
      if (shadow.comparison.count === primaryRequests) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(shadow.comparison.count, primaryRequests, "every chat request of the primary was compared on the shadow");
    assert.equal(shadow.comparison.identicalRate, 1, 'the shadow (the same toy) answered the same chat prompt identically');
    const text = (await gateway.app.inject({ method: 'GET', url: '/metrics' })).body;
    assert.match(text, /meshtrain_gateway_deployment_request_duration_seconds_count\{deployment="assistant",version="tiny@v1",status="200",route="\/v1\/chat\/completions"\} \d+/);
  });
});
