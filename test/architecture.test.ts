/**
 * The shape of the house, checked on every run (README § Layout):
 *   - dependencies point one way: protocol ← common ← model ← {node-agent, gateway, coordinator}, and none of the
 *     three services imports another's files (what two share lives in common/ or protocol/);
 *   - no import cycle among the source files, type-only imports included (a worker thread's entry, started from a
 *     URL, is a module graph of its own and counts for the layering only);
 *   - no source file over MAX_LINES lines unless its header says why, in a line starting `Long:`.
 * Imports are read with TypeScript's own pre-processor (static, dynamic and re-exports), plus the
 * `new URL('…', import.meta.url)` references that start worker threads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';

const ROOT = resolve(import.meta.dirname, '..');
const LAYER: Record<string, number> = { protocol: 0, common: 1, model: 2, 'node-agent': 3, gateway: 3, coordinator: 3 };
const MAX_LINES = 400;

function sourceFiles(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) sourceFiles(p, out);
    else if (/\.(ts|mts|mjs|js)$/.test(name)) out.push(p);
  }
  return out;
}

/** Repo-relative paths this file imports (relative specifiers only; packages from node_modules are not ours). */
export function importsOf(file: string, source: string, workerUrls = true): string[] {
  const info = ts.preProcessFile(source, true, true);
  const specs = info.importedFiles.map((f) => f.fileName);
  if (workerUrls) for (const m of source.matchAll(/new URL\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*,\s*import\.meta\.url\s*\)/g)) specs.push(m[1]!);
  return specs
    .filter((s) => s.startsWith('./') || s.startsWith('../'))
    .map((s) => relative(ROOT, resolve(dirname(file), s)))
    .filter((p) => existsSync(join(ROOT, p)) && statSync(join(ROOT, p)).isFile());
}

const packageOf = (path: string): string => path.split('/')[0]!;

const files = Object.keys(LAYER).flatMap((pkg) => sourceFiles(join(ROOT, pkg))).map((f) => relative(ROOT, f));
const sources = new Map(files.map((f) => [f, readFileSync(join(ROOT, f), 'utf8')]));
/** Everything a file loads, worker entries included (for the layering). */
const graph = new Map(files.map((f) => [f, importsOf(join(ROOT, f), sources.get(f)!)]));
/** Module imports only (for cycles): a worker started from a URL is a module graph of its own. */
const moduleGraph = new Map(files.map((f) => [f, importsOf(join(ROOT, f), sources.get(f)!, false)]));

/** Every import that breaks the layering: a lower layer importing a higher one, or one service another. */
export function layeringViolations(edges: ReadonlyMap<string, readonly string[]>): string[] {
  const out: string[] = [];
  for (const [from, targets] of edges) {
    const p = packageOf(from);
    for (const to of targets) {
      const q = packageOf(to);
      if (!(q in LAYER) || q === p) continue;
      if (LAYER[q]! >= LAYER[p]!) out.push(`${from} imports ${to} (${p} may import only ${Object.keys(LAYER).filter((k) => LAYER[k]! < LAYER[p]!).join(', ') || 'nothing of ours'})`);
    }
  }
  return out;
}

/** Strongly connected components of more than one file (Tarjan), each a cycle to break. */
export function importCycles(edges: ReadonlyMap<string, readonly string[]>): string[][] {
  let next = 0;
  const index = new Map<string, number>(), low = new Map<string, number>(), onStack = new Set<string>(), stack: string[] = [];
  const cycles: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next); low.set(v, next++); stack.push(v); onStack.add(v);
    for (const w of edges.get(v) ?? []) {
      if (!edges.has(w)) continue;
      if (!index.has(w)) { visit(w); low.set(v, Math.min(low.get(v)!, low.get(w)!)); }
      else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const scc: string[] = [];
    let w: string;
    do { w = stack.pop()!; onStack.delete(w); scc.push(w); } while (w !== v);
    if (scc.length > 1 || (edges.get(v) ?? []).includes(v)) cycles.push(scc.sort());
  };
  for (const v of edges.keys()) if (!index.has(v)) visit(v);
  return cycles;
}

test('the import reader sees static, type-only, dynamic, re-export and worker-URL imports', () => {
  const src = [
    "import { a } from './a.ts';", "import type { B } from '../protocol/codec.ts';", "export { c } from './compute/backend.ts';",
    "const m = await import('./tensor-values.ts');", "new Worker(new URL('../common/worker-boot.mjs', import.meta.url));",
    "import fs from 'node:fs';",
  ].join('\n');
  assert.deepEqual(importsOf(join(ROOT, 'model/x.ts'), src).sort(),
    ['common/worker-boot.mjs', 'model/compute/backend.ts', 'model/tensor-values.ts', 'protocol/codec.ts'].sort());
});

test('the layering check catches a lower layer importing a higher one and a service importing another', () => {
  const bad = new Map([
    ['protocol/a.ts', ['common/log.ts']],
    ['common/b.ts', ['node-agent/x.ts']],
    ['coordinator/c.ts', ['gateway/sampling.ts', 'model/gpt.ts', 'coordinator/d.ts']],
    ['model/e.ts', ['protocol/codec.ts', 'common/log.ts']],
  ]);
  assert.deepEqual(layeringViolations(bad).map((v) => v.split(' imports ')[0]), ['protocol/a.ts', 'common/b.ts', 'coordinator/c.ts']);
  assert.deepEqual(importCycles(new Map([['a', ['b']], ['b', ['c']], ['c', ['a']], ['d', ['a']]])), [['a', 'b', 'c']]);
  assert.deepEqual(importCycles(new Map([['a', ['b']], ['b', []]])), []);
});

test('dependencies point one way: protocol ← common ← model ← {node-agent, gateway, coordinator}', () => {
  assert.ok(graph.size > 150, `read ${graph.size} source files`);
  assert.deepEqual(layeringViolations(graph), []);
});

test('no import cycles among the source files', () => {
  assert.deepEqual(importCycles(moduleGraph), []);
});

test(`no source file over ${MAX_LINES} lines without a reason in its header`, () => {
  const long = files.filter((f) => {
    const text = sources.get(f)!;
    if (text.split('\n').length <= MAX_LINES) return false;
    const header = /^(?:#![^\n]*\n)?\s*\/\*\*([\s\S]*?)\*\//.exec(text)?.[1] ?? '';
    return !/^\s*\*\s*Long:/m.test(header);
  });
  assert.deepEqual(long, []);
});
