/** Model-version lineage: the parent a spec names, the chain back through parents, and the code version beside it. */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatCodeVersion, readCodeVersion } from '../../coordinator/code-version.ts';
import { CoordinatorError } from '../../coordinator/errors.ts';
import { lineageChain, parentOf } from '../../coordinator/tracking/lineage.ts';
import type { ModelVersion } from '../../coordinator/registry/registry.ts';
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';

const registry = { models: () => [{ name: 'base', versions: 4, latest: 4, updatedMs: 0 }] };
const withInit = (from: unknown) => ({ init: { from } }) as unknown as ResolvedJobSpec;

describe('model-version lineage', () => {
  test('the parent of a spec: table of init.from → version', () => {
    const cases: Array<[unknown, unknown]> = [
      ['base@3', { name: 'base', version: 3 }],
      ['base:v2', { name: 'base', version: 2 }],
      ['base', { name: 'base', version: 4 }], // its latest
      [{ name: 'base', version: 1 }, { name: 'base', version: 1 }],
      ['unknown-model', undefined],
      ['base@0', undefined],
      [42, undefined],
      [undefined, undefined],
    ];
    for (const [from, want] of cases) assert.deepEqual(parentOf(withInit(from), registry), want, JSON.stringify(from));
    assert.equal(parentOf({} as ResolvedJobSpec, registry), undefined, 'no init at all');
  });

  test('the chain walks parents, stops at a removed parent, and never loops', () => {
    const lineages: Record<string, Record<string, unknown>> = {
      'c@1': { jobId: 'job-c', parent: { name: 'b', version: 2 }, codeVersion: '0.1.0+abc', metrics: { loss: 1 } },
      'b@2': { jobId: 'job-b', parent: { name: 'a', version: 1 } },
      'x@1': { parent: { name: 'y', version: 1 } },
      'y@1': { parent: { name: 'x', version: 1 } },
    };
    const get = (name: string, version: number) => {
      const l = lineages[`${name}@${version}`];
      if (!l) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no model ${name} version ${version}`);
      return { lineage: l } as unknown as ModelVersion;
    };
    const { chain } = lineageChain({ get }, 'c', 1);
    assert.deepEqual(chain.map((l) => [l.name, l.version, l.jobId]), [['c', 1, 'job-c'], ['b', 2, 'job-b']], 'a@1 was removed: the chain ends at b');
    assert.equal(chain[0]!.codeVersion, '0.1.0+abc');
    assert.deepEqual(lineageChain({ get }, 'x', 1).chain.map((l) => l.name), ['x', 'y']);
    assert.throws(() => lineageChain({ get }, 'a', 1), /no model a/);
  });

  test('the code version is the package version and commit, or unknown outside a git checkout', () => {
    const here = readCodeVersion();
    assert.equal(here.version, '0.1.0');
    assert.match(formatCodeVersion(here), /^0\.1\.0\+([0-9a-f]{40}(-dirty)?|unknown)$/);
    const dir = mkdtempSync(join(tmpdir(), 'code-version-'));
    try {
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ version: '9.9.9' }));
      assert.deepEqual(readCodeVersion(dir), { version: '9.9.9', commit: 'unknown', dirty: false });
      assert.equal(formatCodeVersion({ version: '1.0.0', commit: 'abc', dirty: true }), '1.0.0+abc-dirty');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
