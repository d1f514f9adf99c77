/**
 * Shadow mode and the rollout policy through the gateway: mirrors, comparisons, dropped mirrors, the SPRT's
 * promote/reject, automatic promotion, the rollback guard, and their audit entries and metrics.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { InjectOptions } from 'fastify';
import { silentLogger } from '../../common/log.ts';
import { runCli } from '../../gateway/cli.ts';
import { DeploymentManager, type DeploymentManagerOptions, type VersionResolver } from '../../gateway/deployments.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { FakeBackend, type FakeBackendOptions } from '../../gateway/fake-backend.ts';
import { createGateway } from '../../gateway/server.ts';
import { DEFAULT_ROLLOUT } from '../../gateway/rollout.ts';
import { MirroringBackend, ShadowMirror, type ShadowSettings } from '../../gateway/shadow.ts';
import { until } from '../support/until.ts';
import { generateRequest } from './support.ts';

const ADMIN = 'adm-secret';

/**
 * tiny@v1 and tiny@v2 are the same toy model (an identical retrain); v3 is a different one; v4 fails every
 * request; v5 is v1 but slow (20 ms a token).
 */
const VERSIONS: Record<number, FakeBackendOptions> = {
  1: {},
  2: {},
  3: { variant: 3 },
  4: { failWith: new GatewayError('GW_ERR_INTERNAL', 'the model crashed') },
  5: { delayMsPerToken: 20 },
};

