/**
 * common/options.ts: one declaration gives the parser (aliases folded in, with a warning), typed values with their
 * checks, the checks of a config given in code, and the --help lines.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { defineOptions, markdownTable, opt, parseCommandLine, tableFlags, UsageError } from '../../common/options.ts';

const OPTIONS = defineOptions({
  port: opt.int({ default: 7070, min: 0, max: 65535, arg: 'PORT', doc: 'the port' }),
  headersTimeoutMs: opt.int({ default: 10_000, min: 1, arg: 'MS', aliases: ['headers-timeout'], doc: 'the head must arrive within this' }),
  dataDir: opt.string({ default: '.data', flag: 'data', arg: 'DIR', doc: 'where state lives' }),
  token: opt.string({ arg: 'TOKEN', env: 'TEST_TOKEN', doc: 'the token' }),
  helloTimeoutMs: opt.int({ default: 5000, min: 1, flag: false, doc: 'config only' }),
  backend: opt.choice(['cpu', 'wasm'] as const, { default: 'cpu', arg: 'B', doc: 'compute backend' }),
  apiKey: opt.list({ arg: 'KEY', doc: 'repeatable' }),
  fake: opt.boolean({ doc: 'a switch' }),
});

describe('defineOptions', () => {
  test('a key is its flag in kebab-case unless the declaration names one, and flag: false keeps it off the command line', () => {
    assert.deepEqual(OPTIONS.flags.map((f) => f.flag), ['port', 'headers-timeout-ms', 'data', 'token', 'backend', 'api-key', 'fake']);
    assert.deepEqual(OPTIONS.defaults, { port: 7070, headersTimeoutMs: 10_000, dataDir: '.data', token: undefined, helloTimeoutMs: 5000, backend: 'cpu', apiKey: undefined, fake: false });
    assert.equal(Object.isFrozen(OPTIONS.defaults), true);
  });

  test('fromArgs types what was given, fills in the env var of an absent flag, and leaves the rest out', () => {
    const { values } = parseCommandLine('t', ['--port', '0', '--data', 'x', '--api-key', 'a', '--api-key', 'b', '--fake'], [OPTIONS]);
    assert.deepEqual(OPTIONS.fromArgs(values, { TEST_TOKEN: 'from-env' }), { port: 0, dataDir: 'x', token: 'from-env', apiKey: ['a', 'b'], fake: true });
    assert.deepEqual(OPTIONS.fromArgs(parseCommandLine('t', ['--token', 'flag'], [OPTIONS]).values, { TEST_TOKEN: 'env' }), { token: 'flag' });
  });

  for (const [args, message] of [
    [['--port', '70000'], /^--port must be an integer in \[0, 65535\], got '70000'$/],
    [['--headers-timeout-ms', '0'], /^--headers-timeout-ms must be an integer in \[1, /],
    [['--backend', 'gpu'], /^--backend must be one of cpu, wasm, got 'gpu'$/],
  ] as const) {
    test(`fromArgs refuses ${args.join(' ')} with a usage error naming the flag`, () => {
      assert.throws(() => OPTIONS.fromArgs(parseCommandLine('t', [...args], [OPTIONS]).values, {}), (err: Error) => err instanceof UsageError && message.test(err.message));
    });
  }

  test('resolve fills defaults, keeps them for undefined, and lists every problem: unknown keys and bad values', () => {
    assert.deepEqual(OPTIONS.resolve({ port: 1, token: undefined }), { value: { ...OPTIONS.defaults, port: 1 }, problems: [] });
    assert.deepEqual(OPTIONS.resolve({ port: 70000, helloTimeoutMs: 0, backend: 'gpu', bogus: 1 }).problems, [
      "unknown setting 'bogus'",
      'port must be 0–65535, got 70000',
      'helloTimeoutMs must be a positive integer (ms), got 0',
      'backend must be one of cpu, wasm, got gpu',
    ]);
  });

  test('--help has a line per flag: the flag, its placeholder, the doc, the default and the env var', () => {
    const text = OPTIONS.help();
    assert.match(text, /^ {2}--port PORT +the port \(default: 7070\)$/m);
    assert.match(text, /^ {2}--token TOKEN +the token \(or TEST_TOKEN\)$/m);
    assert.match(text, /^ {2}--fake +a switch$/m);
    assert.doesNotMatch(text, /hello-timeout/);
  });

  test('markdownTable and tableFlags round-trip the flags, and a renamed flag names its old spelling', () => {
    const table = markdownTable(OPTIONS.flags);
    assert.deepEqual(tableFlags(table), OPTIONS.flags.map((f) => f.flag));
    assert.match(table, /\| `--headers-timeout-ms MS` \| `10000` \| – \| the head must arrive within this \(formerly `--headers-timeout`, still accepted\) \|/);
  });
});

describe('parseCommandLine', () => {
  test('a deprecated spelling counts as its flag, after one warning line', () => {
    const warned: string[] = [];
    const { values, positionals } = parseCommandLine('svc', ['start', '--headers-timeout', '500'], [OPTIONS], (line) => warned.push(line));
    assert.deepEqual(positionals, ['start']);
    assert.equal(values['headers-timeout-ms'], '500');
    assert.equal(values['headers-timeout'], undefined);
    assert.deepEqual(warned, ['svc: --headers-timeout is deprecated; use --headers-timeout-ms']);
    assert.equal(OPTIONS.fromArgs(values, {}).headersTimeoutMs, 500);
  });

  test('the current spelling wins over a deprecated one given too, and the current one alone warns nothing', () => {
    const warned: string[] = [];
    assert.equal(parseCommandLine('svc', ['--headers-timeout-ms', '7', '--headers-timeout', '9'], [OPTIONS], (l) => warned.push(l)).values['headers-timeout-ms'], '7');
    assert.equal(warned.length, 1);
    parseCommandLine('svc', ['--headers-timeout-ms', '7'], [OPTIONS], (l) => warned.push(l));
    assert.equal(warned.length, 1);
  });

  test('an unknown option is a usage error naming it, and -h is --help', () => {
    assert.throws(() => parseCommandLine('svc', ['--bogus'], [OPTIONS]), (err: Error) => err instanceof UsageError && /Unknown option '--bogus'/.test(err.message));
    assert.equal(parseCommandLine('svc', ['-h'], [OPTIONS]).values.help, true);
  });

  test('two sets may share a flag of the same type, never of different types', () => {
    const other = defineOptions({ token: opt.string({ doc: 'same flag' }), url: opt.string({ doc: 'another' }) });
    assert.deepEqual(parseCommandLine('svc', ['--token', 't', '--url', 'u'], [OPTIONS, other]).values, { token: 't', url: 'u' });
    const clash = defineOptions({ port: opt.boolean({ doc: 'not an int' }) });
    assert.throws(() => parseCommandLine('svc', [], [OPTIONS, clash]), /--port is declared twice with different types/);
  });
});
