/** node-agent/compute/host-lock.ts: one holder at a time on a machine, and a dead holder's lock broken at once. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { hostLock } from '../../node-agent/compute/host-lock.ts';

test('holders take turns, and a lock left by a process that died is taken at once', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'host-lock-'));
  const path = join(dir, 'lock');
  try {
    const order: string[] = [];
    const first = await hostLock(path, 5000);
    const second = hostLock(path, 5000).then((release) => (order.push('second'), release));
    await new Promise((r) => setTimeout(r, 150));
    order.push('first done');
    await first();
    await (await second)();
    assert.deepEqual(order, ['first done', 'second'], 'the second waited for the first');

    // a lock whose holder is dead: a pid that exited a moment ago
    const dead = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
    mkdirSync(path);
    writeFileSync(join(path, 'pid'), dead.stdout.trim());
    const t0 = performance.now();
    const release = await hostLock(path, 5000);
    assert.ok(performance.now() - t0 < 1000, 'not left waiting for a dead holder');
    await release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
