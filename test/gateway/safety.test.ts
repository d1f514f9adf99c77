/** The gateway's safety layer: keys for /v1 and /admin, body and prompt limits, rate limits, and draining on close. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { InjectOptions } from 'fastify';
import { silentLogger, type Logger } from '../../common/log.ts';
import { decideAccess, KeyRing, type KeyMatch, type RouteClass } from '../../gateway/auth.ts';
import { runCli } from '../../gateway/cli.ts';
import { FakeBackend } from '../../gateway/fake-backend.ts';
import { createGateway, type CreateGatewayOptions } from '../../gateway/server.ts';
import { until } from '../support/until.ts';
import { MODEL } from './support.ts';

function gatewayWith(t: TestContext, opts: Partial<CreateGatewayOptions> = {}, fake = new FakeBackend({ id: MODEL })) {
  const gateway = createGateway({ backends: new Map([[fake.info.id, fake]]), log: silentLogger, ...opts });
  t.after(() => gateway.close());
  const inject = (method: 'GET' | 'POST', url: string, key?: string, payload?: InjectOptions['payload']) => {
    const opts: InjectOptions = { method, url, headers: key ? { authorization: `Bearer ${key}` } : {} };
    if (payload !== undefined) opts.payload = payload;
    return gateway.app.inject(opts);
  };
  return { gateway, fake, inject };
}

const completion = { model: MODEL, prompt: 'hi', max_tokens: 2 };

test('the access decision follows the table of route, presented key and configured keys', () => {
  const both = { apiKeys: true, adminKey: true };
  const cases: Array<[RouteClass, KeyMatch, { apiKeys: boolean; adminKey: boolean }, string]> = [
    ['open', 'none', both, 'allow'],
    ['inference', 'none', { apiKeys: false, adminKey: false }, 'allow'],
    ['inference', 'none', both, 'GW_ERR_UNAUTHORIZED'],
    ['inference', 'unknown', both, 'GW_ERR_UNAUTHORIZED'],
    ['inference', 'admin', both, 'GW_ERR_UNAUTHORIZED'],
    ['inference', 'api', both, 'allow'],
    ['admin', 'none', { apiKeys: false, adminKey: false }, 'GW_ERR_ADMIN_DISABLED'],
    ['admin', 'api', { apiKeys: true, adminKey: false }, 'GW_ERR_ADMIN_DISABLED'],
    ['admin', 'none', both, 'GW_ERR_UNAUTHORIZED'],
    ['admin', 'unknown', both, 'GW_ERR_UNAUTHORIZED'],
    ['admin', 'api', both, 'GW_ERR_FORBIDDEN'],
    ['admin', 'admin', both, 'allow'],
  ];
  for (const [route, key, configured, expected] of cases) {
    const d = decideAccess(route, key, configured);
    assert.equal(d.allow ? 'allow' : d.code, expected, `${route} ${key} ${JSON.stringify(configured)}`);
  }
});

test('the key ring tells API keys from the admin key and names clients by a digest prefix, never the key', () => {
  const ring = new KeyRing(['sk-a', 'sk-b'], 'adm');
  assert.equal(ring.match('sk-b').key, 'api');
  assert.equal(ring.match('adm').key, 'admin');
  assert.equal(ring.match('sk-c').key, 'unknown');
  assert.equal(ring.match('').key, 'none');
  assert.match(ring.match('sk-a').clientId!, /^key:[0-9a-f]{12}$/);
  assert.notEqual(ring.match('sk-a').clientId, ring.match('sk-b').clientId);
});

test('several API keys, given as a list or comma-separated, each open /v1; a missing or wrong key is a 401 invalid_api_key', async (t) => {
  const { inject, fake } = gatewayWith(t, { apiKey: ['sk-one', 'sk-two, sk-three'] });
  for (const key of ['sk-one', 'sk-two', 'sk-three']) assert.equal((await inject('POST', '/v1/completions', key, completion)).statusCode, 200, key);
  const none = await inject('POST', '/v1/completions', undefined, completion);
  assert.equal(none.statusCode, 401);
  assert.deepEqual(none.json().error, { message: "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", type: 'invalid_request_error', param: null, code: 'invalid_api_key' });
  const wrong = await inject('POST', '/v1/completions', 'sk-four', completion);
  assert.equal(wrong.statusCode, 401);
  assert.equal(wrong.json().error.code, 'invalid_api_key');
  assert.equal((await inject('GET', '/%761/models')).statusCode, 401, 'a percent-encoded path is guarded like the plain one');
  assert.equal(fake.generateCalls, 3);
});

test('admin routes are refused with 403 when no admin key is configured, even to a valid API key', async (t) => {
  const { inject } = gatewayWith(t, { apiKey: 'sk-one' });
  for (const key of [undefined, 'sk-one']) {
    const res = await inject('GET', '/admin/status', key);
    assert.equal(res.statusCode, 403);
    assert.equal(res.json().error.code, 'admin_disabled');
    assert.match(res.json().error.message, /--admin-key \(or MESHTRAIN_GATEWAY_ADMIN_KEY\)/);
  }
});

test('admin routes need the admin key: none or a wrong one is 401, an API key is 403, and encoded paths are guarded too', async (t) => {
  const { inject } = gatewayWith(t, { apiKey: 'sk-one', adminKey: 'adm-secret', rateLimit: { rps: 2, burst: 4 }, maxPromptTokens: 100 });
  assert.equal((await inject('GET', '/admin/status')).statusCode, 401);
  assert.equal((await inject('GET', '/admin/status', 'nope')).statusCode, 401);
  const apiKey = await inject('GET', '/admin/status', 'sk-one');
  assert.equal(apiKey.statusCode, 403);
  assert.deepEqual(apiKey.json().error, { message: 'This API key may not use admin routes; they need the admin key.', type: 'invalid_request_error', param: null, code: 'insufficient_permissions' });
  assert.equal((await inject('GET', '/%61dmin/status', 'sk-one')).statusCode, 403);
  assert.equal((await inject('GET', '/admin/not-yet-a-route')).statusCode, 401, 'unknown admin paths do not reveal themselves');
  assert.equal((await inject('GET', '/v1/models', 'adm-secret')).statusCode, 401, 'the admin key is not an API key');
  const ok = await inject('GET', '/admin/status', 'adm-secret');
  assert.equal(ok.statusCode, 200);
  assert.deepEqual(ok.json(), {
    models: [{ id: MODEL, version: null, contextLength: 256 }],
    config: { apiKeys: 1, maxBodyBytes: 1024 * 1024, maxPromptTokens: 100, rateLimit: { rps: 2, burst: 4 } },
    draining: false,
  });
  assert.doesNotMatch(ok.body, /sk-one|adm-secret/);
});

test('an admin key equal to an API key is refused at start', () => {
  assert.throws(() => createGateway({ backends: new Map([[MODEL, new FakeBackend()]]), log: silentLogger, apiKey: 'same', adminKey: 'same' }), /admin key must differ/);
});

test('a body over --max-body-bytes is a 413 in OpenAI\'s shape naming the limit', async (t) => {
  const { inject, fake } = gatewayWith(t, { bodyLimit: 1000 });
  const res = await inject('POST', '/v1/completions', undefined, { ...completion, prompt: 'x'.repeat(2000) });
  assert.equal(res.statusCode, 413);
  assert.deepEqual(res.json().error, { message: 'The request body is too large: the limit is 1000 bytes.', type: 'invalid_request_error', param: null, code: 'payload_too_large' });
  assert.equal(fake.generateCalls, 0);
});

test('the body limit defaults to 1 MiB', async (t) => {
  const { inject } = gatewayWith(t);
  assert.equal((await inject('POST', '/v1/completions', undefined, { ...completion, prompt: 'x'.repeat(1024 * 1024) })).statusCode, 413);
});

test('a prompt over --max-prompt-tokens is a 400 naming the limit, though it fits the model\'s context', async (t) => {
  const { inject, fake } = gatewayWith(t, { maxPromptTokens: 10 });
  const res = await inject('POST', '/v1/completions', undefined, { ...completion, prompt: 'x'.repeat(11) });
  assert.equal(res.statusCode, 400);
  assert.deepEqual(res.json().error, {
    message: 'The prompt is 11 tokens; this server accepts at most 10 prompt tokens (--max-prompt-tokens).',
    type: 'invalid_request_error',
    param: 'prompt',
    code: 'context_length_exceeded',
  });
  assert.equal((await inject('POST', '/v1/completions', undefined, { ...completion, prompt: 'x'.repeat(10) })).statusCode, 200);
  assert.equal(fake.generateCalls, 1);
});

test('over its rate limit a key gets 429 with Retry-After, other keys go on, and the counter names no key', async (t) => {
  const { inject, gateway } = gatewayWith(t, { apiKey: ['sk-fast', 'sk-other'], rateLimit: { rps: 0.5, burst: 2 } });
  assert.equal((await inject('POST', '/v1/completions', 'sk-fast', completion)).statusCode, 200);
  assert.equal((await inject('GET', '/v1/models', 'sk-fast')).statusCode, 200);
  const limited = await inject('POST', '/v1/completions', 'sk-fast', completion);
  assert.equal(limited.statusCode, 429);
  assert.equal(limited.headers['retry-after'], '2');
  assert.equal(limited.json().error.type, 'requests');
  assert.equal(limited.json().error.code, 'rate_limit_exceeded');
  assert.match(limited.json().error.message, /^Rate limit reached: 0\.5 requests per second \(burst 2\) per client\. Retry after 2 s\.$/);
  assert.equal((await inject('POST', '/v1/completions', 'sk-other', completion)).statusCode, 200);
  assert.equal((await inject('GET', '/healthz')).statusCode, 200, '/healthz is not limited');
  assert.equal((await inject('POST', '/v1/completions', 'sk-wrong', completion)).statusCode, 401, 'bad keys are refused before they use any bucket');
  const metrics = (await gateway.app.inject({ method: 'GET', url: '/metrics' })).body;
  assert.match(metrics, /^meshtrain_gateway_rate_limited_total 1$/m);
  assert.doesNotMatch(metrics, /sk-fast|sk-other/);
});

test('without API keys the rate limit is per client IP', async (t) => {
  const { gateway } = gatewayWith(t, { rateLimit: { rps: 1, burst: 1 } });
  const from = (remoteAddress: string) => gateway.app.inject({ method: 'GET', url: '/v1/models', remoteAddress });
  assert.equal((await from('10.0.0.1')).statusCode, 200);
  assert.equal((await from('10.0.0.1')).statusCode, 429);
  assert.equal((await from('10.0.0.2')).statusCode, 200);
});

test('closing drains: a running request finishes with 200, a new one gets 503 in OpenAI\'s shape, then close resolves', async (t) => {
  const fake = new FakeBackend({ id: MODEL, delayMsPerToken: 10 });
  const { gateway, inject } = gatewayWith(t, { drainTimeoutMs: 5000 }, fake);
  const { port } = await gateway.listen({ port: 0 });
  const url = `http://127.0.0.1:${port}/v1/completions`;
  const slow = fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...completion, max_tokens: 30 }) });
  await until('the slow request to sample 3 tokens', async () => fake.tokensSampled >= 3, 10_000, 5);
  const closing = gateway.close();
  let sampledWhenClosed = -1; // how far the running request had got when close resolved
  void closing.then(() => (sampledWhenClosed = fake.tokensSampled));
  const during = await inject('POST', '/v1/completions', undefined, completion);
  assert.equal(during.statusCode, 503);
  assert.deepEqual(during.json().error, { message: 'The server is shutting down and takes no new requests; retry on another instance.', type: 'server_error', param: null, code: 'server_shutting_down' });
  const overSocket = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(completion) }).then((r) => r.status, () => 'refused');
  assert.ok(overSocket === 503 || overSocket === 'refused', `a new request during the drain got ${overSocket}`);
  const res = await slow;
  assert.equal(res.status, 200);
  assert.equal(((await res.json()) as { choices: Array<{ text: string }> }).choices[0]!.text.length, 30);
  await closing;
  assert.equal(sampledWhenClosed, 30, 'close waited for the running request to sample all its tokens');
  assert.equal(fake.generateCalls, 1, 'nothing new was generated during the drain');
});

test('a stream running at close finishes with [DONE] before the gateway closes', async (t) => {
  const fake = new FakeBackend({ id: MODEL, delayMsPerToken: 10 });
  const { gateway } = gatewayWith(t, {}, fake);
  const { port } = await gateway.listen({ port: 0 });
  const res = await fetch(`http://127.0.0.1:${port}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...completion, max_tokens: 20, stream: true }) });
  await until('the stream to sample 3 tokens', async () => fake.tokensSampled >= 3, 10_000, 5);
  const closing = gateway.close();
  const body = await res.text();
  assert.match(body, /data: \[DONE\]\n\n$/);
  assert.equal(fake.tokensSampled, 20);
  await closing;
});

test('a request still running at the drain timeout is cut, and close resolves', async (t) => {
  // 200 tokens at 50 ms each take at least 10 s (a loaded machine only makes timers later), against a 100 ms drain.
  const fake = new FakeBackend({ id: MODEL, delayMsPerToken: 50 });
  const { gateway } = gatewayWith(t, { drainTimeoutMs: 100 }, fake);
  const { port } = await gateway.listen({ port: 0 });
  const slow = fetch(`http://127.0.0.1:${port}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...completion, max_tokens: 200 }) }).then((r) => r.status, () => 'cut');
  await until('the slow request to sample its first token', async () => fake.tokensSampled >= 1, 10_000, 5);
  const started = Date.now();
  await gateway.close();
  const sampledWhenClosed = fake.tokensSampled;
  assert.ok(sampledWhenClosed < 200, `close resolved before the request finished (${sampledWhenClosed} of 200 tokens, ${Date.now() - started} ms)`);
  assert.equal(await slow, 'cut');
  assert.ok(fake.tokensSampled < 200);
});

test('gateway serve refuses bad safety options with exit code 2, saying what is wrong', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['--rate-limit', '0'], /--rate-limit must be a positive number/],
    [['--rate-burst', '3'], /--rate-burst needs --rate-limit RPS/],
    [['--rate-limit', '2', '--rate-burst', '0'], /--rate-burst must be an integer in \[1, /],
    [['--max-body-bytes', '0'], /--max-body-bytes must be an integer in \[1, /],
    [['--max-prompt-tokens', 'x'], /--max-prompt-tokens must be an integer in \[1, /],
    [['--drain-timeout-ms=-1'], /--drain-timeout-ms must be an integer in \[0, /],
    [['--api-key', 'k', '--admin-key', 'k'], /--admin-key must differ from every --api-key/],
  ];
  for (const [args, message] of cases) {
    let err = '';
    const code = await runCli(['serve', '--fake', ...args], { log: silentLogger, err: (text) => (err += text), out: () => assert.fail('nothing should start') });
    assert.equal(code, 2, args.join(' '));
    assert.match(err, message, args.join(' '));
  }
});

test('gateway serve takes several API keys, the admin key and limits, and logs no key', async (t) => {
  const logged: string[] = [];
  const record = (m: string) => void logged.push(m);
  const log: Logger = { debug: record, info: record, warn: record, error: record, child: () => log };
  let stop!: (sig: string) => void;
  const url = await new Promise<string>((resolve) => {
    const done = runCli(
      ['serve', '--fake', '--port', '0', '--host', '127.0.0.1', '--api-key', 'sk-alpha-key', '--api-key', 'sk-beta-key,sk-gamma-key', '--admin-key', 'adm-secret-key', '--rate-limit', '100', '--max-prompt-tokens', '50', '--max-body-bytes', '5000', '--drain-timeout-ms', '500'],
      { log, stopSignal: new Promise((r) => (stop = r)), out: (line) => resolve(line.replace('gateway listening on ', '')) },
    );
    t.after(async () => {
      stop('test end');
      await done;
    });
  });
  const status = await fetch(`${url}/admin/status`, { headers: { authorization: 'Bearer adm-secret-key' } });
  assert.equal(status.status, 200);
  assert.deepEqual(((await status.json()) as { config: unknown }).config, { apiKeys: 3, maxBodyBytes: 5000, maxPromptTokens: 50, rateLimit: { rps: 100, burst: 100 } });
  const models = await fetch(`${url}/v1/models`, { headers: { authorization: 'Bearer sk-gamma-key' } });
  assert.equal(models.status, 200);
  assert.match(logged.join('\n'), /API key required on \/v1 routes \(3 keys accepted\)/);
  assert.doesNotMatch(logged.join('\n'), /alpha|beta|gamma|secret/);
});
