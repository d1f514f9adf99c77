/** Sticky A/B assignment by weighted rendezvous hashing (gateway/ab-assign.ts). */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { assignArm, createAbSplit, type AbArm } from '../../gateway/ab-assign.ts';
import { seededRandom } from '../../common/random.ts';

const KEYS = 100_000;
const keys = Array.from({ length: KEYS }, (_, i) => `user-${i.toString(36)}-${Math.floor(seededRandom(9)() * 1e9)}`);
const randomKeys = (() => { const r = seededRandom(5); return Array.from({ length: KEYS }, () => Math.floor(r() * 2 ** 52).toString(16)); })();
const arms = (...weights: number[]): AbArm[] => weights.map((weight, i) => ({ version: `v${i + 1}`, weight }));

/** Chi-square statistic of the observed counts per arm against the weights; 0.001 critical values by degrees of freedom. */
function chiSquare(counts: Map<string | number, number>, split: readonly AbArm[], n: number): number {
  const total = split.reduce((s, a) => s + a.weight, 0);
  return split.filter((a) => a.weight > 0).reduce((chi, a) => { const e = (n * a.weight) / total; return chi + ((counts.get(a.version) ?? 0) - e) ** 2 / e; }, 0);
}
const CHI2_CRITICAL_0001 = [NaN, 10.83, 13.82, 16.27, 18.47];