function setup(t: TestContext, opts: { shadow?: ShadowSettings; clock?: { ms: number }; versions?: Record<number, FakeBackendOptions> } = {}) {
  const versions = opts.versions ?? VERSIONS;
  const backends = new Map<string, FakeBackend>();
  const resolve: VersionResolver = async (model, version) => {
    if (model !== 'tiny' || !versions[version]) throw new GatewayError('GW_ERR_REGISTRY', `no model ${model} v${version}`);
    const b = new FakeBackend({ id: model, ...versions[version] });
    backends.set(`v${version}`, b);
    return b;
  };
  const clock = opts.clock;
  const managerOpts: DeploymentManagerOptions = { resolve, ...(opts.shadow ? { shadow: opts.shadow } : {}), ...(clock ? { now: () => new Date(clock.ms), guardIntervalMs: 3_600_000 } : {}) };
  const deployments = new DeploymentManager(managerOpts);
  const gateway = createGateway({ backends: new Map(), log: silentLogger, adminKey: ADMIN, deployments });
  t.after(() => gateway.close());
  const admin = async (method: 'GET' | 'PUT' | 'POST', url: string, payload?: unknown) => {
    const o: InjectOptions = { method, url, headers: { authorization: `Bearer ${ADMIN}` } };
    if (payload !== undefined) o.payload = payload as InjectOptions['payload'];
    const res = await gateway.app.inject(o);
    return { status: res.statusCode, json: res.json() };
  };
  const complete = async (body: Record<string, unknown> = {}, model = 'chat') => {
    const res = await gateway.app.inject({ method: 'POST', url: '/v1/completions', payload: { model, prompt: 'Hello there', max_tokens: 12, temperature: 1, ...body } });
    return { status: res.statusCode, json: res.json(), version: res.headers['x-meshtrain-version'] as string | undefined };
  };
  const put = async (body: Record<string, unknown>, name = 'chat') => {
    const res = await admin('PUT', `/admin/deployments/${name}`, { reason: 'test', ...body });
    assert.equal(res.status, 200, JSON.stringify(res.json));
    return res.json;
  };
  const comparison = async (name = 'chat') => (await admin('GET', `/admin/deployments/${name}/comparison`)).json;
  /** Waits until every mirror of the deployment has run (they run after the client's answer). */
  const drained = async (name = 'chat') => {
    for (let i = 0; i < 500; i++) {
      const c = await comparison(name);
      const busy = [...c.shadows, ...(c.guard?.previousAsShadow ? [c.guard.previousAsShadow] : [])].some((s: any) => s.queue.depth + s.queue.running > 0);
      if (!busy) return c;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error('mirrors never drained');
  };
  const metrics = async () => (await gateway.app.inject({ method: 'GET', url: '/metrics' })).body;
  return { gateway, deployments, backends, admin, complete, put, comparison, drained, metrics };
}

const v = (version: number) => ({ model: 'tiny', version });

test("a shadow gets a copy of each request, the client's answer stays the primary's, and an identical version agrees everywhere", async (t) => {
  const { put, complete, drained, backends } = setup(t);
  await put({ primary: v(1) }, 'plain');
  await put({ primary: v(1), shadows: [{ ...v(2), percent: 100 }] });
  const N = 12;
  for (let i = 0; i < N; i++) {
    const body = { seed: i, ...(i % 3 === 0 ? { logprobs: 2 } : {}) };
    const [shadowed, plain] = [await complete(body), await complete(body, 'plain')];
    assert.equal(shadowed.status, 200);
    assert.equal(shadowed.version, 'tiny@v1', 'the primary answers');
    const strip = (j: any) => ({ ...j, id: '', created: 0, model: '' });
    assert.deepEqual(strip(shadowed.json), strip(plain.json), `request ${i}: the same answer as without a shadow (logprobs only when asked)`);
  }
  const c = await drained();
  assert.equal(c.primary, 'tiny@v1');
  const s = c.shadows[0];
  assert.equal(s.version, 'tiny@v2');
  assert.equal(s.offered, N);
  assert.equal(s.comparison.count, N);
  assert.equal(s.comparison.errors, 0);
  assert.equal(s.comparison.identicalRate, 1);
  assert.equal(s.comparison.meanTokenAgreement, 1);
  assert.equal(s.comparison.logprobCount, N, 'every request scored teacher-forced');
  assert.ok(Math.abs(s.comparison.meanLogprobDiff) < 1e-12, `the same model gives the same log-probs: ${s.comparison.meanLogprobDiff}`);
  // The shadow generated each request once and scored each answer once (an echo call): 2 calls per mirror.
  assert.equal(backends.get('v2')!.generateCalls, 2 * N);
});

test("a different version diverges: agreement below 1 and a negative log-prob difference on the primary's tokens", async (t) => {
  const { put, complete, drained } = setup(t);
  await put({ primary: v(1), shadows: [{ ...v(3), percent: 100 }] });
  for (let i = 0; i < 10; i++) assert.equal((await complete({ seed: i })).status, 200);
  const { comparison } = (await drained()).shadows[0];
  assert.equal(comparison.count, 10);
  assert.ok(comparison.identicalRate < 0.5, `identical ${comparison.identicalRate}`);
  assert.ok(comparison.meanTokenAgreement < 0.6, `agreement ${comparison.meanTokenAgreement}`);
  assert.ok(comparison.meanLogprobDiff < -0.1, `the other model finds the primary's tokens less likely: ${comparison.meanLogprobDiff}`);
  assert.ok(Math.abs(comparison.divergence - (1 - comparison.meanTokenAgreement)) < 1e-12);
});

test('a failing shadow is counted as errors and never fails or changes the client request', async (t) => {
  const { put, complete, drained, metrics } = setup(t);
  await put({ primary: v(1), shadows: [{ ...v(4), percent: 100 }] });
  for (let i = 0; i < 5; i++) assert.equal((await complete({ seed: i })).status, 200);
  const s = (await drained()).shadows[0];
  assert.equal(s.comparison.errors, 5);
  assert.equal(s.comparison.errorRate, 1);
  assert.match(await metrics(), /meshtrain_gateway_shadow_comparisons_total\{deployment="chat",version="tiny@v4",outcome="error"\} 5/);
});

test('percent mirrors about that share of the requests', async (t) => {
  const { put, complete, drained } = setup(t);
  await put({ primary: v(1), shadows: [{ ...v(2), percent: 25 }] });
  const N = 200;
  for (let i = 0; i < N; i++) await complete({ max_tokens: 1 });
  const s = (await drained()).shadows[0];
  assert.equal(s.percent, 25);
  assert.ok(Math.abs(s.offered / N - 0.25) < 0.1, `mirrored ${s.offered}/${N}`);
});

test('under load mirrors are dropped and counted, and the queue never grows past its capacity', async (t) => {
  const { put, complete, drained, metrics } = setup(t, { shadow: { queueCapacity: 2, concurrency: 1, maxAgeMs: 30_000 } });
  await put({ primary: v(1), shadows: [{ ...v(5), percent: 100 }] }); // a slow shadow: 20 ms a token
  let maxDepth = 0;
  const watch = setInterval(async () => {
    const text = await metrics();
    const m = /meshtrain_gateway_shadow_queue_depth\{deployment="chat",version="tiny@v5"\} (\d+)/.exec(text);
    if (m) maxDepth = Math.max(maxDepth, Number(m[1]));
  }, 5);
  const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => complete({ seed: i, max_tokens: 4 })));
  clearInterval(watch);
  assert.ok(answers.every((a) => a.status === 200));
  const s = (await drained()).shadows[0];
  assert.equal(s.offered, 20);
  assert.equal(s.dropped['queue-full'], 20 - 3, 'one running, two queued, the rest dropped');
  assert.equal(s.comparison.count, 3);
  assert.ok(maxDepth <= 2, `queue depth ${maxDepth}`);
  assert.match(await metrics(), /meshtrain_gateway_shadow_dropped_total\{deployment="chat",version="tiny@v5",reason="queue-full"\} 17/);
});

