#!/usr/bin/env node
// node scripts/build-wasm.mjs [--check]
// Assembles gateway/paged-attention.wat into gateway/paged-attention.wasm with wabt (the WebAssembly binary
// toolkit, a dev dependency): the .wasm is committed, so serving needs no assembler. --check only compares, and
// exits 1 when the committed .wasm is not what the .wat assembles to (the test suite runs the same comparison).
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import wabtInit from 'wabt';

export const WASM_SOURCES = ['gateway/paged-attention.wat'];

/** The bytes `file` (a .wat, relative to the repository) assembles to. */
export async function assemble(file) {
  const wabt = await wabtInit();
  const root = new URL('..', import.meta.url);
  const mod = wabt.parseWat(file, readFileSync(new URL(file, root), 'utf8'), { simd: true });
  try {
    mod.validate();
    return Buffer.from(mod.toBinary({}).buffer);
  } finally {
    mod.destroy();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const check = process.argv.includes('--check');
  let stale = 0;
  for (const file of WASM_SOURCES) {
    const out = new URL(`../${file.replace(/\.wat$/, '.wasm')}`, import.meta.url);
    const bytes = await assemble(file);
    if (check) {
      let committed;
      try { committed = readFileSync(out); } catch { committed = Buffer.alloc(0); }
      if (!bytes.equals(committed)) { stale++; console.error(`${file}: the committed .wasm is stale; run node scripts/build-wasm.mjs`); }
    } else {
      writeFileSync(out, bytes);
      console.log(`${fileURLToPath(out)}: ${bytes.length} bytes`);
    }
  }
  process.exit(stale ? 1 : 0);
}