describe('assignArm', () => {
  test('the same key gets the same arm, whatever the order of the arms array', () => {
    const a = arms(1, 2, 3);
    const reversed = [...a].reverse();
    for (const key of keys.slice(0, 1000)) {
      const arm = assignArm(key, a, 'exp-1');
      assert.equal(assignArm(key, a, 'exp-1'), arm);
      assert.equal(assignArm(key, reversed, 'exp-1').version, arm.version);
    }
  });

  const weightTables: number[][] = [[1, 1], [1, 9], [1, 2, 7], [0.5, 0.25, 0.25], [3, 0, 1], [5, 1, 1, 1, 2]];
  for (const weights of weightTables) {
    test(`weights ${weights.join(':')} split ${KEYS} keys in proportion, within 1% and under the chi-square 0.001 bound`, () => {
      const a = arms(...weights);
      const split = createAbSplit({ arms: a, salt: 'exp-1' });
      const counts = new Map<string | number, number>();
      for (const key of randomKeys) { const v = split.assign(key).version; counts.set(v, (counts.get(v) ?? 0) + 1); }
      const total = weights.reduce((s, w) => s + w, 0);
      for (const arm of a) {
        const share = (counts.get(arm.version) ?? 0) / KEYS;
        assert.ok(Math.abs(share - arm.weight / total) < 0.01, `${arm.version}: ${share} vs ${arm.weight / total}`);
      }
      if (weights.includes(0)) assert.equal(counts.get(a[weights.indexOf(0)]!.version), undefined, 'a zero-weight arm gets nothing');
      const df = weights.filter((w) => w > 0).length - 1;
      assert.ok(chiSquare(counts, a, KEYS) < CHI2_CRITICAL_0001[df]!, `chi-square ${chiSquare(counts, a, KEYS)}`);
    });
  }

  const moves: Array<{ name: string; before: number[]; after: number[] }> = [
    { name: 'raising one arm only takes keys to it', before: [1, 1, 1], after: [1, 3, 1] },
    { name: 'lowering one arm only sends its keys away', before: [2, 5, 3], after: [2, 1, 3] },
    { name: 'a canary going 1% → 10% moves only about 9% of keys', before: [99, 1], after: [90, 10] },
    { name: 'switching an arm off moves only its keys', before: [1, 1, 2], after: [1, 0, 2] },
  ];
  for (const m of moves) {
    test(`${m.name}: keys never move between two unchanged arms, and the share moved is the share changed`, () => {
      const before = createAbSplit({ arms: arms(...m.before), salt: 's' });
      const after = createAbSplit({ arms: arms(...m.after), salt: 's' });
      const changed = new Set(arms(...m.after).filter((a, i) => a.weight !== m.before[i]).map((a) => a.version));
      let moved = 0;
      for (const key of keys) {
        const x = before.assign(key).version;
        const y = after.assign(key).version;
        if (x === y) continue;
        moved++;
        assert.ok(changed.has(x) || changed.has(y), `${key} moved ${x} → ${y}, neither changed`);
      }
      const share = (w: number[], i: number) => w[i]! / w.reduce((s, v) => s + v, 0);
      const minimum = m.before.reduce((sum, _, i) => sum + Math.max(0, share(m.before, i) - share(m.after, i)), 0);
      assert.ok(Math.abs(moved / KEYS - minimum) < 0.01, `moved ${moved / KEYS}, minimum ${minimum}`);
    });
  }

  test('adding an arm only takes keys to the new arm', () => {
    const before = createAbSplit({ arms: arms(1, 1), salt: 's' });
    const after = createAbSplit({ arms: arms(1, 1, 1), salt: 's' });
    let moved = 0;
    for (const key of keys) {
      const y = after.assign(key).version;
      if (before.assign(key).version !== y) { moved++; assert.equal(y, 'v3'); }
    }
    assert.ok(Math.abs(moved / KEYS - 1 / 3) < 0.01, `moved ${moved / KEYS}`);
  });

  test('a different salt reshuffles keys independently', () => {
    const a = arms(1, 1);
    let same = 0;
    for (const key of keys) if (assignArm(key, a, 'exp-1') === assignArm(key, a, 'exp-2')) same++;
    assert.ok(Math.abs(same / KEYS - 0.5) < 0.01, `agreement ${same / KEYS}`);
  });

  test('numeric versions work and the caller\'s own arm object comes back', () => {
    const a = [{ version: 3, weight: 1, backend: 'old' }, { version: 4, weight: 1, backend: 'new' }];
    const arm = assignArm('user-1', a, 's');
    assert.ok(a.includes(arm));
    assert.equal(typeof arm.backend, 'string');
  });

  test('a request without a key gets a random arm by weight from the passed stream', () => {
    const a = arms(1, 3);
    const split = createAbSplit({ arms: a, salt: 's', random: seededRandom(7) });
    let v2 = 0;
    for (let i = 0; i < 20_000; i++) if (split.assign(i % 3 === 0 ? undefined : i % 3 === 1 ? null : '').version === 'v2') v2++;
    assert.ok(Math.abs(v2 / 20_000 - 0.75) < 0.015, `share ${v2 / 20_000}`);
    assert.equal(assignArm(undefined, a, 's', () => 0.1).version, 'v1');
    assert.equal(assignArm(undefined, a, 's', () => 0.3).version, 'v2');
    assert.equal(assignArm(undefined, arms(1, 0), 's', () => 0.999999).version, 'v1', 'never a zero-weight arm');
    assert.throws(() => assignArm(undefined, a, 's', () => 1), /random\(\) must return a number in \[0, 1\), got 1/);
  });

  test('bad arms are rejected with precise messages', () => {
    const bad: Array<[AbArm[], RegExp]> = [
      [[], /at least one arm/],
      [arms(0, 0), /at least one arm with a positive weight/],
      [arms(1, -1), /arm 1 \(version v2\): weight must be a finite number ≥ 0, got -1/],
      [arms(1, Infinity), /arm 1 \(version v2\): weight must be a finite number ≥ 0, got Infinity/],
      [arms(NaN), /arm 0 \(version v1\): weight must be a finite number ≥ 0, got NaN/],
      [[{ version: 1, weight: 1 }, { version: '1', weight: 1 }], /arm 1: version 1 appears twice/],
      [[{ version: '', weight: 1 }], /arm 0: version must be a non-empty string or a finite number/],
    ];
    for (const [a, message] of bad) assert.throws(() => assignArm('k', a, 's'), { name: 'RangeError', message });
  });

  test('the split is frozen', () => {
    const split = createAbSplit({ arms: arms(1, 1), salt: 's' });
    assert.ok(Object.isFrozen(split) && Object.isFrozen(split.arms));
  });
});
