/**
 * The gateway's per-client token buckets, with an injected clock: the bucket decision, and the limiter's bounded
 * memory and per-request work under a flood of distinct clients. Run: npx tsx --test test/gateway/rate-limit.test.ts
 * (the 429 over HTTP is in safety.test.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_MAX_CLIENTS, isFull, RateLimiter, takeToken, type Bucket } from '../../gateway/rate-limit.ts';

const FLOOD = 200_000; // distinct client keys, twice the default cap

/** A limiter on a clock the test moves by hand. */
function limiterAt(limit: { rps: number; burst: number }, maxClients?: number) {
  const clock = { now: 0 };
  const limiter = new RateLimiter(limit, maxClients === undefined ? { nowMs: () => clock.now } : { nowMs: () => clock.now, maxClients });
  return { limiter, clock };
}

test('a token bucket allows a burst, then one request per 1/rps seconds, and says how long to wait', () => {
  const limit = { rps: 2, burst: 3 };
  let b = takeToken(undefined, 0, limit);
  assert.deepEqual(b, { bucket: { tokens: 2, atMs: 0 }, retryAfterMs: 0 });
  b = takeToken(b.bucket, 0, limit);
  b = takeToken(b.bucket, 0, limit);
  assert.equal(b.retryAfterMs, 0);
  b = takeToken(b.bucket, 0, limit);
  assert.equal(b.retryAfterMs, 500);
  b = takeToken(b.bucket, 250, limit);
  assert.equal(b.retryAfterMs, 250);
  assert.equal(takeToken(b.bucket, 500, limit).retryAfterMs, 0);
  assert.equal(takeToken({ tokens: 0, atMs: 0 }, 60_000, limit).bucket.tokens, 2, 'an idle bucket fills up to the burst, no more');
});

test('a full bucket decides exactly as no bucket, so dropping it changes nothing', () => {
  const limit = { rps: 0.5, burst: 3 };
  const drained: Bucket = { tokens: 0.25, atMs: 1000 }; // full at 1000 + 2.75 / 0.5 s = 6500 ms
  assert.equal(isFull(drained, 6499, limit), false);
  assert.equal(isFull(drained, 6500, limit), true);
  for (const nowMs of [6500, 7000, 60_000]) {
    assert.deepEqual(takeToken(drained, nowMs, limit), takeToken(undefined, nowMs, limit), `at ${nowMs} ms`);
  }
});

test('the rate limiter keeps one bucket per client', () => {
  const { limiter, clock } = limiterAt({ rps: 1, burst: 1 });
  assert.equal(limiter.take('a'), 0);
  assert.equal(limiter.take('b'), 0);
  assert.equal(limiter.take('a'), 1000);
  clock.now = 1000;
  assert.equal(limiter.take('a'), 0);
});

