/**
 * defineErrors: the one way a package declares its errors (protocol/define-errors.ts).
 * Run: node --import tsx --test test/protocol/define-errors.test.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { defineErrors, errorSpec, errorTables, isFatal } from '../../protocol/define-errors.ts';
import { ProtocolError, ProtocolErrorCodes } from '../../protocol/errors.ts';
import { CloseCode } from '../../protocol/codes.ts';

class TestError extends defineErrors('TST_ERR_', {
  /** Answered over HTTP. */
  TST_ERR_HTTP: { status: 409 },
  /** Never crosses an edge; retrying cannot help. */
  TST_ERR_INPUT: { fatal: true },
}) {}

test('an error of a defined class carries its code, the table status, details and cause, and its class name', () => {
  const cause = new Error('underneath');
  const err = new TestError('TST_ERR_HTTP', 'taken', { cause, details: ['a is taken'] });
  assert.ok(err instanceof TestError && err instanceof Error);
  assert.equal(err.name, 'TestError');
  assert.equal(err.code, 'TST_ERR_HTTP');
  assert.equal(err.statusCode, 409);
  assert.deepEqual(err.details, ['a is taken']);
  assert.equal(err.cause, cause);
  assert.equal(err.message, 'taken');
});

test('an error whose code crosses no edge has no statusCode, closeCode or details property at all', () => {
  const err = new TestError('TST_ERR_INPUT', 'bad input');
  for (const key of ['statusCode', 'closeCode', 'details', 'cause']) assert.equal(Object.hasOwn(err, key), false, key);
});

test('the table is exposed on the class and in errorTables, and isCode tells its codes from others', () => {
  assert.equal(errorTables.get('TST_ERR_'), TestError.codes);
  assert.ok(Object.isFrozen(TestError.codes));
  assert.equal(TestError.isCode('TST_ERR_HTTP'), true);
  assert.equal(TestError.isCode('TST_ERR_NOPE'), false);
  assert.equal(TestError.isCode('toString'), false);
  assert.equal(TestError.isCode(undefined), false);
  assert.deepEqual(errorSpec('TST_ERR_HTTP'), { status: 409 });
  assert.equal(errorSpec('TST_ERR_NOPE'), undefined);
});

test('isFatal reads the fatal flag of whatever table declares the code', () => {
  assert.equal(isFatal(new TestError('TST_ERR_INPUT', 'x')), true);
  assert.equal(isFatal(new TestError('TST_ERR_HTTP', 'x')), false);
  assert.equal(isFatal(Object.assign(new Error('from a worker'), { code: 'TST_ERR_INPUT' })), true);
  assert.equal(isFatal(Object.assign(new Error('enoent'), { code: 'ENOENT' })), false);
  assert.equal(isFatal(null), false);
  assert.equal(isFatal('TST_ERR_INPUT'), false);
});

test('a code without the prefix, or a prefix declared twice, is refused when the table is declared', () => {
  // @ts-expect-error: the type check refuses a code without the prefix too
  assert.throws(() => defineErrors('BAD_ERR_', { BAD_ERR_A: {}, OTHER_ERR_B: {} }), /OTHER_ERR_B do not start with BAD_ERR_/);
  assert.equal(errorTables.has('BAD_ERR_'), false);
  assert.throws(() => defineErrors('TST_ERR_', { TST_ERR_AGAIN: {} }), /TST_ERR_ is declared twice/);
});

test('a protocol error carries the close code its table declares', () => {
  const err = new ProtocolError('PRT_ERR_INVALID', 'fails the schema');
  assert.equal(err.closeCode, CloseCode.INVALID);
  assert.equal(ProtocolErrorCodes.PRT_ERR_INVALID, CloseCode.INVALID);
  assert.equal(Object.hasOwn(err, 'statusCode'), false, 'a close code is not an HTTP status');
});