test('an identical shadow reaches promote and, with autoPromote, becomes the primary, audited as auto-promote by the rollout', async (t) => {
  const { put, complete, drained, admin, metrics } = setup(t);
  // Each success moves the log-likelihood ratio by ln(0.9/0.5) = 0.59; promote at ln(0.9/0.05) = 2.89: the 5th.
  await put({ primary: v(1), shadows: [{ ...v(2), percent: 100 }], rollout: { sprt: { p0: 0.5, p1: 0.9, alpha: 0.05, beta: 0.1 }, autoPromote: true } });
  for (let i = 0; i < 4; i++) await complete({ seed: i });
  let c = await drained();
  assert.equal(c.shadows[0].decision.verdict, 'keep-watching');
  assert.equal(c.shadows[0].decision.n, 4);
  await complete({ seed: 4 });
  await until('the auto-promotion of v2', async () => (await admin('GET', '/admin/deployments/chat')).json.deployment.primary.version === 2, 30_000, 10);
  const { json } = await admin('GET', '/admin/deployments/chat');
  assert.deepEqual(json.deployment.primary, v(2));
  assert.deepEqual(json.deployment.shadows, [], 'the promoted shadow is no longer a shadow');
  assert.deepEqual(json.rollbackTo, v(1));
  const audit = (await admin('GET', '/admin/deployments/chat/audit')).json.audit;
  const last = audit.at(-1);
  assert.equal(last.action, 'auto-promote');
  assert.equal(last.who, 'rollout');
  assert.match(last.reason, /SPRT: 5\/5/);
  assert.equal((await complete()).version, 'tiny@v2');
  const text = await metrics();
  assert.match(text, /meshtrain_gateway_rollout_decisions_total\{deployment="chat",version="tiny@v2",decision="promote"\} 1/);
  assert.match(text, /meshtrain_gateway_promotions_total\{deployment="chat",trigger="auto"\} 1/);
  c = await drained();
  assert.equal(c.shadows.length, 0);
});

test('a diverging shadow is rejected by the SPRT and never promoted', async (t) => {
  const { put, complete, drained, admin } = setup(t);
  await put({ primary: v(1), shadows: [{ ...v(3), percent: 100 }], rollout: { success: { metric: 'identical' }, sprt: { p0: 0.5, p1: 0.9, alpha: 0.05, beta: 0.1 }, autoPromote: true } });
  for (let i = 0; i < 12; i++) await complete({ seed: i });
  const s = (await drained()).shadows[0];
  assert.equal(s.decision.verdict, 'reject');
  assert.ok(s.decision.llr <= s.decision.lower);
  assert.deepEqual((await admin('GET', '/admin/deployments/chat')).json.deployment.primary, v(1));
});

