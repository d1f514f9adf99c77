/**
 * collectGarbage (node-agent/collect-garbage.ts) frees a dropped SharedArrayBuffer at once: what an agent relies on
 * between training attempts, whose buffers another isolate allocated. Measured as resident memory, not time.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { collectGarbage } from '../../node-agent/collect-garbage.ts';

test('a dropped 400 MB SharedArrayBuffer stops being resident after collectGarbage()', async () => {
  let held: Float32Array | null = new Float32Array(new SharedArrayBuffer(400e6));
  held.fill(1); // touch every page
  const before = process.memoryUsage().rss;
  assert.ok(held[held.length - 1] === 1);
  held = null;
  collectGarbage();
  // V8 frees a collected buffer's memory on a background task: give it up to 5 s (without the collection it stays).
  let after = process.memoryUsage().rss;
  for (let i = 0; i < 50 && before - after <= 300e6; i++) {
    await new Promise((r) => setTimeout(r, 100));
    after = process.memoryUsage().rss;
  }
  assert.ok(before - after > 300e6, `resident memory went from ${(before / 1e6).toFixed(0)} to ${(after / 1e6).toFixed(0)} MB`);
  collectGarbage(); // idempotent
});
