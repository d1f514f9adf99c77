/**
 * node scripts/run-tests.mjs plan-offer
 *
 * The planner over slow links (coordinator/jobs/plan-offer.ts, candidate-cost.ts): when plain data parallelism would
 * be communication-bound it offers bf16 and DiLoCo with the cost model's numbers and leaves the job as asked; a job
 * that uses DiLoCo is charged one pseudo-gradient all-reduce per round, at its wire's bytes.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_CALIBRATION, planJob, ringAllreduceMs, stageParams, type PlannerAgent, type PlanRequest } from '../../coordinator/jobs/planner.ts';

const agent = (id: string, host: string): PlannerAgent => ({ id, host, cores: 2, memoryBytes: 8e9, matmulGflops: 20 });
const MID = { vocabSize: 1024, nCtx: 256, nLayer: 8, nHead: 4, nEmbd: 256 };
const TRAIN = { batchSize: 16, microBatches: 4, seqLen: 128, zero: 0 as const };
const WAN = { linkBytesPerS: 5e6 }; // 40 Mbit/s between hosts
const twoHosts = [agent('a', 'h1'), agent('b', 'h2')];

const request = (over: Partial<PlanRequest>): PlanRequest => ({ model: MID, training: TRAIN, parallel: 'auto', agents: twoHosts, calibration: WAN, ...over });
const pinned2 = { data: 2, pipeline: 1, tensor: 1 };
const params = stageParams(MID, { blocks: MID.nLayer, first: true, last: true, tensor: 1 });
/** One f32 or bf16 all-reduce of the whole model over the two hosts, as the cost model's formula gives it. */
const allreduce = (bytesPerValue: number) => ringAllreduceMs(2, params * bytesPerValue, WAN.linkBytesPerS, DEFAULT_CALIBRATION.hopLatencyMs);
const near = (got: number, want: number, what: string) => assert.ok(Math.abs(got - want) <= 1e-9 * Math.max(1, want), `${what}: ${got} vs ${want}`);

describe('the planner over links too slow for data parallelism', () => {
  test('a pinned data-parallel job is offered bf16 and DiLoCo with their numbers, and keeps the layout it asked for', () => {
    const plan = planJob(request({ parallel: pinned2 }));
    assert.deepEqual(plan.chosen?.layout, pinned2, 'nothing is switched');
    const o = plan.offer;
    assert.ok(o, plan.explanation);
    assert.deepEqual(o.layout, pinned2);
    near(o.plain.allreduceMs, allreduce(4), 'plain f32 all-reduce per step');
    assert.ok(o.plain.allreduceMs >= o.computeMs, `communication-bound: ${o.plain.allreduceMs} ms ≥ ${o.computeMs} ms`);
    near(o.bf16.allreduceMs, allreduce(2), 'bf16: half the bytes, the same hops');
    near(o.diloco.allreduceMs, allreduce(4) / 500, 'DiLoCo: one f32 all-reduce per 500 steps');
    near(o.dilocoBf16.allreduceMs, allreduce(2) / 500, 'DiLoCo with bf16');
    assert.ok(o.dilocoBf16.stepMs < o.diloco.stepMs && o.diloco.stepMs < o.bf16.stepMs && o.bf16.stepMs < o.plain.stepMs);
    assert.equal(o.innerStepsForTenth, Math.ceil(allreduce(2) / (0.1 * o.computeMs)));
    assert.match(plan.explanation, /Communication-bound: plain data parallelism as 2×1×1 would spend [\d.]+ (ms|s) per step all-reducing the gradient \(f32\)/);
    assert.match(plan.explanation, /Offered, not applied: training\.gradientWire "bf16" halves the bytes/);
    assert.match(plan.explanation, /training\.diloco \{innerSteps: 500\} all-reduces a pseudo-gradient once per 500 steps/);
  });

  test('with parallel auto the planner avoids data parallelism, and offers DiLoCo that beats what it chose', () => {
    const plan = planJob(request({}));
    const chosen = plan.chosen!;
    assert.equal(chosen.layout.data, 1, plan.explanation);
    assert.deepEqual(plan.offer?.layout, pinned2);
    assert.ok(plan.offer.dilocoBf16.stepMs < chosen.predicted.stepMs, `DiLoCo ${plan.offer.dilocoBf16.stepMs} ms vs chosen ${chosen.predicted.stepMs} ms`);
    assert.match(plan.explanation, /which is why 1×\d×1 was chosen/);
  });

  test('over fast links nothing is offered', () => {
    const plan = planJob(request({ parallel: pinned2, calibration: {} }));
    assert.equal(plan.offer, undefined, plan.explanation);
    assert.doesNotMatch(plan.explanation, /Communication-bound/);
  });

  test('a job that already uses DiLoCo is offered nothing', () => {
    const plan = planJob(request({ parallel: pinned2, training: { ...TRAIN, diloco: { innerSteps: 100 } } }));
    assert.equal(plan.offer, undefined);
  });
});

describe('the cost of a DiLoCo job', () => {
  const plain = planJob(request({ parallel: pinned2 })).chosen!.predicted;

  test('its pseudo-gradient all-reduce is charged once per innerSteps, at the bytes of its wire', () => {
    const plan = planJob(request({ parallel: pinned2, training: { ...TRAIN, diloco: { innerSteps: 100 } } }));
    const f32 = plan.chosen!.predicted;
    near(f32.dataAllreduceMs, allreduce(4) / 100, 'f32, H = 100');
    assert.match(plan.explanation, /data all-reduce [\d.]+ ms \(DiLoCo: one f32 pseudo-gradient all-reduce per 100 steps, spread over them\)/);
    const bf16 = planJob(request({ parallel: pinned2, training: { ...TRAIN, gradientWire: 'bf16', diloco: { innerSteps: 100 } } })).chosen!.predicted;
    near(bf16.dataAllreduceMs, allreduce(2) / 100, 'bf16, H = 100');
    const plainBf16 = planJob(request({ parallel: pinned2, training: { ...TRAIN, gradientWire: 'bf16' } })).chosen!.predicted;
    near(plainBf16.dataAllreduceMs, allreduce(2), 'plain data parallelism in bf16: every step');
  });

  test('its inner steps pay no world all-reduce, and it holds two more copies of the weights', () => {
    const d = planJob(request({ parallel: pinned2, training: { ...TRAIN, diloco: { innerSteps: 100 } } })).chosen!.predicted;
    near(d.overheadMs, DEFAULT_CALIBRATION.stepOverheadMs, 'only the worker round trips');
    assert.ok(plain.overheadMs > d.overheadMs);
    near(d.memoryBytesPerAgent - plain.memoryBytesPerAgent, 2 * 4 * params, 'outer weights and momentum, float32');
  });

  test('with parallel auto it weighs whole-model layouts only, and over slow links takes both agents', () => {
    const plan = planJob(request({ agents: [agent('a', 'h1'), agent('b', 'h2'), agent('c', 'h3'), agent('d', 'h4')], training: { ...TRAIN, diloco: { innerSteps: 500 } } }));
    assert.ok(plan.candidates.every((c) => c.layout.pipeline === 1 && c.layout.tensor === 1), plan.candidates.map((c) => JSON.stringify(c.layout)).join(' '));
    assert.ok(plan.chosen!.layout.data > 1, plan.explanation);
  });
});
