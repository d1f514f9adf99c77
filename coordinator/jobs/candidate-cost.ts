/**
 * What one candidate costs: a layout with m micro-batches on one grid of agents (placement.ts), its stage
 * boundaries, predicted step time, memory and why it cannot run, if it cannot.
 *
 * Cost model, per optimizer step (every figure from the agents' measurements and PlannerCalibration):
 * - Compute, per micro-batch on one rank of a stage with a core to itself (stageComputeMs): matmul FLOPs counted
 *   exactly from model/gpt.ts (flopsPerMicroBatch) at matmulGflops × efficiency; plus what is not a matmul, which
 *   for small models is most of a step: elementNs per activation element per pass (LayerNorm, softmax, GELU, the
 *   one-hot, reshapes: the working set stageActivationBytes counts, 3 passes for forward + backward, 4 when the
 *   forward is recomputed), blockPassMs per block per pass (operation dispatch, which tensor parallelism does not
 *   split), paramNsPerMicroBatch per local parameter (every micro-batch's gradient is read back from the backend and
 *   summed into the flat buffer) and microBatchMs (worker round trips and the rest of a micro-batch's fixed cost).
 * - Pipeline (1F1B): stage i spends T_i per micro-batch = compute + its tensor-parallel all-reduces (2 per block per
 *   pass) + its p2p sends; the stage boundaries balance T_i. Stages other than the last recompute their forward in
 *   backward: 2F + B there, F + B on the last; B = 2F (embedding: F, its one-hot input needs no gradient). The
 *   section is simulated (simulatePipeline): every replica's stages run their 1F1B order, each forward waiting for
 *   its activation and each backward for its gradient; computeMs = m·max T_i and bubbleMs the fill and drain
 *   ((p − 1)·T for equal stages: (m + p − 1)·T in all).
 * - Shared cores: while the job's agents on a host compute at once they share its cores (slowdown: each keeps
 *   agentCores busy), so the simulation slows each by what is computing on its host at that moment: data-parallel
 *   replicas all the time, pipeline stages only where their work overlaps. What that adds is sharingMs. A message
 *   hop waits for its receiver to get a core: α × slowdown with all of the job's agents on the host busy.
 * - Data: each stage shard's gradients ring-all-reduced over the d replicas after the pipeline drains (no overlap
 *   with backward is assumed: an upper bound), plus the tied-embedding sum between first and last stage (p > 1).
 *   ZeRO-1 moves the same bytes. training.gradientWire bf16/f16 sends 2 bytes a value (the hops' latency stays);
 *   with ZeRO-1 only its gradient reduce-scatter does, the parameter all-gather stays float32 (3 bytes a value on average).
 *   DiLoCo (training.diloco) all-reduces the pseudo-gradient once per round of innerSteps steps: that one all-reduce
 *   ÷ innerSteps per step, no per-step world all-reduce, and two more parameter copies in memory (outer weights and
 *   momentum) and their elementwise outer step, also ÷ innerSteps.
 * - Per step: stepOverheadMs (the worker's begin, norm and update round trips) and the world all-reduce of a few
 *   scalars (2(n − 1) hops) in overheadMs; then the optimizer, optimizerNsPerParam per local parameter.
 * - Memory: float32 params + grads + two AdamW moments (÷ d with ZeRO-1) in the trainer's buffers, plus what the
 *   backend holds (backendPeakBytes): the weights again, XNNPACK's packed weights, the block inputs kept for
 *   recomputation, the inputs of micro-batches in flight (≤ p − stage, recomputing stages only) and one segment's
 *   tape. A wasm agent's backend must also fit wasm32's 4 GB heap (planned to 85% of it): GPT-2-small (124 M
 *   parameters) fits one wasm agent whole up to ~1,000 tokens per micro-batch (the head's logits over 50,257 ids
 *   dominate: ≈ 2.4 MB a token), and a layout or micro-batch that does not fit is refused or avoided.
 */
