import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { initParam, initParams, paramLayout, unflatten, type GPTConfig } from '../../model/params.ts';
import {
  allShards,
  extractShard,
  initShardParams,
  insertShard,
  shardLayout,
  splitLayers,
  type ShardLayout,
  type ShardSpec,
} from '../../model/shard-layout.ts';

const SMALL: GPTConfig = { vocabSize: 300, nCtx: 8, nLayer: 4, nHead: 4, nEmbd: 16 };
const WIDE: GPTConfig = { vocabSize: 50, nCtx: 5, nLayer: 3, nHead: 6, nEmbd: 12 };

/** Layouts as (config, stage bounds, tp degree); the oracle is the full model's flat buffer. */
const CASES: ReadonlyArray<{ what: string; config: GPTConfig; bounds: Array<[number, number]>; tp: number }> = [
  { what: '1 stage × tp 1', config: SMALL, bounds: [[0, 4]], tp: 1 },
  { what: '2 stages [0,1),[1,4) × tp 2', config: SMALL, bounds: [[0, 1], [1, 4]], tp: 2 },
  { what: '4 stages × tp 4', config: SMALL, bounds: [[0, 1], [1, 2], [2, 3], [3, 4]], tp: 4 },
  { what: '2 equal stages × tp 2', config: SMALL, bounds: [[0, 2], [2, 4]], tp: 2 },
  { what: '1 stage × tp 4', config: SMALL, bounds: [[0, 4]], tp: 4 },
  { what: '3 stages × tp 3 on 6 heads', config: WIDE, bounds: [[0, 1], [1, 2], [2, 3]], tp: 3 },
];

const layoutsOf = (c: (typeof CASES)[number]): ShardLayout[] => allShards(c.bounds, c.tp).map((s) => shardLayout(c.config, s));

const arange = (n: number): Float32Array => Float32Array.from({ length: n }, (_, i) => i + 1);

