/**
 * Each service declares its options once (common/options.ts): coordinator start in coordinator/config.ts,
 * node-agent join in node-agent/options.ts, gateway serve in gateway/options.ts. These tests hold --help, README's
 * option tables and the flag spellings to those declarations, so none of them can drift.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { markdownTable, tableFlags, type DeclaredOption } from '../common/options.ts';
import { COORDINATOR_OPTIONS } from '../coordinator/config.ts';
import { CLIENT_OPTIONS } from '../coordinator/cli/client.ts';
import { AGENT_OPTIONS } from '../node-agent/options.ts';
import { ADMIN_OPTIONS, SERVE_OPTIONS } from '../gateway/options.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const README = readFileSync(new URL('../README.md', import.meta.url), 'utf8');

const SERVICES = [
  { name: 'coordinator start', bin: 'coordinator', declared: COORDINATOR_OPTIONS.flags, others: CLIENT_OPTIONS.flags },
  { name: 'node-agent join', bin: 'node-agent', declared: AGENT_OPTIONS.flags, others: [] as readonly DeclaredOption[] },
  { name: 'gateway serve', bin: 'gateway', declared: SERVE_OPTIONS.flags, others: ADMIN_OPTIONS.flags },
] as const;

const aliasesOf = (flags: readonly DeclaredOption[]) => flags.flatMap((f) => f.spec.aliases ?? []);

function help(bin: string): string {
  const res = spawnSync(process.execPath, [`${ROOT}bin/${bin}.js`, '--help'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(res.status, 0, res.stderr);
  return res.stdout;
}

/** The table right below `<!-- options: NAME -->` in README.md. */
function readmeTable(name: string): string {
  const marker = `<!-- options: ${name} -->\n`;
  const at = README.indexOf(marker);
  assert.ok(at >= 0, `README.md has no '${marker.trim()}' followed by the options table of ${name}`);
  const lines = README.slice(at + marker.length).split('\n');
  return lines.slice(0, lines.findIndex((l) => !l.startsWith('|'))).join('\n');
}

describe('every service declares its options once', () => {
  for (const s of SERVICES) {
    test(`${s.bin} --help lists every option ${s.name} declares, and no flag it does not declare`, () => {
      const text = help(s.bin);
      for (const { flag } of s.declared) assert.match(text, new RegExp(`^  --${flag}(?= |$)`, 'm'), `--help lists --${flag}`);
      const listed = [...text.matchAll(/^ {2}--([a-z0-9-]+)/gm)].map((m) => m[1]!);
      const known = new Set([...s.declared, ...s.others].map((f) => f.flag).concat('help'));
      assert.deepEqual(listed.filter((f) => !known.has(f)), [], 'flags in --help that no declaration has');
    });

    test(`README's option table for ${s.name} lists the flags it declares, in order`, () => {
      const table = readmeTable(s.name);
      assert.deepEqual(tableFlags(table), s.declared.map((f) => f.flag), `README.md should have, below <!-- options: ${s.name} -->:\n${markdownTable(s.declared)}`);
    });
  }

  test("README's Limits table names each service's current flags, never a deprecated spelling", () => {
    const at = README.indexOf('| limit | coordinator | agent peer port | gateway |');
    assert.ok(at >= 0, 'README.md has the Limits table');
    const lines = README.slice(at).split('\n');
    const rows = lines.slice(2, lines.findIndex((l) => !l.startsWith('|')));
    assert.ok(rows.length >= 5, 'the Limits table has its rows');
    const [coordinator, agent, gateway] = SERVICES.map((s) => new Set(s.declared.map((f) => f.flag)));
    for (const row of rows) {
      const cells = row.split('|').slice(1, -1).map((c) => c.trim());
      [coordinator, agent, gateway].forEach((flags, i) => {
        for (const m of cells[i + 1]!.matchAll(/`--([a-z0-9-]+)/g)) assert.ok(flags!.has(m[1]!), `--${m[1]} in the Limits table is not a flag of ${SERVICES[i]!.name}: ${row}`);
      });
    }
  });

  test('a setting two services share has one flag, and every duration flag carries its unit', () => {
    const byKey = new Map<string, Set<string>>();
    for (const s of SERVICES) for (const { key, flag } of s.declared) byKey.set(key, (byKey.get(key) ?? new Set()).add(flag));
    for (const [key, flags] of byKey) assert.equal(flags.size, 1, `${key} is spelled ${[...flags].join(' and ')}`);
    for (const s of SERVICES) {
      for (const { key, flag } of s.declared) if (key.endsWith('Ms')) assert.match(flag, /-ms$/, `${s.name}: ${key} is --${flag}`);
    }
    // The renamed spellings stay accepted (test/common/options.test.ts checks the warning).
    assert.deepEqual(aliasesOf(COORDINATOR_OPTIONS.flags).sort(), ['headers-timeout', 'heartbeat-timeout', 'step-timeout']);
    assert.deepEqual(aliasesOf(AGENT_OPTIONS.flags).sort(), ['collective-timeout', 'headers-timeout', 'peer-hello-timeout', 'peer-keepalive']);
  });

  test('a deprecated spelling on the command line still works, with a one-line warning on stderr', () => {
    // --heartbeat-timeout 10 reaches heartbeatTimeoutMs: the configuration check refuses it, naming that setting.
    const res = spawnSync(process.execPath, [`${ROOT}bin/coordinator.js`, 'start', '--port', '0', '--heartbeat-timeout', '10'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(res.status, 2, res.stderr);
    assert.equal(res.stderr.split('\n')[0], 'coordinator: --heartbeat-timeout is deprecated; use --heartbeat-timeout-ms');
    assert.match(res.stderr, /heartbeatTimeoutMs \(10\) must exceed heartbeatMs \(1000\)/);
  });
});