import { rankOf, type ParallelLayout } from '../../protocol/layout.ts';
import {
  backendPeakBytes, largestTensorBytes, memoryBytes, WASM_HEAP_BYTES, WASM_HEAP_PLANNED, ringAllreduceMs, simulatePipeline, slowdown,
  stageComputeMs, stageParams, type PipelineLane, type StageWork,
} from './cost-model.ts';
import { fmtBytes } from './plan-explain.ts';
import type { Candidate, PlanContext, PredictedCost } from './plan-request.ts';
import type { Grid, Slot } from './placement.ts';

const BYTES = 4; // float32

/**
 * Contiguous block counts for `stages` stages over `layers` blocks that minimise the slowest stage's cost(stage,
 * blocks), each stage at least one block. Exact dynamic programme, O(stages · layers²). On ties the later stage takes
 * more blocks: stage 0 holds the most micro-batches in flight.
 */
export function stageBoundaries(stages: number, layers: number, cost: (stage: number, blocks: number) => number): Array<[number, number]> {
  if (!Number.isInteger(stages) || stages < 1 || stages > layers) throw new RangeError(`cannot split ${layers} blocks into ${stages} stages`);
  const memo = new Map<number, number>();
  const c = (i: number, n: number): number => {
    const key = i * (layers + 1) + n;
    let v = memo.get(key);
    if (v === undefined) memo.set(key, (v = cost(i, n)));
    return v;
  };
  // best[i][l]: the least slowest-stage cost when stages 0..i hold the first l blocks; start[i][l]: where stage i begins
  const best = Array.from({ length: stages }, () => new Float64Array(layers + 1).fill(Infinity));
  const start = Array.from({ length: stages }, () => new Int32Array(layers + 1));
  for (let l = 1; l <= layers - stages + 1; l++) best[0]![l] = c(0, l);
  for (let i = 1; i < stages; i++) {
    for (let l = i + 1; l <= layers - stages + 1 + i; l++) {
      for (let j = i; j < l; j++) {
        const v = Math.max(best[i - 1]![j]!, c(i, l - j));
        if (v < best[i]![l]!) {
          best[i]![l] = v;
          start[i]![l] = j;
        }
      }
    }
  }
  const out: Array<[number, number]> = [];
  for (let i = stages - 1, end = layers; i >= 0; i--) {
    const first = i === 0 ? 0 : start[i]![end]!;
    out.unshift([first, end]);
    end = first;
  }
  return out;
}

export const stageWork = (l: ParallelLayout, i: number, blocks: number): StageWork => ({
  blocks,
  first: i === 0,
  last: i === l.pipeline - 1,
  tensor: l.tensor,
  recompute: l.pipeline > 1 && i < l.pipeline - 1,
});