describe('shard layouts', () => {
  for (const c of CASES) {
    test(`inserting every shard's extract reconstructs the full buffer, every element covered, for ${c.what}`, () => {
      const full = paramLayout(c.config);
      const source = unflatten(arange(full.totalSize), full); // element i holds i + 1: a misplaced copy shows
      const rebuilt = new Float32Array(full.totalSize);
      const target = unflatten(rebuilt, full);
      for (const layout of layoutsOf(c)) {
        const local = extractShard((n) => source.get(n)!, layout);
        assert.equal(local.length, layout.totalSize);
        insertShard(local, layout, (n) => target.get(n)!);
      }
      assert.deepEqual(rebuilt, arange(full.totalSize));
    });

    test(`initShardParams equals extractShard of the full initParams for ${c.what}`, () => {
      const full = paramLayout(c.config);
      const views = unflatten(initParams(full, 7), full);
      for (const layout of layoutsOf(c)) {
        assert.deepEqual(initShardParams(c.config, layout, 7), extractShard((n) => views.get(n)!, layout), `stage ${layout.shard.stage} tp ${layout.shard.tpRank}`);
      }
    });

    test(`norm contributions of all shards add up to the full parameter count for ${c.what}`, () => {
      const counted = layoutsOf(c).flatMap((l) => l.specs.filter((s) => s.countsForNorm)).reduce((n, s) => n + s.size, 0);
      assert.equal(counted, paramLayout(c.config).totalSize);
    });

    test(`local specs tile the local buffer in paramLayout order for ${c.what}`, () => {
      const order = paramLayout(c.config).specs.map((s) => s.name);
      for (const layout of layoutsOf(c)) {
        let offset = 0;
        for (const s of layout.specs) {
          assert.equal(s.offset, offset, s.name);
          assert.equal(s.size, s.shape.reduce((a, b) => a * b, 1), s.name);
          assert.equal(layout.byName.get(s.name), s);
          offset += s.size;
        }
        assert.equal(layout.totalSize, offset);
        const idx = layout.specs.map((s) => order.indexOf(s.name));
        assert.deepEqual(idx, [...idx].sort((a, b) => a - b));
      }
    });
  }

  test('a 2-stage × tp 2 shard holds the slices Megatron prescribes, with the flags as specified', () => {
    const spec = (shard: Partial<ShardSpec>) => shardLayout(SMALL, { stage: 1, stages: 2, firstLayer: 1, endLayer: 4, tpRank: 1, tpSize: 2, ...shard });
    const last = spec({});
    const d = 16;
    const rows: Array<[string, number[], [number, number], Array<[number, number]>, boolean, boolean]> = [
      // name, local shape, rows, cols, tpReplicated, countsForNorm
      ['wte.weight', [300, d], [0, 300], [[0, d]], true, false], // the tied copy on the last stage
      ['h.1.ln_1.weight', [d], [0, 1], [[0, d]], true, false], // replica on tp rank 1
      ['h.1.attn.c_attn.weight', [d, 24], [0, d], [[8, 16], [24, 32], [40, 48]], false, true],
      ['h.1.attn.c_attn.bias', [24], [0, 1], [[8, 16], [24, 32], [40, 48]], false, true],
      ['h.1.attn.c_proj.weight', [8, d], [8, 16], [[0, d]], false, true],
      ['h.1.attn.c_proj.bias', [d], [0, 1], [[0, d]], true, false],
      ['h.1.mlp.c_fc.weight', [d, 32], [0, d], [[32, 64]], false, true],
      ['h.1.mlp.c_fc.bias', [32], [0, 1], [[32, 64]], false, true],
      ['h.1.mlp.c_proj.weight', [32, d], [32, 64], [[0, d]], false, true],
      ['h.3.mlp.c_proj.bias', [d], [0, 1], [[0, d]], true, false],
      ['ln_f.bias', [d], [0, 1], [[0, d]], true, false],
    ];
    for (const [name, shape, r, cols, rep, norm] of rows) {
      const s = last.byName.get(name);
      assert.ok(s, `${name} is held`);
      assert.deepEqual([s.shape, s.rows, s.cols, s.tpReplicated, s.countsForNorm], [shape, r, cols, rep, norm], name);
    }
    assert.equal(last.byName.has('wpe.weight'), false);
    assert.equal(last.byName.has('h.0.ln_1.weight'), false);
    assert.equal(last.specs[0]!.name, 'wte.weight');
    const first = spec({ stage: 0, firstLayer: 0, endLayer: 1, tpRank: 0 });
    assert.deepEqual(first.specs.map((s) => s.name).slice(0, 3), ['wte.weight', 'wpe.weight', 'h.0.ln_1.weight']);
    assert.equal(first.byName.get('wte.weight')!.countsForNorm, true);
    assert.equal(first.byName.has('ln_f.weight'), false);
    assert.equal(first.byName.get('h.0.attn.c_attn.weight')!.decay, true);
    assert.equal(first.byName.get('h.0.attn.c_attn.bias')!.decay, false);
  });

  test('one stage holds wte once, counted in the norm, and the whole model when tp is 1', () => {
    const layout = shardLayout(SMALL, { stage: 0, stages: 1, firstLayer: 0, endLayer: 4, tpRank: 0, tpSize: 1 });
    const full = paramLayout(SMALL);
    assert.deepEqual(layout.specs.map((s) => [s.name, s.offset, [...s.shape]]), full.specs.map((s) => [s.name, s.offset, [...s.shape]]));
    assert.ok(layout.specs.every((s) => s.countsForNorm));
  });

  test('initParam gives each parameter the values initParams puts at its offset', () => {
    const full = paramLayout(SMALL);
    const flat = initParams(full, 3);
    for (const s of full.specs) assert.deepEqual(initParam(s, 3), flat.subarray(s.offset, s.offset + s.size), s.name);
  });

  const BAD: ReadonlyArray<[string, Partial<ShardSpec>, RegExp]> = [
    ['a tp degree that does not divide the heads', { tpSize: 3, tpRank: 0 }, /tpSize \(3\) must divide nHead \(4\)/],
    ['a tp rank outside the degree', { tpRank: 2 }, /ShardSpec\.tpRank must be an integer in \[0, 1\]/],
    ['a negative stage', { stage: -1 }, /ShardSpec\.stage must be an integer in \[0, 1\]/],
    ['a stage past the last', { stage: 2 }, /ShardSpec\.stage must be an integer in \[0, 1\]/],
    ['no stages', { stages: 0 }, /ShardSpec\.stages must be an integer in \[1,/],
    ['an empty block range', { stage: 1, firstLayer: 2, endLayer: 2 }, /ShardSpec\.endLayer must be an integer in \[3, 4\]/],
    ['a block range past nLayer', { stage: 1, firstLayer: 2, endLayer: 5 }, /ShardSpec\.endLayer must be an integer in \[3, 4\]/],
    ['a first stage that does not start at block 0', { stage: 0, firstLayer: 1, endLayer: 2 }, /firstLayer of stage 0 must be 0/],
    ['a last stage that does not end at nLayer', { stage: 1, firstLayer: 2, endLayer: 3 }, /endLayer of the last stage must be nLayer \(4\)/],
    ['a fractional tp degree', { tpSize: 1.5 }, /ShardSpec\.tpSize must be an integer/],
  ];
  for (const [what, patch, message] of BAD) {
    test(`shardLayout rejects ${what} with a RangeError naming the field`, () => {
      const shard: ShardSpec = { stage: 0, stages: 2, firstLayer: 0, endLayer: 2, tpRank: 0, tpSize: 2, ...patch };
      assert.throws(() => shardLayout(SMALL, shard), (err: unknown) => err instanceof RangeError && message.test(err.message));
    });
  }

  test('extracting refuses a full tensor of the wrong size and a local buffer of the wrong length', () => {
    const layout = shardLayout(SMALL, { stage: 0, stages: 1, firstLayer: 0, endLayer: 4, tpRank: 0, tpSize: 2 });
    assert.throws(() => extractShard(() => new Float32Array(3), layout), /wte\.weight: full tensor has 3 elements, expected 4800/);
    assert.throws(() => extractShard(() => new Float32Array(0), layout, new Float32Array(1)), /local buffer has 1 elements/);
  });
});

describe('splitting layers over stages', () => {
  const CASES: ReadonlyArray<[string, number, number[], Array<[number, number]>]> = [
    ['equal weights split evenly', 12, [1, 1, 1], [[0, 4], [4, 8], [8, 12]]],
    ['equal weights give the extra blocks to earlier stages', 5, [1, 1], [[0, 3], [3, 5]]],
    ['a three times faster stage gets three times the blocks', 4, [1, 3], [[0, 1], [1, 4]]],
    ['weights split proportionally', 12, [2, 1, 1], [[0, 6], [6, 9], [9, 12]]],
    ['a very slow stage still gets one block', 6, [0.01, 1, 1], [[0, 1], [1, 4], [4, 6]]],
    ['one stage takes every block', 7, [0.5], [[0, 7]]],
    ['as many stages as blocks gives one each', 3, [5, 1, 2], [[0, 1], [1, 2], [2, 3]]],
  ];
  for (const [what, nLayer, weights, expected] of CASES) {
    test(`splitLayers: ${what}`, () => assert.deepEqual(splitLayers(nLayer, weights), expected));
  }

  test('splitLayers minimises the slowest stage for uneven weights', () => {
    const bounds = splitLayers(10, [1, 2, 1.5]);
    assert.deepEqual(bounds.map(([a, b]) => b - a), [2, 5, 3]); // times 2, 2.5, 2: no move lowers the maximum
  });

  test('splitLayers refuses fewer layers than stages and non-positive weights', () => {
    assert.throws(() => splitLayers(2, [1, 1, 1]), (e: unknown) => e instanceof RangeError && /nLayer \(2\) must be at least the number of stages \(3\)/.test(e.message));
    assert.throws(() => splitLayers(4, [1, 0]), (e: unknown) => e instanceof RangeError && /weight 1 must be a positive finite number, got 0/.test(e.message));
    assert.throws(() => splitLayers(4, [1, Number.NaN]), /weight 1 must be a positive/);
    assert.throws(() => splitLayers(4, []), /at least one stage/);
  });

  test('allShards lists every stage and tp rank, stage-major', () => {
    const shards = allShards([[0, 1], [1, 4]], 2);
    assert.deepEqual(shards.map((s) => [s.stage, s.tpRank, s.firstLayer, s.endLayer, s.stages, s.tpSize]), [
      [0, 0, 0, 1, 2, 2], [0, 1, 0, 1, 2, 2], [1, 0, 1, 4, 2, 2], [1, 1, 1, 4, 2, 2],
    ]);
  });
});
