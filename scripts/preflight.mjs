#!/usr/bin/env node
// npm test runs this first: it checks, before any test, that the machine has what the suite needs, and stops with one
// line saying what to do when it does not (npm run setup installs the system packages; npm ci the rest).
import { createRequire } from 'node:module';
import { findChromium } from './chromium.mjs';

const fail = (line) => {
  console.error(`preflight: ${line}`);
  process.exit(1);
};

const major = Number(process.versions.node.split('.')[0]);
if (major < 20) fail(`Node.js ${process.versions.node} is too old: meshtrain needs 20 or later`);
const require = createRequire(import.meta.url);
try {
  require.resolve('tsx');
  require.resolve('playwright-core');
} catch {
  fail('dependencies are not installed: run npm run setup && npm ci');
}
try {
  new (require('better-sqlite3'))(':memory:').close();
} catch (err) {
  fail(`better-sqlite3 does not load (${err.message.split('\n')[0]}): run npm run setup, then npm ci again`);
}
try {
  const c = await findChromium();
  console.log(`preflight: Node ${process.versions.node}, better-sqlite3, ${c.version} (${c.source})`);
} catch (err) {
  fail(err.message);
}