test('POST promote makes a shadow or an arm the primary; anything else is a 400 that changes nothing', async (t) => {
  const { put, admin } = setup(t);
  await put({ primary: v(1), arms: [{ ...v(3), weight: 0.2 }], shadows: [{ ...v(2), percent: 50 }] });
  const bad = await admin('POST', '/admin/deployments/chat/promote', { version: 'tiny@v5', reason: 'try' });
  assert.equal(bad.status, 400);
  assert.match(bad.json.error.message, /tiny@v5 is not a shadow or an arm of 'chat' \(tiny@v2, tiny@v3\)/);
  assert.equal((await admin('POST', '/admin/deployments/chat/promote', { version: 'tiny@v2' })).status, 400, 'a reason is required');
  assert.equal((await admin('POST', '/admin/deployments/nope/promote', { version: 'tiny@v2', reason: 'x' })).status, 404);
  const ok = await admin('POST', '/admin/deployments/chat/promote', { version: 'tiny@v2', reason: 'shadow looked good' });
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.json.deployment.primary, v(2));
  assert.deepEqual(ok.json.deployment.arms, [{ ...v(3), weight: 0.2 }]);
  assert.deepEqual(ok.json.deployment.shadows, []);
  const entry = (await admin('GET', '/admin/deployments/chat/audit')).json.audit.at(-1);
  assert.equal(entry.action, 'promote');
  assert.equal(entry.reason, 'shadow looked good');
  assert.equal((await admin('POST', '/admin/deployments/chat/rollback', { reason: 'back' })).json.deployment.primary.version, 1);
});

const GUARD = { windowS: 60, minRequests: 5, minComparisons: 5 };

test('the guard rolls back a new primary whose error rate crosses its threshold within the window', async (t) => {
  const clock = { ms: Date.parse('2026-11-23T12:00:00Z') };
  const { put, complete, admin, deployments, metrics } = setup(t, { clock });
  const rollout = { guard: { ...GUARD, maxErrorRate: 0.2 } };
  await put({ primary: v(1), rollout });
  await put({ primary: v(4), rollout }); // a version that fails every request
  for (let i = 0; i < 4; i++) assert.equal((await complete()).status, 500);
  await deployments.checkGuards();
  assert.deepEqual((await admin('GET', '/admin/deployments/chat')).json.deployment.primary, v(4), 'not judged below minRequests');
  await complete();
  clock.ms += 1000;
  await deployments.checkGuards();
  assert.deepEqual((await admin('GET', '/admin/deployments/chat')).json.deployment.primary, v(1));
  const entry = (await admin('GET', '/admin/deployments/chat/audit')).json.audit.at(-1);
  assert.equal(entry.action, 'auto-rollback');
  assert.equal(entry.who, 'rollout');
  assert.match(entry.reason, /error rate 1\.000 \(5\/5\) > maxErrorRate 0\.2 within 60 s of tiny@v4 becoming primary/);
  assert.equal((await complete()).status, 200);
  const text = await metrics();
  assert.match(text, /meshtrain_gateway_rollbacks_total\{deployment="chat",trigger="auto"\} 1/);
  assert.match(text, /meshtrain_gateway_promotions_total\{deployment="chat",trigger="manual"\} 1/);
});

test('the guard rolls back a new primary whose p99 generation time crosses its threshold', async (t) => {
  const clock = { ms: 0 };
  const { put, complete, admin, deployments } = setup(t, { clock });
  const rollout = { guard: { ...GUARD, maxP99Ms: 50 } };
  await put({ primary: v(1), rollout });
  await put({ primary: v(5), rollout }); // 20 ms a token: 4 tokens ≈ 80 ms
  for (let i = 0; i < 5; i++) assert.equal((await complete({ max_tokens: 4 })).status, 200);
  await deployments.checkGuards();
  const entry = (await admin('GET', '/admin/deployments/chat/audit')).json.audit.at(-1);
  assert.equal(entry.action, 'auto-rollback');
  assert.match(entry.reason, /p99 generation time \d+ ms > maxP99Ms 50/);
});

