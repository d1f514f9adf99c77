/** The gateway's other routes (/v1/models, /healthz, /metrics), its API key, and its shutdown. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeBackend } from '../../gateway/fake-backend.ts';
import { createGateway } from '../../gateway/server.ts';
import { silentLogger } from '../../common/log.ts';
import { until } from '../support/until.ts';
import { harness, MODEL } from './support.ts';

test('GET /v1/models lists the served models in OpenAI\'s list shape, and /v1/models/:id shows one', async (t) => {
  const h = harness(t, { extra: [new FakeBackend({ id: 'another', createdS: 1_700_000_000 })] });
  const res = await h.gateway.app.inject({ method: 'GET', url: '/v1/models' });
  assert.equal(res.statusCode, 200);
  assert.deepEqual(res.json(), {
    object: 'list',
    data: [
      { id: 'another', object: 'model', created: 1_700_000_000, owned_by: 'meshtrain-fake' },
      { id: MODEL, object: 'model', created: 0, owned_by: 'meshtrain-fake' },
    ],
  });
  assert.deepEqual((await h.gateway.app.inject({ method: 'GET', url: `/v1/models/${MODEL}` })).json(), { id: MODEL, object: 'model', created: 0, owned_by: 'meshtrain-fake' });
  const missing = await h.gateway.app.inject({ method: 'GET', url: '/v1/models/nope' });
  assert.equal(missing.statusCode, 404);
  assert.equal(missing.json().error.code, 'model_not_found');
});

test('an unknown route is a 404 in OpenAI\'s error shape', async (t) => {
  const h = harness(t);
  const res = await h.gateway.app.inject({ method: 'POST', url: '/v1/embeddings', payload: {} });
  assert.equal(res.statusCode, 404);
  assert.deepEqual(res.json(), { error: { message: 'Unknown request URL: POST /v1/embeddings.', type: 'invalid_request_error', param: null, code: 'not_found' } });
});

test('with an API key, /v1 routes need it as a Bearer token; /healthz and /metrics do not', async (t) => {
  const h = harness(t, { apiKey: 'sk-test-key' });
  const body = { prompt: 'hi', max_tokens: 2 };
  const none = await h.complete(body);
  assert.equal(none.status, 401);
  assert.deepEqual(none.json.error, { message: "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", type: 'invalid_request_error', param: null, code: 'invalid_api_key' });
  const wrong = await h.complete(body, { authorization: 'Bearer sk-wrong' });
  assert.equal(wrong.status, 401);
  assert.equal(wrong.json.error.message, 'Incorrect API key provided.');
  assert.equal((await h.gateway.app.inject({ method: 'GET', url: '/v1/models' })).statusCode, 401);
  assert.equal((await h.complete(body, { authorization: 'Bearer sk-test-key' })).status, 200);
  assert.equal(h.fake.generateCalls, 1, 'refused requests generate nothing');
  assert.equal((await h.gateway.app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
  assert.equal((await h.gateway.app.inject({ method: 'GET', url: '/metrics' })).statusCode, 200);
});

test('/healthz reports the served models', async (t) => {
  const h = harness(t);
  const res = await h.gateway.app.inject({ method: 'GET', url: '/healthz' });
  assert.equal(res.json().status, 'ok');
  assert.deepEqual(res.json().models, [{ id: MODEL, version: null, contextLength: 256 }]);
});

test('/metrics is valid Prometheus exposition with latency by model and status, tokens and in-flight requests', async (t) => {
  const h = harness(t);
  await h.complete({ prompt: 'abc', max_tokens: 5, n: 2 });
  await h.complete({ prompt: 'abc', max_tokens: 999 });
  await h.complete({ model: 'nope', prompt: 'abc' });
  const res = await h.gateway.app.inject({ method: 'GET', url: '/metrics' });
  assert.match(String(res.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  const text = res.body;
  // The text format: HELP and TYPE lines, then samples (blank lines between families) `name{label="value",…} number`.
  const typed = new Map<string, string>();
  for (const line of text.trimEnd().split('\n')) {
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (type) typed.set(type[1]!, type[2]!);
    else if (line !== '' && !line.startsWith('# HELP ')) {
      const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*\})? (-?[0-9.e+-]+|[Nn][Aa][Nn]|[+-]?Inf)$/.exec(line);
      assert.ok(sample, `not a valid sample line: ${line}`);
      const family = sample[1]!.replace(/_(bucket|sum|count)$/, '');
      assert.ok(typed.has(sample[1]!) || typed.has(family), `sample ${sample[1]} before its TYPE line`);
    }
  }
  assert.equal(typed.get('meshtrain_gateway_request_duration_seconds'), 'histogram');
  assert.equal(typed.get('meshtrain_gateway_generated_tokens_total'), 'counter');
  assert.equal(typed.get('meshtrain_gateway_requests_in_flight'), 'gauge');
  assert.match(text, /^meshtrain_gateway_request_duration_seconds_count\{model="fake-char",status="200",route="\/v1\/completions"\} 1$/m);
  assert.match(text, /^meshtrain_gateway_request_duration_seconds_count\{model="fake-char",status="400",route="\/v1\/completions"\} 1$/m);
  assert.match(text, /^meshtrain_gateway_request_duration_seconds_count\{model="unknown",status="404",route="\/v1\/completions"\} 1$/m, 'unknown model names do not become label values');
  assert.match(text, /^meshtrain_gateway_generated_tokens_total\{model="fake-char"\} 10$/m);
  assert.match(text, /^meshtrain_gateway_prompt_tokens_total\{model="fake-char"\} 3$/m);
  assert.match(text, /^meshtrain_gateway_process_cpu_seconds_total /m);
});

test('closing the gateway lets a running request finish, then closes the backends', async (t) => {
  let closedBackends = 0;
  const fake = Object.assign(new FakeBackend({ delayMsPerToken: 5 }), { close: async () => void closedBackends++ });
  const gateway = createGateway({ backends: new Map([[fake.info.id, fake]]), log: silentLogger });
  t.after(() => gateway.close());
  const { port } = await gateway.listen({ port: 0 });
  const pending = fetch(`http://127.0.0.1:${port}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt: 'x', max_tokens: 30 }) });
  await until('the running request to sample 3 tokens', async () => fake.tokensSampled >= 3, 10_000, 5);
  const closing = gateway.close();
  const res = await pending;
  assert.equal(res.status, 200);
  assert.equal(((await res.json()) as { choices: Array<{ text: string }> }).choices[0]!.text.length, 30);
  await closing;
  assert.equal(closedBackends, 1);
});

test('a backend whose model id differs from the name it is served under is refused at start', () => {
  assert.throws(() => createGateway({ backends: new Map([['x', new FakeBackend({ id: 'y' })]]), log: silentLogger }), /registered as 'x' reports model id 'y'/);
});
