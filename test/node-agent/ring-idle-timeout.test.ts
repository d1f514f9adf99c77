/**
 * npx tsx --test test/node-agent/ring-idle-timeout.test.ts
 *
 * An all-reduce may be given a longer idle timeout than its ring's (DiLoCo's synchronisation waits for replicas
 * still finishing their round: node-agent/trainer/step.ts): it then waits for a late peer that the ring's own
 * timeout would have given up on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fakeRing } from '../support/fake-ring.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("an all-reduce with a longer idle timeout waits for a peer that arrives after the ring's own timeout", async () => {
  const [a, b] = fakeRing(2, 4096, 100).rings;
  const x = Float32Array.of(1, 2, 3), y = Float32Array.of(10, 20, 30);
  const early = a!.allReduce(x, { idleTimeoutMs: 2_000 });
  await sleep(300); // three times the ring's 100 ms
  await Promise.all([early, b!.allReduce(y, { idleTimeoutMs: 2_000 })]);
  assert.deepEqual([...x], [11, 22, 33]);
  assert.deepEqual([...y], [11, 22, 33]);
});

test("without it, the same late peer fails the collective after the ring's timeout", async () => {
  const [a] = fakeRing(2, 4096, 100).rings;
  await assert.rejects(a!.allReduce(Float32Array.of(1)), { code: 'AGT_ERR_COLLECTIVE_TIMEOUT', message: /made no progress for 100 ms/ });
});

test('an idle timeout that is not positive is refused', async () => {
  const [a] = fakeRing(2, 4096, 100).rings;
  await assert.rejects(a!.allReduce(Float32Array.of(1), { idleTimeoutMs: 0 }), /idleTimeoutMs must be positive/);
});