test('the guard mirrors the previous primary after a promotion and rolls back when the new one diverges from it', async (t) => {
  const clock = { ms: 0 };
  const { put, complete, admin, deployments, drained } = setup(t, { clock });
  await put({ primary: v(1), shadows: [{ ...v(3), percent: 100 }], rollout: { guard: { ...GUARD, maxDivergence: 0.3 } } });
  await admin('POST', '/admin/deployments/chat/promote', { version: 'tiny@v3', reason: 'try the new one' });
  for (let i = 0; i < 6; i++) assert.equal((await complete({ seed: i })).version, 'tiny@v3');
  const c = await drained();
  assert.equal(c.guard.previous, 'tiny@v1');
  assert.equal(c.guard.previousAsShadow.comparison.count, 6);
  assert.ok(c.guard.previousAsShadow.comparison.divergence > 0.3);
  await deployments.checkGuards();
  const { json } = await admin('GET', '/admin/deployments/chat');
  assert.deepEqual(json.deployment.primary, v(1));
  const entry = (await admin('GET', '/admin/deployments/chat/audit')).json.audit.at(-1);
  assert.equal(entry.action, 'auto-rollback');
  assert.match(entry.reason, /divergence from the previous primary 0\.\d+ over 6 mirrored requests > maxDivergence 0\.3/);
  assert.equal((await drained()).guard, null, 'no watch after a rollback');
});

test('a quiet guard window ends with guard-passed, and the previous primary is no longer mirrored', async (t) => {
  const clock = { ms: 0 };
  const { put, complete, admin, deployments, drained } = setup(t, { clock });
  const rollout = { guard: { ...GUARD, windowS: 10, maxErrorRate: 0.1, maxDivergence: 0.5 } };
  await put({ primary: v(1), rollout });
  await put({ primary: v(2), rollout }); // an identical retrain: nothing to see
  for (let i = 0; i < 6; i++) await complete({ seed: i });
  assert.equal((await drained()).guard.previousAsShadow.comparison.divergence, 0);
  await deployments.checkGuards();
  assert.equal((await admin('GET', '/admin/deployments/chat/audit')).json.audit.at(-1).action, 'put', 'still watching');
  clock.ms += 10_000;
  await deployments.checkGuards();
  const entry = (await admin('GET', '/admin/deployments/chat/audit')).json.audit.at(-1);
  assert.equal(entry.action, 'guard-passed');
  assert.deepEqual(entry.new.primary, v(2));
  assert.equal((await drained()).guard, null);
  await complete();
  assert.equal((await drained()).shadows.length, 0);
});

test('a change that keeps the primary keeps its shadows\' statistics; a new primary starts them afresh', async (t) => {
  const { put, complete, drained } = setup(t);
  await put({ primary: v(1), shadows: [{ ...v(2), percent: 100 }] });
  for (let i = 0; i < 3; i++) await complete({ seed: i });
  await drained();
  await put({ primary: v(1), shadows: [{ ...v(2), percent: 100 }], arms: [{ ...v(3), weight: 0.1 }] });
  assert.equal((await drained()).shadows[0].comparison.count, 3);
  await put({ primary: v(3), shadows: [{ ...v(2), percent: 100 }] });
  assert.equal((await drained()).shadows[0].comparison.count, 0);
});

test('comparison needs the admin key and names an existing deployment; bad shadows and rollouts are 400s', async (t) => {
  const { gateway, admin, put } = setup(t);
  await put({ primary: v(1) });
  assert.equal((await gateway.app.inject({ method: 'GET', url: '/admin/deployments/chat/comparison' })).statusCode, 401);
  assert.equal((await admin('GET', '/admin/deployments/nope/comparison')).status, 404);
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ shadows: [{ ...v(2), percent: 101 }] }, /shadows\[0\]\.percent must be a number in \[0, 100\]/],
    [{ shadows: [v(1)] }, /shadows\[0\]: tiny@v1 is already the primary/],
    [{ shadows: [{ ...v(9), percent: 10 }] }, /tiny@v9 cannot be served/],
    [{ rollout: { sprt: { p0: 0.9, p1: 0.5 } } }, /p0 must be below p1/],
    [{ rollout: { success: { metric: 'vibes' } } }, /metric must be one of/],
    [{ rollout: { guard: { windowS: 10 } } }, /guard needs at least one threshold/],
    [{ rollout: { guard: { maxErrorRate: 2 } } }, /maxErrorRate must be a number in \[0, 1\]/],
    [{ rollout: { autopromote: true } }, /unknown field 'autopromote'/],
  ];
  for (const [body, message] of cases) {
    const res = await admin('PUT', '/admin/deployments/chat', { primary: v(1), reason: 'x', ...body });
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.match(res.json.error.message, message);
  }
  assert.deepEqual((await admin('GET', '/admin/deployments/chat')).json.deployment.shadows, []);
});

