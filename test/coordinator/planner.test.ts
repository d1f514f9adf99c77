/**
 * The planner (coordinator/jobs/planner.ts) is a pure function of its request, so it is tested with tables of requests:
 * cost-model pieces against hand computation, then whole plans for small clusters. Run: node scripts/run-tests.mjs planner
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  blockForwardFlops,
  bubbleFraction,
  embeddingForwardFlops,
  flopsPerMicroBatch,
  DEFAULT_CALIBRATION,
  headForwardFlops,
  planJob,
  ringAllreduceMs,
  stageActivationBytes,
  stageBoundaries,
  simulatePipeline,
  slowdown,
  stageComputeMs,
  stageParams,
  agentProbe,
  type PlannerAgent,
  type PlanRequest,
} from '../../coordinator/jobs/planner.ts';
import { PROBE_SHAPES } from '../../protocol/probe.ts';

const agent = (id: string, host: string, matmulGflops = 20, memoryBytes = 8e9, cores = 2): PlannerAgent => ({ id, host, cores, memoryBytes, matmulGflops });

const TINY = { vocabSize: 10, nCtx: 8, nLayer: 2, nHead: 2, nEmbd: 4 };
const MID = { vocabSize: 1024, nCtx: 256, nLayer: 8, nHead: 4, nEmbd: 256 };
const LARGE = { vocabSize: 50257, nCtx: 1024, nLayer: 24, nHead: 16, nEmbd: 1024 }; // GPT-2 medium: ~355M parameters
const TRAIN = { batchSize: 16, microBatches: 4, seqLen: 128, zero: 0 as const };

function request(over: Partial<PlanRequest>): PlanRequest {
  return { model: MID, training: TRAIN, parallel: 'auto', agents: [agent('a', 'h1')], ...over };
}

describe('FLOP counts', () => {
  // The matmuls of gpt.ts's forward for B = 1 row of T = 3 tokens, V = 10, d = 4, nh = 2 (hs = 2), as [M, K] × [K, N].
  const B = 1, T = 3, V = 10, d = 4, nh = 2, hs = 2;
  const mm = (m: number, k: number, n: number, times = 1) => 2 * m * k * n * times;
  const block = mm(B * T, d, 3 * d) + mm(T, hs, T, B * nh) + mm(T, T, hs, B * nh) + mm(B * T, d, d) + mm(B * T, d, 4 * d) + mm(B * T, 4 * d, d);
  const embedding = mm(B * T, V, d);
  const head = mm(B * T, d, V);

  test('one block of the tiny config costs 24·N·d² + 4·B·T²·d, as its six matmuls add up', () => {
    assert.equal(block, 1296);
    assert.equal(blockForwardFlops(TINY, B, T), block);
    assert.equal(blockForwardFlops(TINY, B, T, 2), block / 2);
  });

  test('a one-hot embedding and the tied head each cost 2·N·V·d', () => {
    assert.equal(embeddingForwardFlops(TINY, B, T), embedding);
    assert.equal(headForwardFlops(TINY, B, T), head);
  });

  // The embedding is a row lookup (no matmul); backward recomputes every block once (activation checkpointing).
  const cases = [
    {
      name: 'a single stage runs forward once, recomputes its blocks, and backward at twice the forward; the embedding costs no matmul',
      stage: { blocks: 2, first: true, last: true, tensor: 1, recompute: false },
      expect: { forward: 2 * block + head, recompute: 2 * block, backward: 4 * block + 2 * head },
    },
    {
      name: 'a first pipeline stage runs its blocks once more, for the activations it sends',
      stage: { blocks: 1, first: true, last: false, tensor: 1, recompute: true },
      expect: { forward: block, recompute: 2 * block, backward: 2 * block },
    },
    {
      name: 'a last pipeline stage recomputes its blocks, not the head, and carries the head',
      stage: { blocks: 1, first: false, last: true, tensor: 1, recompute: false },
      expect: { forward: block + head, recompute: block, backward: 2 * block + 2 * head },
    },
    {
      name: 'tensor parallelism splits the blocks but replicates the head',
      stage: { blocks: 2, first: true, last: true, tensor: 2, recompute: false },
      expect: { forward: block + head, recompute: block, backward: 2 * block + 2 * head },
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const f = flopsPerMicroBatch(TINY, B, T, c.stage);
      assert.deepEqual(f, { ...c.expect, total: c.expect.forward + c.expect.recompute + c.expect.backward });
    });
  }
});

describe('stageComputeMs', () => {
  const cal = { ...DEFAULT_CALIBRATION, efficiency: 1, elementNs: 2, paramNsPerMicroBatch: 10, microBatchMs: 3, blockPassMs: 0.5 };
  const rows = 2, seq = 8, flopsPerS = 1e9;
  const pass = (stage: Parameters<typeof stageParams>[1] & { blocks: number; tensor: number; recompute: boolean }) =>
    (2 * stageActivationBytes(MID, rows, seq, stage, 0)) / 4 / 1e6 + 0.5 * stage.blocks;
  const cases = [
    { name: 'a whole model counts matmul FLOPs, 4 passes over its working set and blocks, its parameters and a fixed cost', stage: { blocks: 2, first: true, last: true, tensor: 1, recompute: false }, passes: 4 },
    { name: 'a pipeline stage that sends its activations counts 5 passes', stage: { blocks: 1, first: true, last: false, tensor: 1, recompute: true }, passes: 5 },
    { name: 'a tensor-parallel rank counts its own share of FLOPs, activations and parameters, but every block', stage: { blocks: 2, first: false, last: true, tensor: 2, recompute: false }, passes: 4 },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const want = (flopsPerMicroBatch(MID, rows, seq, c.stage).total / flopsPerS) * 1e3 + c.passes * pass(c.stage) + (10 * stageParams(MID, c.stage)) / 1e6 + 3;
      assert.ok(Math.abs(stageComputeMs(MID, rows, seq, c.stage, flopsPerS, cal).totalMs - want) < 1e-9);
    });
  }

  test('a recomputing stage\'s forward call runs one pass; the last stage\'s does nothing (its backward runs the forward)', () => {
    const first = { blocks: 1, first: true, last: false, tensor: 1, recompute: true };
    const want = (flopsPerMicroBatch(MID, rows, seq, first).forward / flopsPerS) * 1e3 + pass(first) + 1.5;
    assert.ok(Math.abs(stageComputeMs(MID, rows, seq, first, flopsPerS, cal).forwardMs - want) < 1e-9);
    assert.equal(stageComputeMs(MID, rows, seq, { blocks: 1, first: false, last: true, tensor: 1, recompute: false }, flopsPerS, cal).forwardMs, 0);
  });
});

describe('slowdown', () => {
  const cal = { agentCores: 1.5 };
  const cases = [
    { name: 'one agent on a host with cores to spare runs at full speed', n: 1, cores: 2, expect: 1 },
    { name: 'agents whose threads need no more than the cores run at full speed', n: 2, cores: 4, expect: 1 },
    { name: 'two agents on two cores share them: each needs 1.5', n: 2, cores: 2, expect: 1.5 },
    { name: 'four agents on two cores take three times as long', n: 4, cores: 2, expect: 3 },
  ];
  for (const c of cases) test(c.name, () => assert.equal(slowdown(c.n, c.cores, cal), c.expect));
});

describe('simulatePipeline', () => {
  const cal = { ...DEFAULT_CALIBRATION, agentCores: 1 };
  const lane = (host: string, forwardMs: number, backwardMs: number, waits = 0, sendMs = 0) =>
    ({ hosts: [host], forwardMs, backwardMs, forwardWaitMs: waits, backwardWaitMs: waits, sendMs });
  const roomy = new Map([['h', 8]]);

  test('one stage runs its m micro-batches back to back', () => {
    assert.equal(simulatePipeline([[lane('h', 1, 2, 0.5)]], 4, roomy, cal), 4 * 4);
  });

  test('equal stages with cores to spare take (m + p − 1) micro-batch times: the 1F1B bubble', () => {
    assert.ok(Math.abs(simulatePipeline([[lane('h', 1, 2), lane('h', 1, 2), lane('h', 1, 2)]], 4, roomy, cal) - (4 + 3 - 1) * 3) < 1e-9);
  });

  test('sends add their latency to the fill and the drain', () => {
    const alone = simulatePipeline([[lane('h', 1, 2), lane('h', 1, 2)]], 1, roomy, cal);
    assert.ok(Math.abs(simulatePipeline([[lane('h', 1, 2, 0, 0.5), lane('h', 1, 2, 0, 0.5)]], 1, roomy, cal) - alone - 2 * 0.5) < 1e-9);
  });

  test('replicas on a host with one core per agent\'s need run as if alone; on half of that, twice as long', () => {
    const replicas = [[lane('h', 1, 2)], [lane('h', 1, 2)]];
    assert.equal(simulatePipeline(replicas, 3, new Map([['h', 2]]), cal), 9);
    assert.ok(Math.abs(simulatePipeline(replicas, 3, new Map([['h', 1]]), cal) - 18) < 1e-9);
    assert.equal(simulatePipeline(replicas, 3, new Map([['h', 1]]), cal, false), 9, 'or with sharing off');
  });

  test('pipeline stages sharing one core lose less than replicas: a stage waiting for its input leaves the core', () => {
    const oneCore = new Map([['h', 1]]);
    const stages = simulatePipeline([[lane('h', 1, 2), lane('h', 1, 2)]], 4, oneCore, cal);
    const alone = simulatePipeline([[lane('h', 1, 2), lane('h', 1, 2)]], 4, oneCore, cal, false);
    assert.ok(stages > alone && stages < 2 * alone, `${stages} vs ${alone} alone`);
    assert.ok(stages >= 2 * 4 * 3 - 1e-9, 'but no less than all the work on one core');
  });
});

describe('bubbleFraction', () => {
  const cases = [
    { p: 1, m: 4, expect: 0 },
    { p: 2, m: 1, expect: 0.5 },
    { p: 4, m: 4, expect: 3 / 7 },
    { p: 4, m: 13, expect: 3 / 16 },
  ];
  for (const c of cases) {
    test(`a pipeline of ${c.p} stages with ${c.m} micro-batches idles (p−1)/(m+p−1) = ${c.expect.toFixed(3)} of the step`, () => {
      assert.equal(bubbleFraction(c.p, c.m), c.expect);
    });
  }
});

describe('ringAllreduceMs', () => {
  const cases = [
    { name: 'a ring of one costs nothing', n: 1, bytes: 1e9, bw: 1e6, alpha: 5, expect: 0 },
    { name: 'a ring of two moves S bytes and pays two hops', n: 2, bytes: 100e6, bw: 100e6, alpha: 1, expect: 1000 + 2 },
    { name: 'a ring of four moves 1.5·S bytes and pays six hops', n: 4, bytes: 4e6, bw: 100e6, alpha: 0.5, expect: 60 + 3 },
  ];
  for (const c of cases) {
    test(c.name, () => assert.ok(Math.abs(ringAllreduceMs(c.n, c.bytes, c.bw, c.alpha) - c.expect) < 1e-9));
  }
});

describe('stageBoundaries', () => {
  test('equal stages with equal costs per block split the blocks evenly', () => {
    assert.deepEqual(stageBoundaries(4, 8, (_, n) => n), [[0, 2], [2, 4], [4, 6], [6, 8]]);
  });

  test('a stage three times as fast takes three times the blocks', () => {
    assert.deepEqual(stageBoundaries(2, 8, (i, n) => (i === 0 ? n : 3 * n)), [[0, 6], [6, 8]]);
  });

  test('a fixed cost on the last stage (the head) moves blocks to the others', () => {
    assert.deepEqual(stageBoundaries(2, 6, (i, n) => n + (i === 1 ? 2 : 0)), [[0, 4], [4, 6]]);
  });

  test('more stages than blocks are refused', () => {
    assert.throws(() => stageBoundaries(3, 2, (_, n) => n), RangeError);
  });
});

describe('planJob with a pinned layout', () => {
  const fourAgents = [agent('a', 'h1'), agent('b', 'h2'), agent('c', 'h3'), agent('d', 'h4')];
  const cases: Array<{ name: string; req: PlanRequest; reason: RegExp; advice: RegExp }> = [
    {
      name: 'a layout that needs more agents than are connected says how many to start',
      req: request({ parallel: { data: 1, pipeline: 3, tensor: 1 }, agents: fourAgents.slice(0, 2) }),
      reason: /needs 3 agents, 2 usable/,
      advice: /start 1 more agent/,
    },
    {
      name: 'a tensor degree that does not divide the heads is named',
      req: request({ parallel: { data: 1, pipeline: 1, tensor: 3 }, agents: fourAgents }),
      reason: /tensor 3 does not divide nHead 4/,
      advice: /1, 2, 4/,
    },
    {
      name: 'more stages than blocks are refused',
      req: request({ model: { ...MID, nLayer: 2 }, parallel: { data: 1, pipeline: 3, tensor: 1 }, agents: fourAgents }),
      reason: /pipeline 3 exceeds nLayer 2/,
      advice: /at most 2 stages/,
    },
    {
      name: 'a global batch that does not divide over the replicas is refused',
      req: request({ training: { ...TRAIN, batchSize: 6, microBatches: 1 }, parallel: { data: 4, pipeline: 1, tensor: 1 }, agents: fourAgents }),
      reason: /batchSize 6 does not divide over data 4/,
      advice: /multiple of the data degree/,
    },
    {
      name: 'a per-replica batch that does not divide into the micro-batches is refused',
      req: request({ training: { ...TRAIN, batchSize: 12, microBatches: 4 }, parallel: { data: 2, pipeline: 1, tensor: 1 }, agents: fourAgents }),
      reason: /per data rank 6 does not divide into 4 micro-batches/,
      advice: /multiple of microBatches/,
    },
    {
      name: 'a layout that does not fit in memory names the memory needed and the agent that lacks it',
      req: request({ parallel: { data: 1, pipeline: 1, tensor: 1 }, agents: [agent('a-1', 'h1', 20, 100e6)] }),
      reason: /needs [\d.]+ MB per agent, agent a-1 allows 50\.0 MB/,
      advice: /start \d+ more agent/,
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const plan = planJob(c.req);
      assert.equal(plan.chosen, null);
      assert.equal(plan.candidates.length, 1, 'only the pinned layout is weighed');
      assert.equal(plan.candidates[0]!.feasible, false);
      assert.match(plan.candidates[0]!.reason ?? '', c.reason);
      assert.match(plan.refused ?? '', c.reason);
      assert.match(plan.refused ?? '', c.advice);
    });
  }

  test('a pipeline takes Σ of its stages\' per-micro-batch times plus m − 1 of the slowest\'s (1F1B fill, steady state, drain)', () => {
    const plan = planJob(request({ parallel: { data: 1, pipeline: 2, tensor: 1 }, agents: fourAgents }));
    const c = plan.chosen!.predicted;
    const m = TRAIN.microBatches;
    const slowest = c.computeMs / m;
    assert.ok(c.bubbleMs > 0 && c.bubbleMs <= slowest + 1e-9, 'the fill and drain cost one other stage\'s time at most');
    assert.ok(Math.abs(c.stepMs - (c.computeMs + c.bubbleMs + c.sharingMs + c.dataAllreduceMs + c.overheadMs + c.optimizerMs)) < 1e-9);
  });

  test('a pinned layout keeps the spec\'s micro-batches', () => {
    const plan = planJob(request({ parallel: { data: 1, pipeline: 2, tensor: 1 }, agents: fourAgents }));
    assert.equal(plan.chosen?.microBatches, TRAIN.microBatches);
    assert.deepEqual(plan.chosen?.layout, { data: 1, pipeline: 2, tensor: 1 });
  });
});

describe('planJob with parallel: auto', () => {
  test('one agent trains the whole model alone: 1×1×1', () => {
    const plan = planJob(request({ agents: [agent('solo', 'h1')] }));
    assert.deepEqual(plan.chosen?.layout, { data: 1, pipeline: 1, tensor: 1 });
    assert.deepEqual(plan.chosen?.stages, [[0, MID.nLayer]]);
    assert.deepEqual(plan.chosen?.placement, ['solo']);
    assert.match(plan.explanation, /1×1×1/);
  });

  test('four equal agents on four hosts split a model too large for one of them (stages or tensor shards)', () => {
    const agents = [agent('a', 'h1'), agent('b', 'h2'), agent('c', 'h3'), agent('d', 'h4')];
    const plan = planJob({ model: LARGE, training: { batchSize: 8, microBatches: 1, seqLen: 128, zero: 0 }, parallel: 'auto', agents });
    const byLayout = (d: number, p: number, t: number) => plan.candidates.find((c) => c.layout.data === d && c.layout.pipeline === p && c.layout.tensor === t)!;
    for (const replicas of [byLayout(1, 1, 1), byLayout(4, 1, 1)]) {
      assert.equal(replicas.feasible, false);
      assert.match(replicas.reason ?? '', /needs [\d.]+ GB per agent/);
    }
    assert.ok(plan.chosen, plan.refused);
    assert.ok(plan.chosen.layout.pipeline * plan.chosen.layout.tensor > 1, JSON.stringify(plan.chosen.layout));
    assert.ok(plan.chosen.predicted.memoryBytesPerAgent <= 8e9 * 0.5);
    assert.ok(plan.chosen.microBatches >= plan.chosen.layout.pipeline, 'm was raised to fill any pipeline');
    assert.match(plan.explanation, /Runner-up/);
  });

  test('raising m for a pipeline keeps the global batch: m divides batchSize / d', () => {
    const agents = [agent('a', 'h1'), agent('b', 'h2'), agent('c', 'h3'), agent('d', 'h4')];
    const plan = planJob({ model: LARGE, training: { batchSize: 8, microBatches: 1, seqLen: 128, zero: 0 }, parallel: 'auto', agents });
    for (const c of plan.candidates.filter((x) => x.feasible)) {
      assert.equal((8 / c.layout.data) % c.microBatches, 0, JSON.stringify(c.layout));
      assert.ok(c.microBatches >= 1);
    }
  });

  test('feasible candidates come first, by predicted step time', () => {
    const agents = [agent('a', 'h1'), agent('b', 'h1'), agent('c', 'h2'), agent('d', 'h2')];
    const plan = planJob(request({ agents }));
    const feasible = plan.candidates.filter((c) => c.feasible);
    assert.deepEqual(plan.candidates.slice(0, feasible.length), feasible);
    for (let i = 1; i < feasible.length; i++) assert.ok(feasible[i - 1]!.predicted.stepMs <= feasible[i]!.predicted.stepMs);
    assert.equal(plan.chosen, feasible[0]);
  });

  const refusals = [
    {
      name: 'a job too large for two agents is refused with the memory it needs and how many more agents would do',
      memoryBytes: 4e9,
      advice: /start \d+ more agent\(s\) with at least [\d.]+ GB of memory/,
    },
    {
      name: 'a job whose replicated embedding alone outgrows every agent is refused with what to shrink',
      memoryBytes: 1e9,
      advice: /lower batchSize or seqLen, raise microBatches, or train a smaller model/,
    },
  ];
  for (const c of refusals) {
    test(c.name, () => {
      const agents = [agent('a', 'h1', 20, c.memoryBytes), agent('b', 'h2', 20, c.memoryBytes)];
      const plan = planJob({ model: LARGE, training: { batchSize: 8, microBatches: 1, seqLen: 128, zero: 0 }, parallel: 'auto', agents });
      assert.equal(plan.chosen, null);
      assert.ok(plan.candidates.length > 0 && plan.candidates.every((x) => !x.feasible));
      assert.match(plan.refused ?? '', /no layout fits in memory/);
      assert.match(plan.refused ?? '', /needs [\d.]+ GB per agent/);
      assert.match(plan.refused ?? '', c.advice);
      assert.match(plan.explanation, /Refused/);
    });
  }

  describe('wasm32 heap', () => {
    const wasmAgent = (id: string, host: string, backend = 'wasm'): PlannerAgent => ({ ...agent(id, host, 20, 64e9), backend });
    const GPT2_SMALL = { vocabSize: 50257, nCtx: 1024, nLayer: 12, nHead: 12, nEmbd: 768 };
    const oneRowOfContext = { batchSize: 1, microBatches: 1, seqLen: 1024, zero: 0 as const };

    test('GPT-2 small fits one wasm agent at 1,024 tokens a micro-batch, and the plan says how much of the heap it takes', () => {
      const plan = planJob({ model: GPT2_SMALL, training: oneRowOfContext, parallel: { data: 1, pipeline: 1, tensor: 1 }, agents: [wasmAgent('a', 'h1')] });
      assert.ok(plan.chosen, plan.refused);
      // 0.5 GB of weights and one block's tape at 1,024 tokens (0.85 GB); the head goes a vocabulary chunk at a time
      assert.ok(plan.chosen.predicted.wasmHeapBytesPerAgent > 1.2e9 && plan.chosen.predicted.wasmHeapBytesPerAgent < 2e9, `${plan.chosen.predicted.wasmHeapBytesPerAgent}`);
      assert.match(plan.explanation, /on the wasm heap, which holds 4\.29 GB at most/);
    });

    test('a micro-batch too large for the heap is avoided by cutting it into more micro-batches', () => {
      const training = { ...oneRowOfContext, batchSize: 4, microBatches: 1 };
      const pinned = planJob({ model: GPT2_SMALL, training, parallel: { data: 1, pipeline: 1, tensor: 1 }, agents: [wasmAgent('a', 'h1')] });
      assert.equal(pinned.chosen, null, 'pinned to m = 1, 4 × 1,024 tokens at once cannot fit');
      assert.match(pinned.refused ?? '', /needs [\d.]+ GB of wasm heap on agent a.*raise microBatches/);
      const plan = planJob({ model: GPT2_SMALL, training, parallel: 'auto', agents: [wasmAgent('a', 'h1')] });
      assert.ok(plan.chosen, plan.refused);
      assert.ok(plan.chosen.microBatches >= 2, `m = ${plan.chosen.microBatches}: 4 rows of 1,024 tokens do not fit`);
      const whole = plan.candidates.find((c) => c.microBatches === 1);
      if (whole) assert.match(whole.reason ?? '', /of wasm heap/);
    });

    test('dpo and distill keep the whole logits: GPT-2 small then fits fewer tokens a micro-batch', () => {
      const training = { ...oneRowOfContext, batchSize: 2, microBatches: 1 };
      const lm = planJob({ model: GPT2_SMALL, training, parallel: { data: 1, pipeline: 1, tensor: 1 }, agents: [wasmAgent('a', 'h1')] });
      assert.ok(lm.chosen, lm.refused);
      const logits = planJob({ model: GPT2_SMALL, training: { ...training, wholeLogits: true }, parallel: { data: 1, pipeline: 1, tensor: 1 }, agents: [wasmAgent('a', 'h1')] });
      assert.equal(logits.chosen, null, '2 × 1,024 tokens of whole logits (12 floats per token per vocabulary entry) do not fit');
      assert.match(logits.refused ?? '', /GB of wasm heap on agent a/);
    });

    test('GPT-2 large does not fit one wasm agent: refused with what to do; another backend, or two stages, take it', () => {
      const training = { batchSize: 1, microBatches: 1, seqLen: 1024, zero: 0 as const };
      const LARGE = { vocabSize: 50257, nCtx: 1024, nLayer: 36, nHead: 20, nEmbd: 1280 }; // GPT-2 large: ~774M parameters
      const alone = planJob({ model: LARGE, training, parallel: 'auto', agents: [wasmAgent('a', 'h1')] });
      assert.equal(alone.chosen, null);
      assert.match(alone.refused ?? '', /GB of wasm heap on agent a/);
      assert.match(alone.refused ?? '', /more pipeline stages or tensor shards/);
      const native = planJob({ model: LARGE, training, parallel: 'auto', agents: [wasmAgent('a', 'h1', 'tensorflow')] });
      assert.ok(native.chosen, native.refused);
      const split = planJob({ model: LARGE, training, parallel: 'auto', agents: [wasmAgent('a', 'h1'), wasmAgent('b', 'h2')] });
      assert.ok(split.chosen, split.refused);
      assert.ok(split.chosen.layout.pipeline * split.chosen.layout.tensor === 2, `chose ${JSON.stringify(split.chosen.layout)}`);
    });
  });

  test('no agents at all is refused with what to start', () => {
    const plan = planJob(request({ agents: [] }));
    assert.equal(plan.chosen, null);
    assert.match(plan.refused ?? '', /start at least one node-agent/);
  });
});

describe('stage boundaries and placement', () => {
  test('uneven agent speeds give unequal stages: the faster agent gets more blocks', () => {
    const plan = planJob(request({ parallel: { data: 1, pipeline: 2, tensor: 1 }, agents: [agent('slow', 'h1', 10), agent('fast', 'h2', 30)] }));
    const chosen = plan.chosen!;
    const blocks = (id: string) => {
      const [a, b] = chosen.stages[chosen.placement.indexOf(id)]!;
      return b - a;
    };
    assert.ok(blocks('fast') > blocks('slow'), JSON.stringify(chosen.stages));
    assert.equal(blocks('fast') + blocks('slow'), MID.nLayer);
  });

  test('equal agents get stages within one block of each other apart from the embedding and head', () => {
    const plan = planJob(request({ parallel: { data: 1, pipeline: 4, tensor: 1 }, agents: [agent('a', 'h1'), agent('b', 'h2'), agent('c', 'h3'), agent('d', 'h4')] }));
    const sizes = plan.chosen!.stages.map(([a, b]) => b - a);
    assert.equal(sizes.reduce((x, y) => x + y), MID.nLayer);
    assert.ok(Math.max(...sizes.slice(1, -1)) - Math.min(...sizes.slice(1, -1)) <= 1, JSON.stringify(sizes));
  });

  const cases: Array<{ name: string; agents: PlannerAgent[]; layout: { data: number; pipeline: number; tensor: number }; groups: string[][] }> = [
    {
      name: 'tensor groups stay on one host even when agent ids interleave the hosts',
      agents: [agent('a', 'h1'), agent('b', 'h2'), agent('c', 'h1'), agent('d', 'h2')],
      layout: { data: 2, pipeline: 1, tensor: 2 },
      groups: [['h1', 'h1'], ['h2', 'h2']],
    },
    {
      name: 'a tensor group takes two agents of one host with cores for both over a lone agent elsewhere',
      agents: [agent('a', 'h1', 20, 8e9, 4), agent('b', 'h2', 20, 8e9, 4), agent('c', 'h2', 20, 8e9, 4)],
      layout: { data: 1, pipeline: 1, tensor: 2 },
      groups: [['h2', 'h2']],
    },
    {
      name: 'each pipeline stage\'s tensor group sits on one host',
      agents: [agent('a', 'h1', 20, 8e9, 4), agent('b', 'h2', 20, 8e9, 4), agent('c', 'h1', 20, 8e9, 4), agent('d', 'h2', 20, 8e9, 4)],
      layout: { data: 1, pipeline: 2, tensor: 2 },
      groups: [['h1', 'h1'], ['h2', 'h2']],
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const plan = planJob(request({ parallel: c.layout, agents: c.agents }));
      assert.ok(plan.chosen, plan.refused);
      const host = (id: string) => c.agents.find((a) => a.id === id)!.host;
      const t = c.layout.tensor;
      const groups = [];
      for (let r = 0; r < plan.chosen.placement.length; r += t) groups.push(plan.chosen.placement.slice(r, r + t).map(host));
      assert.deepEqual(groups.sort(), c.groups);
    });
  }

  test('agents sharing a host share its cores: two data-parallel agents on a one-core host take twice as long to compute', () => {
    const alone = planJob(request({ parallel: { data: 2, pipeline: 1, tensor: 1 }, agents: [agent('a', 'h1', 20, 8e9, 1), agent('b', 'h2', 20, 8e9, 1)] }));
    const shared = planJob(request({ parallel: { data: 2, pipeline: 1, tensor: 1 }, agents: [agent('a', 'h1', 20, 8e9, 1), agent('b', 'h1', 20, 8e9, 1)] }));
    const a = alone.chosen!.predicted, s = shared.chosen!.predicted;
    assert.equal(s.computeMs, a.computeMs, 'the same work per micro-batch with a core to itself');
    assert.ok(Math.abs(s.computeMs + s.sharingMs - 2 * (a.computeMs + a.sharingMs)) < 1e-6, 'the shared core makes it twice as long');
  });

  test('pipeline stages on a crowded host lose less than replicas: a stage idles in the bubble and leaves its core', () => {
    const agents = [agent('a', 'h1', 20, 8e9, 1), agent('b', 'h1', 20, 8e9, 1)];
    const alone = planJob(request({ parallel: { data: 1, pipeline: 2, tensor: 1 }, agents: [agent('a', 'h1', 20, 8e9, 1), agent('b', 'h2', 20, 8e9, 1)] })).chosen!.predicted;
    const shared = planJob(request({ parallel: { data: 1, pipeline: 2, tensor: 1 }, agents })).chosen!.predicted;
    const section = (c: typeof alone) => c.computeMs + c.bubbleMs + c.sharingMs;
    assert.ok(section(shared) > section(alone), 'sharing costs something');
    assert.ok(section(shared) < 2 * section(alone), 'but less than twice');
  });

  test('agents of one host are planned at the best matmul rate any of them measured (the others measured while sharing it)', () => {
    const slowJoin = planJob(request({ parallel: { data: 1, pipeline: 1, tensor: 1 }, agents: [agent('a', 'h1', 9), agent('b', 'h1', 20)] }));
    const alone = planJob(request({ parallel: { data: 1, pipeline: 1, tensor: 1 }, agents: [agent('a', 'h1', 20)] }));
    assert.equal(slowJoin.chosen!.predicted.stepMs, alone.chosen!.predicted.stepMs);
  });
});

describe('determinism', () => {
  test('the same request gives the same plan, whatever order the agents are listed in', () => {
    const agents = [agent('n-3', 'h2', 18), agent('n-1', 'h1', 22), agent('n-2', 'h1', 22), agent('n-4', 'h2', 15), agent('n-5', 'h3', 30)];
    const req = (list: PlannerAgent[]): PlanRequest => ({ model: MID, training: TRAIN, parallel: 'auto', agents: list });
    const first = planJob(req(agents));
    assert.deepEqual(planJob(req(agents)), first);
    assert.deepEqual(planJob(req([...agents].reverse())), first);
    assert.deepEqual(planJob(req([agents[2]!, agents[4]!, agents[0]!, agents[3]!, agents[1]!])), first);
  });
});

describe('GPU agents', () => {
  const GPT2 = { vocabSize: 50257, nCtx: 1024, nLayer: 12, nHead: 12, nEmbd: 768 };
  const gpu = (id: string, host: string, gflops: number, maxBindingBytes: number): PlannerAgent => ({ ...agent(id, host, gflops, 64e9, 16), backend: 'webgpu', maxBindingBytes });
  const train = { batchSize: 8, microBatches: 4, seqLen: 256, zero: 0 as const };

  test('no tensor of a shard may exceed its agent\'s WebGPU binding limit: GPT-2\'s 147 MiB wte does not bind in 128 MiB', () => {
    const small = planJob(request({ model: GPT2, training: train, agents: [gpu('g1', 'h1', 5000, 128 * 2 ** 20)] }));
    assert.equal(small.chosen, null, 'the only layouts put wte (154 MB) on one agent');
    assert.match(small.candidates[0]!.reason ?? '', /largest tensor is 154\.\d+ MB, over agent g1's WebGPU binding limit of 134\.\d+ MB/);
    const big = planJob(request({ model: GPT2, training: train, agents: [gpu('g1', 'h1', 5000, 2 ** 31)] }));
    assert.ok(big.chosen?.feasible, big.refused);
  });

  test('a GPU agent is rated at its own speed, not at its host\'s best, and a tensor-parallel group keeps to one backend', () => {
    const agents = [gpu('g1', 'h1', 5000, 2 ** 31), { ...agent('w1', 'h1', 25, 64e9, 16), backend: 'wasm' }];
    const mixed = planJob(request({ model: MID, agents, parallel: { data: 1, pipeline: 1, tensor: 2 } }));
    assert.equal(mixed.chosen, null);
    assert.match(mixed.refused ?? '', /would mix backends \((webgpu, wasm|wasm, webgpu)\)/);
    // Two stages on the two: the wasm agent, costed at its own 25 GFLOP/s (not at the GPU's 5,000 on the same
    // host), gets the smaller share of the blocks.
    const both = planJob(request({ model: MID, agents, parallel: { data: 1, pipeline: 2, tensor: 1 } })).chosen!;
    const blocksOn = (id: string) => { const [a, b] = both.stages[both.placement.indexOf(id)]!; return b - a; };
    assert.ok(blocksOn('w1') < blocksOn('g1'), `stages ${JSON.stringify(both.stages)} on ${both.placement.join(', ')}`);
  });
});

describe('per-agent probes', () => {
  test('fitProbe recovers the costs that made the probe times, and refuses what it cannot fit', () => {
    // The fit scales the calibration's element and parameter costs by one factor and its per-block and
    // per-micro-batch costs by another: an agent 0.52× and 3.5× the development machine.
    const a = 0.52, b = 3.5;
    const truth = { elementNs: 2.5 * a, paramNsPerMicroBatch: 17 * a, blockPassMs: 0.2 * b, microBatchMs: 0.7 + 2.2 * b };
    // what an agent with those costs and 20 GFLOP/s would measure on each probe shape (one thread: no round trips)
    const times = PROBE_SHAPES.map(({ model, rows, seqLen }) => {
      const work = { blocks: model.nLayer, first: true, last: true, tensor: 1, recompute: false };
      return stageComputeMs(model, rows, seqLen, work, 20e9 * DEFAULT_CALIBRATION.efficiency, { ...DEFAULT_CALIBRATION, ...truth, microBatchMs: truth.microBatchMs - 0.7 }).totalMs;
    });
    const fit = agentProbe(times, 20)!;
    for (const k of Object.keys(truth) as Array<keyof typeof truth>) assert.ok(Math.abs(fit[k] - truth[k]) <= 1e-3 * truth[k], `${k}: ${fit[k]} vs ${truth[k]}`);
    assert.equal(agentProbe(times.slice(0, 1), 20), null, 'one shape: two unknowns cannot be fitted');
    assert.equal(agentProbe(undefined, 20), null, 'an agent that sent no probe');
    assert.equal(agentProbe(times.map((t) => t / 100), 20), null, 'faster than its own matmuls: no positive fit');
  });

  test('an agent\'s probe and its refit change what its compute is predicted to cost', () => {
    const base = agent('a', 'h1');
    const predict = (a: PlannerAgent) => planJob(request({ agents: [a], parallel: { data: 1, pipeline: 1, tensor: 1 } })).chosen!.predicted.computeMs;
    const slow = { elementNs: 5, paramNsPerMicroBatch: 34, blockPassMs: 0.4, microBatchMs: 5.8 }; // twice the defaults
    assert.ok(predict({ ...base, probe: slow }) > 1.2 * predict(base), 'a slower probe, a slower prediction');
    const r = predict({ ...base, refit: 1.5 }) / predict(base);
    assert.ok(Math.abs(r - 1.5) < 0.01, `a refit of 1.5 scales compute by ${r}`);
  });
});
