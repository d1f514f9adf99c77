/** The data plane's and the schedule's argument checks throw RangeErrors that carry AGT_ERR_OUT_OF_RANGE (node-agent/errors.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { float32View } from '../../node-agent/collectives/reduce.ts';
import { oneFOneB } from '../../node-agent/trainer/schedule.ts';

const outOfRange = (pattern: RegExp) => (err: unknown) =>
  err instanceof RangeError && (err as { code?: string }).code === 'AGT_ERR_OUT_OF_RANGE' && pattern.test(err.message);

test('a stage outside the pipeline is a coded RangeError naming the range', () => {
  assert.throws(() => oneFOneB(3, 3, 4), outOfRange(/stage 3 is outside 0\.\.2/));
  assert.throws(() => oneFOneB(0, 2, 0), outOfRange(/microBatches must be a positive integer/));
  assert.equal(oneFOneB(0, 2, 2).length, 4, 'in range: two forwards and two backwards');
});

test('a payload that is not whole float32s is a coded RangeError', () => {
  assert.throws(() => float32View(new Uint8Array(6)), outOfRange(/6 bytes is not whole float32s/));
  assert.equal(float32View(new Uint8Array(8)).length, 2);
});
