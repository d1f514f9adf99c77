/**
 * node scripts/run-tests.mjs tracing/gateway-trace
 *
 * The gateway's spans, exported in memory: one SERVER span per request with its route and status, a caller's
 * traceparent making the request span its child, and a shadow's mirror run as a span of its own trace, linked to
 * the request span it mirrors.
 */
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { silentLogger } from '../../common/log.ts';
import { initTracing, type Tracing } from '../../common/tracing.ts';
import { DeploymentManager } from '../../gateway/deployments.ts';
import { FakeBackend } from '../../gateway/fake-backend.ts';
import { createGateway } from '../../gateway/server.ts';

const exporter = new InMemorySpanExporter();
const processor = new SimpleSpanProcessor(exporter);
let tracing: Tracing;

before(async () => {
  tracing = await initTracing('gateway-test', {}, { spanProcessors: [processor] });
});
after(() => tracing.shutdown());

const API_KEY = 'k-secret';

/** A gateway serving fake-char, and a deployment 'chat' of tiny@v1 shadowed by tiny@v2 (the same toy model). */
async function gateway(t: TestContext) {
  const deployments = new DeploymentManager({ resolve: async () => new FakeBackend({ id: 'tiny' }) });
  const gw = createGateway({ backends: new Map([['fake-char', new FakeBackend()]]), log: silentLogger, apiKey: API_KEY, adminKey: 'adm', deployments });
  t.after(() => gw.close());
  const { port } = await gw.listen({ port: 0 });
  const base = `http://127.0.0.1:${port}`;
  const put = await fetch(`${base}/admin/deployments/chat`, {
    method: 'PUT',
    headers: { authorization: 'Bearer adm', 'content-type': 'application/json' },
    body: JSON.stringify({ primary: { model: 'tiny', version: 1 }, shadows: [{ model: 'tiny', version: 2, percent: 100 }], reason: 'test' }),
  });
  assert.equal(put.status, 200, await put.text());
  await spans((s) => serverSpans(s).length >= 1); // the PUT's span, which the tests are not about
  exporter.reset();
  const complete = (body: object, headers: Record<string, string> = {}) =>
    fetch(`${base}/v1/completions`, { method: 'POST', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json', ...headers }, body: JSON.stringify({ model: 'fake-char', prompt: 'Hello', max_tokens: 4, ...body }) });
  return { base, deployments, complete };
}

/** The spans finished so far (a request's span ends when its response is over: poll briefly for it). */
async function spans(until: (s: ReadableSpan[]) => boolean = () => true): Promise<ReadableSpan[]> {
  for (let i = 0; i < 200; i++) {
    await processor.forceFlush();
    const got = exporter.getFinishedSpans();
    if (until(got)) return got;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`spans never matched; got ${exporter.getFinishedSpans().map((s) => s.name).join(', ')}`);
}

const serverSpans = (all: ReadableSpan[]) => all.filter((s) => s.kind === SpanKind.SERVER);

test('every request gets one server span named by its route, with its status and what it generated', async (t) => {
  const { base, complete } = await gateway(t);
  assert.equal((await complete({})).status, 200);
  assert.equal((await complete({ stream: true, stream_options: { include_usage: true } }).then(async (r) => (await r.text(), r))).status, 200);
  assert.equal((await complete({ model: 'nope' })).status, 404);
  assert.equal((await fetch(`${base}/v1/models`)).status, 401, 'no key');
  assert.equal((await fetch(`${base}/healthz`)).status, 200);
  assert.equal((await fetch(`${base}/no/such/route`)).status, 404);
  const got = serverSpans(await spans((s) => serverSpans(s).length >= 6));
  assert.deepEqual(got.map((s) => [s.name, s.attributes['http.response.status_code']]), [
    ['POST /v1/completions', 200],
    ['POST /v1/completions', 200],
    ['POST /v1/completions', 404],
    ['GET /v1/models', 401],
    ['GET /healthz', 200],
    ['GET', 404],
  ]);
  const [plain, streamed] = got;
  for (const s of [plain!, streamed!]) {
    assert.equal(s.attributes['http.request.method'], 'POST');
    assert.equal(s.attributes['http.route'], '/v1/completions');
    assert.equal(s.attributes['gen_ai.request.model'], 'fake-char');
    assert.equal(s.attributes['gen_ai.usage.output_tokens'], 4);
    assert.ok(Number(s.attributes['gen_ai.usage.input_tokens']) > 0);
    assert.equal(s.parentSpanContext, undefined, 'no traceparent: a root span');
  }
  assert.equal(got[5]!.attributes['http.route'], undefined, 'an unknown URL has no route');
  for (const s of got) {
    for (const v of Object.values(s.attributes)) assert.ok(!String(v).includes(API_KEY), `${s.name}: the API key in an attribute`);
  }
});

test("a request carrying a traceparent header gets its span as the caller's child, in the caller's trace", async (t) => {
  const { complete } = await gateway(t);
  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736', parentId = '00f067aa0ba902b7';
  assert.equal((await complete({}, { traceparent: `00-${traceId}-${parentId}-01` })).status, 200);
  const [span] = serverSpans(await spans((s) => serverSpans(s).length >= 1));
  assert.equal(span!.spanContext().traceId, traceId);
  assert.equal(span!.parentSpanContext?.spanId, parentId);
  assert.equal(span!.parentSpanContext?.isRemote, true);
});

test("a shadowed request's mirror runs in a span of its own trace, linked to the request's span", async (t) => {
  const { complete, deployments } = await gateway(t);
  const res = await complete({ model: 'chat', seed: 3 });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-meshtrain-version'), 'tiny@v1');
  const all = await spans((s) => s.some((x) => x.name === 'shadow.mirror') && serverSpans(s).length >= 1);
  const request = serverSpans(all)[0]!;
  const mirror = all.find((s) => s.name === 'shadow.mirror')!;
  assert.equal(request.attributes['meshtrain.deployment'], 'chat');
  assert.equal(request.attributes['meshtrain.version'], 'tiny@v1');
  assert.equal(mirror.parentSpanContext, undefined, 'the mirror starts a trace of its own');
  assert.notEqual(mirror.spanContext().traceId, request.spanContext().traceId);
  assert.equal(mirror.links.length, 1);
  assert.equal(mirror.links[0]!.context.traceId, request.spanContext().traceId);
  assert.equal(mirror.links[0]!.context.spanId, request.spanContext().spanId);
  assert.equal(mirror.attributes['meshtrain.shadow.version'], 'tiny@v2');
  assert.equal(mirror.attributes['meshtrain.shadow.identical'], true, 'the same toy model answers the same');
  assert.equal(mirror.attributes['meshtrain.shadow.token_agreement'], 1);
  await deployments.close();
});