test('latency is recorded per deployment and serving version', async (t) => {
  const { put, complete, metrics } = setup(t);
  await put({ primary: v(1), arms: [{ ...v(2), weight: 0.5 }] });
  for (let i = 0; i < 20; i++) await complete({ user: `u${i}`, max_tokens: 1 });
  const text = await metrics();
  const count = (version: string) => Number(new RegExp(`meshtrain_gateway_deployment_request_duration_seconds_count\\{deployment="chat",version="${version}",status="200",route="\\/v1\\/completions"\\} (\\d+)`).exec(text)?.[1] ?? 0);
  assert.equal(count('tiny@v1') + count('tiny@v2'), 20);
  assert.ok(count('tiny@v1') > 0 && count('tiny@v2') > 0);
});

test('MirroringBackend returns exactly what its primary returns: log-probs computed for the mirror are removed, streamed tokens too', async () => {
  const primary = new FakeBackend();
  const shadow = new ShadowMirror('fake@v2', new FakeBackend(), { rollout: DEFAULT_ROLLOUT });
  const mirroring = new MirroringBackend(primary, { shadows: [{ mirror: shadow, percent: 100 }] });
  const req = generateRequest(primary.tokenize('Hello'), { temperature: 1, seed: 5 });
  const streamed: unknown[] = [];
  const got = await mirroring.generate(req, { onToken: (e) => streamed.push(...e.tokens) });
  const alone = await new FakeBackend().generate(req);
  assert.deepEqual(got, alone);
  assert.deepEqual(streamed, alone.choices[0]!.tokens);
  const asked = await mirroring.generate({ ...req, logprobs: 2 });
  assert.deepEqual(asked, await new FakeBackend().generate({ ...req, logprobs: 2 }));
  await shadow.drained();
  const snap = shadow.snapshot();
  assert.equal(snap.comparison.count, 2);
  assert.equal(snap.comparison.logprobCount, 2, "the mirror got the primary's log-probs both times");
});

test('gateway deploy --shadow --rollout, gateway comparison and gateway promote drive the admin API', async (t) => {
  const { gateway, complete, drained } = setup(t);
  const { port } = await gateway.listen({ port: 0 });
  const url = `http://127.0.0.1:${port}`;
  const out: string[] = [];
  const errs: string[] = [];
  const cli = (args: string[]) => runCli([...args, '--url', url, '--admin-key', ADMIN], { out: (l) => out.push(l), err: (e) => errs.push(e) });
  const rollout = JSON.stringify({ success: { metric: 'identical' }, guard: { maxErrorRate: 0.5 } });
  assert.equal(await cli(['deploy', 'chat', '--primary', 'tiny@v1', '--shadow', 'tiny@v2:50', '--shadow', 'tiny@v3', '--rollout', rollout, '--reason', 'try']), 0, errs.join(''));
  const deployed = JSON.parse(out.at(-1)!);
  assert.deepEqual(deployed.shadows, [{ ...v(2), percent: 50 }, { ...v(3), percent: 100 }]);
  assert.equal(deployed.rollout.success.metric, 'identical');
  assert.equal(deployed.rollout.guard.maxErrorRate, 0.5);
  await complete({ seed: 1 });
  await drained();
  assert.equal(await cli(['comparison', 'chat']), 0, errs.join(''));
  const report = JSON.parse(out.at(-1)!);
  assert.deepEqual(report.shadows.map((s: { version: string }) => s.version), ['tiny@v2', 'tiny@v3']);
  assert.equal(report.shadows[1].comparison.count, 1);
  assert.equal(await cli(['promote', 'chat', '--version', 'tiny@v3', '--reason', 'looks right']), 0, errs.join(''));
  assert.deepEqual(JSON.parse(out.at(-1)!).primary, v(3));
  assert.equal(await cli(['promote', 'chat', '--version', 'tiny@v7', '--reason', 'x']), 1);
  assert.match(errs.join(''), /400 tiny@v7 is not a shadow or an arm/);
  assert.equal(await cli(['deploy', 'chat', '--primary', 'tiny@v1', '--rollout', '{bad', '--reason', 'x']), 2);
  assert.equal(await cli(['promote', 'chat', '--reason', 'x']), 2, 'promote needs --version');
});
