#!/usr/bin/env node
// npm test → node scripts/run-tests.mjs [filter]
// Runs every test/**/*.test.ts with Node's built-in runner (TypeScript through tsx). Node 20's --test does not
// expand globs, so the files are listed here. An optional argument keeps only files whose path contains it.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function walk(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith('.test.ts') ? [p] : [];
  });
}

const filter = process.argv[2];
const files = walk('test').filter((f) => !filter || f.includes(filter)).sort();
if (files.length === 0) {
  console.error(`no test files match ${filter ?? 'test/**/*.test.ts'}`);
  process.exit(1);
}
// Extract and check the bundled Chromium once, here, so that test files running side by side never race to unpack it.
if (files.some((f) => f.includes('dashboard'))) {
  const { findChromium } = await import('./chromium.mjs');
  const chromium = await findChromium();
  Object.assign(process.env, chromium.env, { CHROMIUM_PATH: chromium.path }); // the test files find the same browser
}
const args = ['--import', 'tsx', '--test', '--test-reporter=spec', '--test-concurrency=2', ...files];
const res = spawnSync(process.execPath, args, { stdio: 'inherit' });
process.exit(res.status ?? 1);
