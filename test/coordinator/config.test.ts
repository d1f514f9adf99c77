/**
 * coordinator/config.ts: defaults, overrides and validation. Every problem is reported at once (in `details`),
 * with CRD_ERR_BAD_ARGS, so a user fixes their flags in one go.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_CONFIG, resolveConfig } from '../../coordinator/config.ts';
import { CoordinatorError } from '../../coordinator/errors.ts';

/** Runs resolveConfig expecting a CRD_ERR_BAD_ARGS refusal; returns its details. */
function refused(overrides: Record<string, unknown>): string[] {
  try {
    resolveConfig(overrides);
  } catch (err) {
    assert.ok(err instanceof CoordinatorError, `a CoordinatorError, got ${String(err)}`);
    assert.equal(err.code, 'CRD_ERR_BAD_ARGS');
    assert.ok(Array.isArray(err.details) && err.details.length > 0, 'details lists the problems');
    for (const d of err.details) assert.ok(err.message.includes(d), `the message repeats "${d}"`);
    return err.details;
  }
  assert.fail(`resolveConfig(${JSON.stringify(overrides)}) was accepted`);
}

describe('resolveConfig', () => {
  test('with no overrides it returns the documented defaults, frozen', () => {
    const cfg = resolveConfig({});
    assert.deepEqual(cfg, DEFAULT_CONFIG);
    assert.equal(Object.isFrozen(cfg), true);
    assert.equal(Object.isFrozen(DEFAULT_CONFIG), true);
    assert.equal(cfg.port, 7070);
    assert.equal(cfg.heartbeatMs, 1000);
    assert.equal(cfg.heartbeatTimeoutMs, 5000);
    assert.equal(cfg.token, undefined);
    assert.throws(() => {
      (cfg as { port: number }).port = 1;
    }, TypeError);
  });

  test('overrides replace defaults, and undefined overrides keep the default', () => {
    const cfg = resolveConfig({ port: 0, heartbeatMs: 200, heartbeatTimeoutMs: 1500, token: 'a-long-token', host: undefined });
    assert.equal(cfg.port, 0);
    assert.equal(cfg.heartbeatMs, 200);
    assert.equal(cfg.heartbeatTimeoutMs, 1500);
    assert.equal(cfg.token, 'a-long-token');
    assert.equal(cfg.host, DEFAULT_CONFIG.host);
    assert.equal(Object.isFrozen(cfg), true);
  });

  test('resolving does not change the defaults', () => {
    const before = { ...DEFAULT_CONFIG };
    resolveConfig({ port: 1234 });
    assert.deepEqual({ ...DEFAULT_CONFIG }, before);
  });

  test('an unknown setting is rejected with CRD_ERR_BAD_ARGS naming the key', () => {
    const details = refused({ heartbeatTimoutMs: 100 });
    assert.deepEqual(details, ["unknown setting 'heartbeatTimoutMs'"]);
  });

  for (const key of ['heartbeatMs', 'helloTimeoutMs', 'groupFormTimeoutMs', 'collectiveTimeoutMs'] as const) {
    for (const value of [0, -1, 1.5, Number.NaN, '100']) {
      test(`${key} = ${JSON.stringify(value) ?? String(value)} is rejected with a message naming the setting and the value`, () => {
        const details = refused({ [key]: value });
        assert.ok(details.includes(`${key} must be a positive integer (ms), got ${String(value)}`), details.join(' | '));
      });
    }
  }

  test('a non-positive heartbeatTimeoutMs is rejected with a precise message', () => {
    const details = refused({ heartbeatTimeoutMs: 0 });
    assert.ok(details.includes('heartbeatTimeoutMs must be a positive integer (ms), got 0'), details.join(' | '));
  });

  for (const [hb, timeout] of [
    [1000, 1000],
    [1000, 999],
    [5000, 1000],
  ] as const) {
    test(`heartbeatTimeoutMs ${timeout} with heartbeatMs ${hb} is rejected: the timeout must exceed the heartbeat`, () => {
      const details = refused({ heartbeatMs: hb, heartbeatTimeoutMs: timeout });
      assert.deepEqual(details, [`heartbeatTimeoutMs (${timeout}) must exceed heartbeatMs (${hb})`]);
    });
  }

  test('heartbeatTimeoutMs one millisecond above heartbeatMs is accepted', () => {
    assert.equal(resolveConfig({ heartbeatMs: 1000, heartbeatTimeoutMs: 1001 }).heartbeatTimeoutMs, 1001);
  });

  for (const port of [-1, 65536, 70000, 1.5, '80']) {
    test(`port ${JSON.stringify(port)} is rejected as out of range`, () => {
      const details = refused({ port });
      assert.ok(details.includes(`port must be 0–65535, got ${String(port)}`), details.join(' | '));
    });
  }

  for (const port of [0, 1, 65535]) {
    test(`port ${port} is accepted`, () => {
      assert.equal(resolveConfig({ port }).port, port);
    });
  }

  test('a token shorter than 8 characters is rejected', () => {
    assert.deepEqual(refused({ token: 'short' }), ['token must be 8 to 256 characters']);
    assert.deepEqual(refused({ token: 'x'.repeat(7) }), ['token must be 8 to 256 characters']);
    assert.deepEqual(refused({ token: 'x'.repeat(257) }), ['token must be 8 to 256 characters']);
    assert.equal(resolveConfig({ token: 'x'.repeat(8) }).token, 'x'.repeat(8));
    assert.equal(resolveConfig({ token: 'x'.repeat(256) }).token, 'x'.repeat(256));
  });

  test('an empty host or data folder is rejected', () => {
    assert.deepEqual(refused({ host: '' }), ['host must be a non-empty string']);
    assert.deepEqual(refused({ dataDir: '' }), ['dataDir must be a non-empty path']);
  });

  test('every problem is listed at once in details', () => {
    const details = refused({
      bogus: 1,
      port: 99999,
      token: 'abc',
      heartbeatMs: 0,
      helloTimeoutMs: -5,
      heartbeatTimeoutMs: 100,
      collectiveTimeoutMs: 2.5,
    });
    assert.deepEqual([...details].sort(), [
      "unknown setting 'bogus'",
      'collectiveTimeoutMs must be a positive integer (ms), got 2.5',
      'heartbeatMs must be a positive integer (ms), got 0',
      'helloTimeoutMs must be a positive integer (ms), got -5',
      'port must be 0–65535, got 99999',
      'token must be 8 to 256 characters',
    ].sort());
  });

  test('every problem is listed at once, including the heartbeat ordering', () => {
    const details = refused({ port: -3, heartbeatMs: 2000, heartbeatTimeoutMs: 2000, nope: true });
    assert.equal(details.length, 3, details.join(' | '));
    assert.ok(details.includes("unknown setting 'nope'"));
    assert.ok(details.includes('port must be 0–65535, got -3'));
    assert.ok(details.includes('heartbeatTimeoutMs (2000) must exceed heartbeatMs (2000)'));
  });
});
