#!/usr/bin/env node
// npm test runs this first: it checks, before any test, that the machine has what the suite needs, and stops with one
// line saying what to do when it does not (npm run setup installs the system packages; npm ci the rest).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
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
// The Helm chart's test builds its renderer (deploy/helm/render) with Go and Debian's sprig, yaml.v2 and gojsonschema.
const goLibraries = ['github.com/Masterminds/sprig/functions.go', 'gopkg.in/yaml.v2/yaml.go', 'github.com/xeipuuv/gojsonschema/validation.go']; // as setup.sh checks
if (spawnSync('go', ['version']).status !== 0 || !goLibraries.every((f) => existsSync(`/usr/share/gocode/src/${f}`))) {
  fail('Go or its Debian library packages are missing (the Helm chart test builds deploy/helm/render): run npm run setup');
}
try {
  const c = await findChromium();
  console.log(`preflight: Node ${process.versions.node}, better-sqlite3, ${c.version} (${c.source})`);
} catch (err) {
  fail(err.message);
}