test('a bad rate, burst or client cap is refused when the limiter is built', () => {
  assert.throws(() => new RateLimiter({ rps: 0, burst: 1 }), /positive number/);
  assert.throws(() => new RateLimiter({ rps: 1, burst: 0 }), /integer ≥ 1/);
  for (const maxClients of [0, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
    assert.throws(() => new RateLimiter({ rps: 1, burst: 1 }, { maxClients }), /maxClients must be an integer ≥ 1/, String(maxClients));
  }
  assert.equal(new RateLimiter({ rps: 1, burst: 1 }).maxClients, DEFAULT_MAX_CLIENTS);
});

test('a fully refilled bucket is pruned by the next request, and a partly drained one is kept', () => {
  const { limiter, clock } = limiterAt({ rps: 1, burst: 2 });
  limiter.take('idle'); // 1 token left: full again at 1000 ms
  clock.now = 999;
  limiter.take('other');
  assert.deepEqual(limiter.stats(), { clients: 2, examined: 1, pruned: 0, evicted: 0 }, 'one token short of full is kept');
  clock.now = 1000;
  limiter.take('other');
  assert.equal(limiter.stats().clients, 1);
  assert.equal(limiter.stats().pruned, 1);
  assert.equal(limiter.take('idle'), 0, 'the pruned client starts again with a full burst, as it would have had');
  assert.equal(limiter.take('idle'), 0);
  assert.equal(limiter.take('idle'), 1000);
});

test('at the cap a new client evicts the least recently used one, never one that just sent', () => {
  const { limiter } = limiterAt({ rps: 1, burst: 1 }, 3);
  for (const client of ['a', 'b', 'c']) limiter.take(client); // all three drained: nothing to prune
  limiter.take('a'); // now b is the least recently used
  limiter.take('d');
  assert.deepEqual(limiter.stats(), { clients: 3, examined: 5, pruned: 0, evicted: 1 });
  assert.equal(limiter.take('a'), 1000, 'a kept its drained bucket');
  assert.equal(limiter.take('c'), 1000, 'c kept its drained bucket');
  assert.equal(limiter.take('b'), 0, 'b was evicted and starts again with a full burst: the documented trade-off');
});

test('a flood of 200,000 distinct clients never tracks more than the default cap', () => {
  const { limiter } = limiterAt({ rps: 1, burst: 5 }); // the clock stands still: every bucket stays partly drained
  for (let i = 0; i < FLOOD; i++) {
    assert.equal(limiter.take(`ip:${i}`), 0);
    const { clients } = limiter.stats();
    if (clients > DEFAULT_MAX_CLIENTS) assert.fail(`${clients} clients tracked after ${i + 1} takes`);
  }
  assert.deepEqual(limiter.stats(), { clients: DEFAULT_MAX_CLIENTS, examined: 2 * (FLOOD - DEFAULT_MAX_CLIENTS) + (DEFAULT_MAX_CLIENTS - 1), pruned: 0, evicted: FLOOD - DEFAULT_MAX_CLIENTS });
});

test('each request looks at no more than three other buckets through a flood of 200,000 distinct clients', () => {
  // Half the flood with the clock still (every take evicts), half with it running (every take prunes).
  const { limiter, clock } = limiterAt({ rps: 1, burst: 2 }, 10_000);
  let before = limiter.stats();
  for (let i = 0; i < FLOOD; i++) {
    if (i >= FLOOD / 2) clock.now += 1;
    limiter.take(`ip:${i}`);
    const after = limiter.stats();
    // at most two looks while pruning the oldest end, and one more to evict at the cap
    if (after.examined - before.examined > 3) assert.fail(`take ${i} looked at ${after.examined - before.examined} buckets`);
    before = after;
  }
  const { evicted, pruned, clients } = limiter.stats();
  assert.ok(evicted >= FLOOD / 2 - 10_000, `the still half evicted ${evicted}`);
  assert.ok(pruned > 0, 'the running half pruned');
  assert.ok(clients <= 10_000);
});

test('a client that keeps sending stays limited, exactly as its own bucket says, through a flood of 200,000 distinct clients', () => {
  const limit = { rps: 1, burst: 2 };
  const maxClients = 1000;
  const { limiter, clock } = limiterAt(limit, maxClients);
  let oracle: Bucket | undefined; // the steady client's bucket on its own: what the limiter must decide for it
  const steady = (): boolean => {
    const expected = takeToken(oracle, clock.now, limit);
    oracle = expected.bucket;
    const waitMs = limiter.take('key:steady');
    assert.equal(waitMs, expected.retryAfterMs, `at ${clock.now} ms`);
    return waitMs > 0;
  };
  let refused = 0;
  for (let i = 0; i < FLOOD; i++) {
    clock.now = i / 10; // 10,000 new clients a second: ten times the cap within one refill
    limiter.take(`ip:${i}`);
    if (i % 100 === 0 && steady()) refused++; // every 10 ms, far over 1 rps
    assert.ok(limiter.stats().clients <= maxClients);
  }
  assert.ok(limiter.stats().evicted > 100_000, 'the flood overflowed the cap');
  assert.ok(refused >= 1970, `the steady client was refused ${refused} of 2000 times during the flood, not ~1978`);
  let refusedAfter = 0;
  for (let t = 0; t < 10; t++) {
    clock.now += 400; // after the flood, at 2.5 rps against 1 rps: refused more often than not
    if (steady()) refusedAfter++;
  }
  assert.ok(refusedAfter >= 5, `refused ${refusedAfter} of 10 after the flood`);
});

test('once a flood of distinct clients has passed, pruning shrinks the tracked set to the clients still sending', () => {
  const { limiter, clock } = limiterAt({ rps: 1, burst: 2 }, 1000);
  for (let i = 0; i < FLOOD; i++) limiter.take(`ip:${i}`);
  assert.equal(limiter.stats().clients, 1000);
  clock.now = 1000; // every flood bucket has refilled
  for (let i = 0; i < 500; i++) limiter.take('key:steady');
  assert.equal(limiter.stats().clients, 1, 'two full buckets dropped per request');
});