/** Predicted cost, stages and placement of one layout with m micro-batches on one grid of agents. */
export function evaluate(ctx: PlanContext, l: ParallelLayout, m: number, grid: Grid): Candidate {
  const { model, training, cal } = ctx;
  const { data: d, pipeline: p, tensor: t } = l;
  const rows = training.batchSize / (d * m);
  const wireBytes = training.gradientWire === 'bf16' || training.gradientWire === 'f16' ? 2 : BYTES;
  // ZeRO-1: the reduce-scatter half travels in the wire format, the parameters' all-gather half in float32 (step.ts).
  const dataBytesPerValue = training.zero && !training.diloco ? (wireBytes + BYTES) / 2 : wireBytes;
  const rounds = training.diloco?.innerSteps ?? 1; // steps per data-parallel all-reduce
  const message = rows * training.seqLen * model.nEmbd * BYTES; // one micro-batch's [b, s, d] float32
  // A hop waits for its receiver to get a core: α with a core each, longer when the job's agents crowd a host.
  const alpha = (slots: Slot[]) => cal.hopLatencyMs / Math.min(...slots.map((s) => s.share));
  const pairBw = (a: Slot, b: Slot) => (a.agent.host === b.agent.host ? cal.loopbackBytesPerS : cal.linkBytesPerS);
  const ringBw = (ring: Slot[]) => (ring.every((s) => s.agent.host === ring[0]!.agent.host) ? cal.loopbackBytesPerS : cal.linkBytesPerS);
  const sendMs = (from: Slot[], to: Slot[]) => Math.max(...from.map((s, tp) => (message / pairBw(s, to[tp]!)) * 1e3 + alpha([s, to[tp]!])));

  // What a stage's replicas spend per micro-batch apart from compute: TP all-reduce (one) and p2p sends.
  const lanes = Array.from({ length: p }, (_, i) => grid.map((replica) => {
    const group = replica[i]!;
    const next = replica[i + 1], prev = replica[i - 1];
    return {
      slots: group, // a TP group runs at its slowest member's pace
      allreduceMs: ringAllreduceMs(t, message, ringBw(group), alpha(group)),
      p2pMs: (next ? sendMs(group, next) : 0) + (prev ? sendMs(group, prev) : 0), // activation forward, gradient back
    };
  }));
  // A tensor-parallel group's compute per micro-batch: its slowest member's, each on its own figures.
  const laneCompute = (slots: Slot[], work: StageWork) => slots
    .map((s) => stageComputeMs(model, rows, training.seqLen, work, s.flopsPerS, s.cal))
    .reduce((a, b) => (b.totalMs > a.totalMs ? b : a));
  const allreduces = (work: StageWork) => ({ forward: work.recompute ? 2 * work.blocks : 0, backward: 4 * work.blocks }); // 2 per block per pass
  // Per micro-batch with a core each: what the stage boundaries balance.
  const stageTime = (i: number, blocks: number) => {
    const work = stageWork(l, i, blocks);
    const n = allreduces(work);
    let worst = { totalMs: -1, tensorMs: 0, p2pMs: 0 };
    for (const lane of lanes[i]!) {
      const tensorMs = (n.forward + n.backward) * lane.allreduceMs;
      const totalMs = laneCompute(lane.slots, work).totalMs + tensorMs + lane.p2pMs;
      if (totalMs > worst.totalMs) worst = { totalMs, tensorMs, p2pMs: lane.p2pMs };
    }
    return worst;
  };
  const stages = stageBoundaries(p, model.nLayer, (i, n) => stageTime(i, n).totalMs);
  const slowest = stages.map(([a, b], i) => stageTime(i, b - a)).reduce((w, x) => (x.totalMs > w.totalMs ? x : w));

  // The pipeline section, simulated: once with a core per agent (compute + fill and drain), once with the job's
  // agents sharing their hosts' cores (what that adds is sharingMs).
  const cores = new Map<string, number>();
  for (const slot of grid.flat(2)) cores.set(slot.agent.host, Math.min(cores.get(slot.agent.host) ?? Infinity, slot.agent.cores));
  const pipeLanes: PipelineLane[][] = grid.map((replica, dp) => replica.map((group, i) => {
    const [a, b] = stages[i]!;
    const work = stageWork(l, i, b - a);
    const lane = lanes[i]![dp]!;
    const compute = laneCompute(lane.slots, work);
    const n = allreduces(work);
    const neighbour = replica[i + 1] ?? replica[i - 1];
    return {
      hosts: group.map((s) => s.agent.host),
      forwardMs: compute.forwardMs,
      backwardMs: compute.backwardMs,
      forwardWaitMs: n.forward * lane.allreduceMs,
      backwardWaitMs: n.backward * lane.allreduceMs,
      sendMs: neighbour ? sendMs(group, neighbour) : 0,
    };
  }));
  const perMicroBatch = Math.max(...pipeLanes.flat().map((x) => x.forwardMs + x.backwardMs + x.forwardWaitMs + x.backwardWaitMs));
  let aloneMs: number, sharedMs: number;
  if (p === 1) {
    // One stage: every lane runs its m micro-batches back to back, all at once (what the simulation gives, in closed form).
    const all = new Map<string, number>();
    for (const slot of grid.flat(2)) all.set(slot.agent.host, (all.get(slot.agent.host) ?? 0) + 1);
    const waits = (x: PipelineLane) => x.forwardWaitMs + x.backwardWaitMs;
    const slow = (x: PipelineLane) => Math.max(...x.hosts.map((h) => slowdown(all.get(h)!, cores.get(h)!, cal)));
    aloneMs = m * perMicroBatch;
    sharedMs = Math.max(...pipeLanes.flat().map((x) => m * ((x.forwardMs + x.backwardMs) * slow(x) + waits(x))));
  } else {
    aloneMs = simulatePipeline(pipeLanes, m, cores, cal, false);
    const crowded = grid.flat(2).some((slot) => slot.share < 1);
    sharedMs = crowded ? simulatePipeline(pipeLanes, m, cores, cal, true) : aloneMs;
  }

  let dataAllreduceMs = 0, optimizerMs = 0, memoryPeak = 0;
  let worstFit: { ratio: number; need: number; slot: Slot; stage: number } | undefined;
  let worstHeap: { ratio: number; need: number; slot: Slot; stage: number } | undefined;
  let wasmPeak = 0;
  let worstBinding: { need: number; slot: Slot; stage: number } | undefined;
  let mixedGroup: { stage: number; backends: string[] } | undefined;
  for (let i = 0; i < p; i++) {
    const [a, b] = stages[i]!;
    const work = stageWork(l, i, b - a);
    const params = stageParams(model, work);
    const backendBytes = backendPeakBytes(model, rows, training.seqLen, work, work.recompute ? Math.min(m, p - i) : 0, training.wholeLogits);
    const need = memoryBytes(params, backendBytes, d, training.zero) + (training.diloco ? 2 * BYTES * params : 0);
    const largest = largestTensorBytes(model, rows, training.seqLen, work, training.wholeLogits);
    // A tensor-parallel group's replicated tensors (LayerNorms, biases, embeddings) stay bit-identical only when
    // its ranks run the same kernels: one backend per group.
    for (const replica of grid) {
      const backends = [...new Set(replica[i]!.map((s) => s.agent.backend ?? 'unknown'))];
      if (backends.length > 1 && !mixedGroup) mixedGroup = { stage: i, backends };
    }
    for (let tp = 0; tp < t; tp++) {
      const ring = grid.map((replica) => replica[i]![tp]!);
      let ms = ringAllreduceMs(d, params * dataBytesPerValue, ringBw(ring), alpha(ring)) / rounds;
      if (p > 1 && (i === 0 || i === p - 1)) {
        const wte = model.vocabSize * model.nEmbd * BYTES; // the tied embedding's two copies sum their gradients
        ms += Math.max(...grid.map((replica) => {
          const pair = [replica[0]![tp]!, replica[p - 1]![tp]!];
          return ringAllreduceMs(2, wte, pairBw(pair[0]!, pair[1]!), alpha(pair));
        }));
      }
      dataAllreduceMs = Math.max(dataAllreduceMs, ms);
      for (const slot of ring) {
        const outerNs = training.diloco ? (cal.optimizerNsPerParam * params) / rounds : 0; // Δ and the outer step, once a round
        optimizerMs = Math.max(optimizerMs, ((cal.optimizerNsPerParam * params) / (training.zero ? d : 1) + outerNs) / slot.share / 1e6); // all at once
        memoryPeak = Math.max(memoryPeak, need);
        const ratio = need / (slot.agent.memoryBytes * cal.memoryFraction);
        if (ratio > 1 && (!worstFit || ratio > worstFit.ratio)) worstFit = { ratio, need, slot, stage: i };
        if (slot.agent.maxBindingBytes !== undefined && largest > slot.agent.maxBindingBytes && !worstBinding) worstBinding = { need: largest, slot, stage: i };
        wasmPeak = Math.max(wasmPeak, slot.agent.backend === 'wasm' ? backendBytes : 0);
        const heapRatio = slot.agent.backend === 'wasm' ? backendBytes / (WASM_HEAP_BYTES * WASM_HEAP_PLANNED) : 0;
        if (heapRatio > 1 && (!worstHeap || heapRatio > worstHeap.ratio)) worstHeap = { ratio: heapRatio, need: backendBytes, slot, stage: i };
      }
    }
  }
  // Every step the world all-reduces the loss, the norm's sum of squares and per-stage timings: a few floats
  // (not with DiLoCo, whose inner steps send nothing).
  const world = grid.flat(2);
  const overheadMs = cal.stepOverheadMs + (training.diloco ? 0 : ringAllreduceMs(world.length, (3 + 2 * p) * BYTES, ringBw(world), alpha(world)));

  const placement: string[] = [];
  grid.forEach((replica, dp) => replica.forEach((group, pp) => group.forEach((s, tp) => (placement[rankOf({ dp, pp, tp }, l)] = s.agent.id))));
  const spans = m + p - 1;
  const computeMs = m * perMicroBatch;
  const bubbleMs = Math.max(0, aloneMs - computeMs);
  const sharingMs = Math.max(0, sharedMs - aloneMs);
  const predicted: PredictedCost = {
    stepMs: computeMs + bubbleMs + sharingMs + dataAllreduceMs + overheadMs + optimizerMs,
    computeMs,
    bubbleMs,
    sharingMs,
    tensorCommMs: spans * slowest.tensorMs,
    pipelineCommMs: spans * slowest.p2pMs,
    dataAllreduceMs,
    overheadMs,
    optimizerMs,
    memoryBytesPerAgent: memoryPeak,
    wasmHeapBytesPerAgent: wasmPeak,
  };
  const candidate: Candidate = { layout: { ...l }, microBatches: m, stages, placement, predicted, feasible: !worstFit && !worstHeap && !worstBinding && !mixedGroup };
  if (worstFit) {
    const { need, slot, stage } = worstFit;
    candidate.reason = `needs ${fmtBytes(need)} per agent${p > 1 ? ` (stage ${stage})` : ''}, agent ${slot.agent.id} allows ` +
      `${fmtBytes(slot.agent.memoryBytes * cal.memoryFraction)} (memoryFraction ${cal.memoryFraction} of ${fmtBytes(slot.agent.memoryBytes)})`;
  } else if (worstHeap) {
    const { need, slot, stage } = worstHeap;
    candidate.reason = `needs ${fmtBytes(need)} of wasm heap${p > 1 ? ` (stage ${stage})` : ''} on agent ${slot.agent.id}, and a wasm agent ` +
      `plans for ${fmtBytes(WASM_HEAP_BYTES * WASM_HEAP_PLANNED)} of wasm32's ${fmtBytes(WASM_HEAP_BYTES)} (weights, packed weights and one micro-batch's working set)`;
  } else if (worstBinding) {
    const { need, slot, stage } = worstBinding;
    candidate.reason = `its largest tensor${p > 1 ? ` on stage ${stage}` : ''} is ${fmtBytes(need)}, over agent ${slot.agent.id}'s WebGPU binding limit ` +
      `of ${fmtBytes(slot.agent.maxBindingBytes!)} (maxStorageBufferBindingSize): more tensor-parallel shards or smaller micro-batches cut it`;
  } else if (mixedGroup) {
    candidate.reason = `a tensor-parallel group of stage ${mixedGroup.stage} would mix backends (${mixedGroup.backends.join(', ')}): ` +
      'its replicated tensors stay identical only when every rank runs the same kernels';
  }
  return candidate;
}
