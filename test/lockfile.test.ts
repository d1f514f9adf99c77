/**
 * A verifiable install: every package that package-lock.json fetches from the registry has its `integrity`
 * (sha512), so `npm ci` checks every tarball it installs, and nothing is installed from a local stand-in folder.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

interface LockEntry {
  version?: string;
  resolved?: string;
  integrity?: string;
  link?: boolean;
}

/** One line per lockfile entry that would be installed unchecked. Empty when every entry is verifiable. */
export function unverifiable(lock: { packages: Record<string, LockEntry> }): string[] {
  const problems: string[] = [];
  for (const [path, entry] of Object.entries(lock.packages)) {
    if (path === '') continue; // the project itself
    if (entry.link) {
      problems.push(`${path} is a link to a local folder (${entry.resolved ?? '?'}): install it from the registry`);
      continue;
    }
    if (!entry.integrity) problems.push(`${path}@${entry.version ?? '?'} has no integrity hash`);
    else if (!/^sha512-[A-Za-z0-9+/]{86}==$/.test(entry.integrity)) problems.push(`${path}@${entry.version ?? '?'} has a weak or malformed integrity (${entry.integrity.slice(0, 12)}…)`);
    // No `resolved` means "name@version from the configured registry" (npm omits it for registry packages, so a mirror
    // works); one that is there must be a tarball over https, not a git URL or a local path.
    if (entry.resolved !== undefined && !entry.resolved.startsWith('https://')) problems.push(`${path}@${entry.version ?? '?'} comes from ${entry.resolved}, not a registry tarball`);
  }
  return problems;
}

test('every entry of package-lock.json is fetched from the registry and checked against its sha512', () => {
  const lock = JSON.parse(readFileSync(new URL('../package-lock.json', import.meta.url), 'utf8')) as { lockfileVersion: number; packages: Record<string, LockEntry> };
  assert.equal(lock.lockfileVersion, 3);
  assert.ok(Object.keys(lock.packages).length > 100, 'the lockfile lists the whole tree');
  assert.deepEqual(unverifiable(lock), []);
});

test('unverifiable names an entry without integrity, a sha1 one and a local stand-in', () => {
  const ok = { version: '1.0.0', resolved: 'https://registry.npmjs.org/a/-/a-1.0.0.tgz', integrity: `sha512-${'A'.repeat(86)}==` };
  assert.deepEqual(unverifiable({ packages: { '': {}, 'node_modules/a': ok } }), []);
  const bad = unverifiable({
    packages: {
      'node_modules/b': { version: '2.0.0' },
      'node_modules/c': { ...ok, integrity: 'sha1-abc' },
      'node_modules/d': { resolved: 'vendor/d', link: true },
      'node_modules/e': { ...ok, resolved: 'git+ssh://git@example.com/e.git' },
    },
  });
  assert.equal(bad.length, 4, bad.join('\n'));
  assert.match(bad.join('\n'), /node_modules\/e@1\.0\.0 comes from git\+ssh/);
  assert.match(bad.join('\n'), /node_modules\/b@2\.0\.0 has no integrity hash/);
  assert.match(bad.join('\n'), /node_modules\/c@1\.0\.0 has a weak or malformed integrity/);
  assert.match(bad.join('\n'), /node_modules\/d is a link to a local folder/);
});
