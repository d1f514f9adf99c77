/**
 * Every stable error code and every close code is documented in README.md: error codes in backticks
 * (`PRT_ERR_…`, `CRD_ERR_…`, `AGT_ERR_…`), close codes as a row of the close-code table with value and name.
 * The check is a helper that lists what is missing, so the test can also show that it fails when something is.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { errorSpec, errorTables } from '../protocol/define-errors.ts';
// Each package's errors.ts declares its table in errorTables when imported.
import { ProtocolError } from '../protocol/errors.ts';
import { CoordinatorError } from '../coordinator/errors.ts';
import { AgentError } from '../node-agent/errors.ts';
import { ModelError } from '../model/errors.ts';
import { GatewayError } from '../gateway/errors.ts';
import { CloseCode } from '../protocol/codes.ts';

const README = readFileSync(new URL('../README.md', import.meta.url), 'utf8');

const ERROR_CODES: readonly string[] = [...errorTables.values()].flatMap((table) => Object.keys(table));
const CLOSE_CODES: ReadonlyArray<[name: string, value: number]> = Object.entries(CloseCode);

/** Table rows of a markdown text, as arrays of trimmed cells. */
function tableRows(markdown: string): string[][] {
  return markdown
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('|') && l.endsWith('|'))
    .map((l) => l.slice(1, -1).split('|').map((c) => c.trim()));
}

/** Everything `readme` fails to document: one line per missing error code or close code. Empty when complete. */
function undocumented(readme: string): string[] {
  const missing: string[] = [];
  for (const code of ERROR_CODES) {
    if (!readme.includes(`\`${code}\``)) missing.push(`error code ${code} is not in README.md as \`${code}\``);
  }
  const rows = tableRows(readme);
  for (const [name, value] of CLOSE_CODES) {
    const row = rows.find((cells) => cells[0] === String(value) && cells[1]?.replace(/`/g, '') === name);
    if (!row) missing.push(`close code ${value} ${name} has no row "| ${value} | ${name} | … |" in README.md's close-code table`);
  }
  return missing;
}

/**
 * Rows of README's code table whose meaning names a status (an HTTP status, or a 40xx close code) other than the
 * one the code's table declares: one line each. Empty when every status the README gives is the declared one.
 */
function misstatedStatuses(readme: string): string[] {
  const wrong: string[] = [];
  for (const [code, meaning] of tableRows(readme)) {
    const bare = code?.replace(/`/g, '');
    const spec = bare === undefined ? undefined : errorSpec(bare);
    if (!spec || meaning === undefined) continue;
    const declared = spec.status ?? spec.closeCode;
    for (const [, n] of meaning.matchAll(/\b([1-5]\d\d|4\d\d\d)\b/g)) {
      if (Number(n) !== declared) wrong.push(`${bare}: README.md says ${n}, its table declares ${declared ?? 'no status'}`);
    }
  }
  return wrong;
}

describe('documentation of error codes', () => {
  test('there are codes to check in every package', () => {
    assert.deepEqual([...errorTables.keys()].sort(), ['AGT_ERR_', 'CRD_ERR_', 'GW_ERR_', 'MDL_ERR_', 'PRT_ERR_']);
    assert.ok(Object.keys(ProtocolError.codes).length >= 8);
    assert.ok(Object.keys(CoordinatorError.codes).length >= 8);
    assert.ok(Object.keys(AgentError.codes).length >= 9);
    assert.ok(Object.keys(ModelError.codes).length >= 10);
    assert.ok(Object.keys(GatewayError.codes).length >= 10);
    assert.ok(CLOSE_CODES.length >= 14);
  });

  test('README.md documents every error code and every close code', () => {
    assert.deepEqual(undocumented(README), []);
  });

  test('the check notices an error code removed from the README', () => {
    for (const code of ['PRT_ERR_HELLO_TIMEOUT', 'CRD_ERR_STORAGE', 'AGT_ERR_BACKEND']) {
      const without = README.split(`\`${code}\``).join(`${code}`);
      assert.notEqual(without, README, `${code} was in the README to begin with`);
      assert.deepEqual(undocumented(without), [`error code ${code} is not in README.md as \`${code}\``]);
    }
  });

  test('the check notices a close-code row removed from the table', () => {
    const without = README.split('\n').filter((l) => !/^\|\s*4007\s*\|/.test(l)).join('\n');
    assert.notEqual(without, README);
    const missing = undocumented(without);
    assert.equal(missing.length, 1, missing.join('\n'));
    assert.match(missing[0]!, /close code 4007 HELLO_TIMEOUT/);
  });

  test('the check notices a close code whose value and name are on different rows', () => {
    const swapped = README.replace(/^\|\s*4005\s*\|\s*UNAUTHORIZED\s*\|/m, '| 4005 | UNEXPECTED |').replace(/^\|\s*4006\s*\|\s*UNEXPECTED\s*\|/m, '| 4006 | UNAUTHORIZED |');
    assert.notEqual(swapped, README);
    const missing = undocumented(swapped);
    assert.equal(missing.length, 2, missing.join('\n'));
    assert.ok(missing.some((m) => m.includes('4005 UNAUTHORIZED')));
    assert.ok(missing.some((m) => m.includes('4006 UNEXPECTED')));
  });

  test('a close code mentioned only in prose does not count as documented', () => {
    const prose = 'The coordinator closes with 4009 REPLACED when a newer connection takes over.\n';
    const missing = undocumented(prose);
    assert.ok(missing.some((m) => m.startsWith('close code 4009 REPLACED')));
  });

  test("every status README.md gives for a code is the one the code's table declares", () => {
    assert.deepEqual(misstatedStatuses(README), []);
  });

  test('the status check notices a status in README.md that differs from the table', () => {
    const changed = README.replace(/^(\|\s*`CRD_ERR_CONFLICT`.*)\(409\)/m, '$1(410)');
    assert.notEqual(changed, README);
    assert.deepEqual(misstatedStatuses(changed), ['CRD_ERR_CONFLICT: README.md says 410, its table declares 409']);
  });
});
