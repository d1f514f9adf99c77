/**
 * The planner's cost model (see planner.ts's header for how the terms add up to a step): FLOPs per micro-batch
 * counted from model/gpt.ts, what a stage shard's compute costs on one agent, ring all-reduce time, agents sharing a
 * host's cores, the 1F1B pipeline section simulated stage by stage, and memory per agent. Pure functions of the
 * model, the work and the calibration, measured on this machine (DEFAULT_CALIBRATION says how).
 */
import { PACK_CACHE_MAX_ELEMENTS } from '../../model/kernels/pack-cache.ts';
import { headChunkRows } from '../../model/lm-head-chunks.ts';
import { PROBE_SHAPES } from '../../protocol/probe.ts';

/** The model's shape, as the planner sees it. */
export interface Model {
  vocabSize: number;
  nCtx: number;
  nLayer: number;
  nHead: number;
  nEmbd: number;
}

const BYTES = 4; // float32

export interface PlannerCalibration {
  efficiency: number; // share of the agent's matmul GFLOP/s that a training step's matmuls achieve
  elementNs: number; // per activation element per pass: the non-matmul operations
  paramNsPerMicroBatch: number; // per local parameter per micro-batch: its gradient read back and accumulated
  microBatchMs: number; // per micro-batch on each rank: operation dispatch, worker round trips
  blockPassMs: number; // per block per pass: dispatching its operations, whatever their size
  stepOverheadMs: number; // per step on each rank: the worker's begin, norm and update round trips
  agentCores: number; // cores one computing agent keeps busy when agents share a host (see slowdown)
  linkBytesPerS: number; // between agents on different hosts
  loopbackBytesPerS: number; // between agents on one host
  hopLatencyMs: number; // α per message hop, for a process with a core to itself
  optimizerNsPerParam: number; // norm, clip, AdamW and parameter upload per local parameter
  memoryFraction: number; // share of an agent's memory a job may use
}

/**
 * Measured on the 2-core development machine (wasm backend with the fast matmul kernels, Node 20), with the cores
 * otherwise idle. The compute constants are a least-squares fit (relative error, median times) of one thread timing
 * a stage's forward and backward (StageModel, as the trainer worker runs them) on 20 shapes × 4 stage kinds (whole
 * model, first, middle, last stage; d 32–256, vocabulary 256–1024, 1–4 blocks, 8–2048 tokens per micro-batch,
 * tensor-parallel degree 1, 2 and 4), beside the agent's own matmul measurement in the same process, in two runs.
 * The fit is within 15% on most shapes; middle pipeline stages run up to 25–35% slower than it says.
 */
export const DEFAULT_CALIBRATION: PlannerCalibration = Object.freeze({
  efficiency: 0.95, // fit: 0.95 and 0.97 of the 512³ matmul rate (the non-matmul work is counted apart)
  elementNs: 2.5, // fit: 2.54 and 2.58 ns per activation element per pass
  paramNsPerMicroBatch: 17, // fit: 17.0 and 17.7 ns per parameter per micro-batch
  microBatchMs: 2.9, // fit: 2.1–2.2 ms in one thread; + ~0.7 ms of worker round trips (fwd and bwd) in an agent
  blockPassMs: 0.2, // fit: 0.18 and 0.29 ms per block per pass (shows in tensor-parallel shards, whose work shrinks)
  stepOverheadMs: 5, // 1×1×1 jobs on one agent: step time less the worker's busy time and the optimizer, 4–6 ms
  // A lone training agent keeps 1.2–1.5 cores busy (its compute thread plus V8's garbage-collector and compiler
  // threads and its main thread), but agents computing at once slow each other less than that adds up to:
  // `npm run bench -- share` (2026-12-07, this code) measured 2, 3 and 4 processes training at once on the 2 cores
  // at 1.13×, 1.86× and 2.50× one alone, which max(1, n·c / 2) fits at c = 1.25. (1.5 fitted the code of 2026-12-06.)
  agentCores: 1.25,
  linkBytesPerS: 100e6, // ~1 Gbit/s between hosts
  // busbw of a ws ring of 4 agents on one 2-core host, 64 MB (bench allreduce); a job's few MB of gradients went at
  // 120–165 MB/s. A self-check replaces it with what it measures (coordinator/jobs/planner-feedback.ts).
  loopbackBytesPerS: 300e6,
  // An all-reduce of 8 floats between 2 idle agents takes 0.5 ms for its 2 hops (0.25 each; 0.7 each in a ring of
  // 4 agents on 2 cores). 0.5 fits the tensor-parallel jobs above, whose partner is often still computing.
  hopLatencyMs: 0.5,
  optimizerNsPerParam: 14, // one thread: sum of squares, AdamW and parameter upload, 12–14 ns per parameter
  memoryFraction: 0.5, // leaves room for the runtime, the dataset reader and a second job
});


// ---------------------------------------------------------------------------------------------------- FLOPs

/** Forward matmul FLOPs of one block on `rows` sequences of `seqLen`, per tensor-parallel rank (2·M·K·N each). */
export function blockForwardFlops(model: Model, rows: number, seqLen: number, tensor = 1): number {
  const n = rows * seqLen, d = model.nEmbd;
  const linears = 2 * n * d * 3 * d + 2 * n * d * d + 2 * n * d * 4 * d + 2 * n * 4 * d * d; // c_attn, c_proj, c_fc, mlp.c_proj
  const attention = 2 * 2 * rows * model.nHead * seqLen * seqLen * (d / model.nHead); // q·kᵀ and att·v per head
  return (linears + attention) / tensor;
}

/** The token embedding, a one-hot matmul [b·s, V] × [V, d]. */
export const embeddingForwardFlops = (model: Model, rows: number, seqLen: number): number => 2 * rows * seqLen * model.vocabSize * model.nEmbd;

/** The output head tied to wte, [b·s, d] × [d, V]. */
export const headForwardFlops = (model: Model, rows: number, seqLen: number): number => 2 * rows * seqLen * model.nEmbd * model.vocabSize;

export interface StageWork {
  blocks: number;
  first: boolean; // holds the embedding
  last: boolean; // holds ln_f, the head and the loss
  tensor: number; // blocks are split t ways; embedding and head are replicated
  recompute: boolean; // re-runs its forward in backward (pipeline stages other than the last)
}

/** Matmul FLOPs one rank of a stage spends on one micro-batch: forward, recomputed forward and backward. */
export function flopsPerMicroBatch(model: Model, rows: number, seqLen: number, stage: StageWork): { forward: number; recompute: number; backward: number; total: number } {
  const blocks = stage.blocks * blockForwardFlops(model, rows, seqLen, stage.tensor);
  const head = stage.last ? headForwardFlops(model, rows, seqLen) : 0;
  // The embedding is a row lookup and its gradient a scatter-add (model/stage-model.ts): no matmul.
  const forward = blocks + head;
  // backward recomputes every block once under its own tape (activation checkpointing), and a pipeline stage
  // other than the last has run the forward once more already, to send its activations
  const recompute = blocks + (stage.recompute ? blocks : 0);
  const backward = 2 * blocks + 2 * head;
  return { forward, recompute, backward, total: forward + recompute + backward };
}

/**
 * Milliseconds one rank of a stage computes per micro-batch with a core to itself, at `flopsPerS` for matmuls (see
 * the cost model at the top): matmul FLOPs, the non-matmul work per activation element of the forward's working
 * set over 4 passes (forward, the recomputed forward, backward at twice it) or 5 (a pipeline stage that also ran the
 * forward to send it), the gradient read-back per local parameter, and a fixed cost per micro-batch. Split as the
 * trainer runs it: a recomputing stage's forward call runs one pass; the last stage's forward call does nothing.
 */
export function stageComputeMs(
  model: Model, rows: number, seqLen: number, stage: StageWork, flopsPerS: number, cal: PlannerCalibration,
): { forwardMs: number; backwardMs: number; totalMs: number } {
  const flops = flopsPerMicroBatch(model, rows, seqLen, stage);
  // one pass over the blocks: its non-matmul work per element, and dispatching its operations (not split by t)
  const passMs = (cal.elementNs * stageActivationBytes(model, rows, seqLen, stage, 0)) / BYTES / 1e6 + cal.blockPassMs * stage.blocks;
  const forwardMs = stage.recompute ? (flops.forward / flopsPerS) * 1e3 + passMs + cal.microBatchMs / 2 : 0;
  const backwardMs = ((flops.total - (stage.recompute ? flops.forward : 0)) / flopsPerS) * 1e3 + 4 * passMs +
    (cal.paramNsPerMicroBatch * stageParams(model, stage)) / 1e6 + (stage.recompute ? cal.microBatchMs / 2 : cal.microBatchMs);
  return { forwardMs, backwardMs, totalMs: forwardMs + backwardMs };
}

// ---------------------------------------------------------------------------------------------------- communication

/** Ring all-reduce of `bytes` over n ranks: 2(n−1)/n · S/B + 2(n−1)·α. */
export function ringAllreduceMs(n: number, bytes: number, bytesPerS: number, hopLatencyMs: number): number {
  if (n <= 1) return 0;
  return ((2 * (n - 1)) / n) * (bytes / bytesPerS) * 1e3 + 2 * (n - 1) * hopLatencyMs;
}

/** Share of a 1F1B pipeline step spent idle: (p − 1)/(m + p − 1). */
export const bubbleFraction = (pipeline: number, microBatches: number): number => (pipeline - 1) / (microBatches + pipeline - 1);

// ---------------------------------------------------------------------------------------------------- shared cores

/**
 * How many times slower each of `n` agents computing at once on a host of `cores` cores runs than one alone: each
 * keeps about agentCores cores busy (its compute thread, V8's garbage-collector and compiler threads, its main
 * thread), so they share the cores once n · agentCores exceeds them.
 */
export function slowdown(n: number, cores: number, cal: Pick<PlannerCalibration, 'agentCores'>): number {
  return Math.max(1, (n * cal.agentCores) / cores);
}

/** One stage's tensor-parallel group in one replica, as simulatePipeline runs it. */
export interface PipelineLane {
  hosts: string[]; // the host of each member: all of them compute at once
  forwardMs: number; // compute per micro-batch in the forward call, with a core to itself
  backwardMs: number; // compute per micro-batch in the backward call (the recomputed forward included)
  forwardWaitMs: number; // tensor-parallel all-reduce latency inside the forward call: wall time, no core
  backwardWaitMs: number;
  sendMs: number; // an activation (or gradient) to the next (or previous) stage
}

/**
 * One step's pipeline section: `lanes[replica][stage]` each run the 1F1B schedule (Megatron's, as
 * node-agent/trainer/schedule.ts), a forward after the previous stage's activation arrives, a backward after the
 * next stage's gradient. While lanes compute, the job's agents computing on a host at that moment share its cores
 * (slowdown); all-reduce and send latencies take wall time only. With `shareCores` false every agent has a core
 * of its own. Returns when the last lane finishes, in ms.
 */
export function simulatePipeline(lanes: PipelineLane[][], m: number, cores: ReadonlyMap<string, number>, cal: PlannerCalibration, shareCores = true): number {
  const p = lanes[0]!.length;
  const EPS = 1e-9;
  const hostIds = new Map([...cores.keys()].map((h, i) => [h, i]));
  const hostCores = [...cores.values()];
  const busy = new Int32Array(hostCores.length); // agents computing on each host right now
  const doneFwd = lanes.map((r) => r.map(() => new Float64Array(m).fill(Infinity)));
  const doneBwd = lanes.map((r) => r.map(() => new Float64Array(m).fill(Infinity)));
  const runs = lanes.flatMap((replica, dp) => replica.map((lane, s) => {
    const ops: number[] = []; // mb for a forward, −1 − mb for a backward, in 1F1B order
    let f = 0, b = 0;
    for (; f < Math.min(p - s - 1, m); f++) ops.push(f);
    while (f < m) ops.push(f++, -1 - b++);
    while (b < m) ops.push(-1 - b++);
    const hosts = lane.hosts.map((h) => hostIds.get(h)!);
    return { lane, hosts, dp, s, ops, k: 0, phase: 0 as 0 | 1 | 2, left: 0, until: 0 }; // phase: 0 waiting, 1 computing, 2 all-reduce wait
  }));
  type Run = (typeof runs)[number];
  let remaining = runs.length;
  const readyAt = (r: Run): number => {
    const op = r.ops[r.k]!;
    if (op >= 0) return r.s === 0 ? 0 : doneFwd[r.dp]![r.s - 1]![op]! + lanes[r.dp]![r.s - 1]!.sendMs;
    return r.s === p - 1 ? 0 : doneBwd[r.dp]![r.s + 1]![-1 - op]! + lanes[r.dp]![r.s + 1]!.sendMs;
  };
  const finish = (r: Run, now: number) => {
    const op = r.ops[r.k]!;
    if (op >= 0) doneFwd[r.dp]![r.s]![op] = now;
    else doneBwd[r.dp]![r.s]![-1 - op] = now;
    r.phase = 0;
    if (++r.k === r.ops.length) remaining--;
  };
  const compute = (r: Run, now: number, on: boolean) => {
    if (on) r.phase = 1;
    for (const h of r.hosts) busy[h]! += on ? 1 : -1;
    if (on) return;
    const ms = r.ops[r.k]! >= 0 ? r.lane.forwardWaitMs : r.lane.backwardWaitMs;
    if (ms > EPS) {
      r.phase = 2;
      r.until = now + ms;
    } else finish(r, now);
  };
  const rate = (r: Run) => {
    if (!shareCores) return 1;
    let worst = 1;
    for (const h of r.hosts) worst = Math.max(worst, slowdown(busy[h]!, hostCores[h]!, cal));
    return 1 / worst;
  };
  let now = 0;
  for (;;) {
    for (let started = true; started;) { // start every operation whose input has arrived (a zero-time one may free others)
      started = false;
      for (const r of runs) {
        if (r.phase !== 0 || r.k === r.ops.length || readyAt(r) > now + EPS) continue;
        r.left = r.ops[r.k]! >= 0 ? r.lane.forwardMs : r.lane.backwardMs;
        compute(r, now, true);
        if (r.left <= EPS) compute(r, now, false);
        started = true;
      }
    }
    if (remaining === 0) return now;
    let next = Infinity;
    for (const r of runs) {
      if (r.phase === 1) next = Math.min(next, now + r.left / rate(r));
      else if (r.phase === 2) next = Math.min(next, r.until);
      else if (r.k < r.ops.length) next = Math.min(next, readyAt(r));
    }
    if (!Number.isFinite(next)) throw new Error('simulatePipeline: the schedule deadlocked'); // cannot happen for 1F1B
    const rates = runs.map((r) => (r.phase === 1 ? rate(r) : 0)); // the rates of this interval, before anything changes
    runs.forEach((r, i) => {
      if (r.phase === 1) {
        r.left -= (next - now) * rates[i]!;
        if (r.left <= EPS) compute(r, next, false);
      } else if (r.phase === 2 && r.until <= next + EPS) finish(r, next);
    });
    now = next;
  }
}

// ---------------------------------------------------------------------------------------------------- memory

/** Parameters one tensor-parallel rank of a stage holds (elements). */
export function stageParams(model: Model, stage: Pick<StageWork, 'blocks' | 'first' | 'last' | 'tensor'>): number {
  const d = model.nEmbd, t = stage.tensor;
  // c_attn, attn.c_proj's weight, c_fc and mlp.c_proj's weight are split; both LayerNorms and the c_proj biases not
  const block = (12 * d * d + 7 * d) / t + 6 * d;
  const wte = model.vocabSize * d;
  let n = stage.blocks * block;
  if (stage.first) n += wte + model.nCtx * d;
  if (stage.last) n += 2 * d + (stage.first ? 0 : wte); // ln_f; the head's own copy of wte when p > 1
  return n;
}

/**
 * Activations one rank of a stage holds at its peak: `inFlight` stored stage inputs (ids on stage 0) plus one
 * micro-batch's working set, the tensors tfjs's tape keeps for backward in gpt.ts's forward, per block:
 * replicated 16·N·d (two LayerNorms at 5, two projections with bias at 2, two residuals), split 55·N·d/t (qkv 6,
 * head transposes 3, attention output 2, c_fc 8, GELU's nine ops on [N, 4d] 36) and 4 score tensors [b·nh, s, s]/t;
 * embedding N·d (a row lookup); head 7·N·V + 5·N·d (ln_f, logits, log-softmax, target one-hot). What sets the step's
 * non-matmul work; the memory a backend holds is backendPeakBytes.
 */
export function stageActivationBytes(model: Model, rows: number, seqLen: number, stage: StageWork, inFlight: number): number {
  const n = rows * seqLen, d = model.nEmbd, v = model.vocabSize, t = stage.tensor;
  const block = 16 * n * d + (55 * n * d) / t + (4 * rows * model.nHead * seqLen * seqLen) / t;
  const working = stage.blocks * block + (stage.first ? n * d : 0) + (stage.last ? 7 * n * v + 5 * n * d : 0);
  const stored = inFlight * (stage.first ? n : n * d);
  return BYTES * (working + stored);
}

/** params + grads + two AdamW moments (sharded over d with ZeRO-1), float32, in the trainer's own buffers, plus what the backend holds. */
export function memoryBytes(params: number, backendBytes: number, data: number, zero: 0 | 1): number {
  return BYTES * (2 * params + (2 * params) / (zero ? data : 1)) + backendBytes;
}

/**
 * The most a wasm agent's backend can address: wasm32's 4 GB, as Emscripten caps the heap (tfjs-backend-wasm's
 * getHeapMax). Tensors, XNNPACK's packed weights and every working buffer share it; past it a job aborts mid-step.
 */
export const WASM_HEAP_BYTES = 4_294_901_760;
/** The share of the wasm heap the planner plans for: the heap grows in steps (up to 20% at once) and fragments. */
export const WASM_HEAP_PLANNED = 0.85;

/**
 * Bytes one rank of a stage holds in its compute backend at its peak (model/stage-model.ts): the stage's
 * parameters as tensors, XNNPACK's packed copy of the matmul weights it keeps (small ones only), each block's input
 * kept for recomputation (activation checkpoints), the stored inputs of micro-batches in flight, and the larger of
 * what one segment's tape holds while it is back-propagated: one block (its forward tensors and their gradients,
 * 2 × (16·N·d + 55·N·d/t + 4 score tensors)) or the head. The causal-LM head goes a vocabulary chunk of v_c rows at
 * a time (model/lm-head.ts): the chunk's weight, its transposed copy and its gradient (3·v_c·d), its logits, their
 * gradient and its packing (3·v_c·N), and the hidden states with their transposes and gradient (~9·N·d). dpo and
 * distill (`wholeLogits`) take the whole logits through tfjs ops: ≈ 12·N·V + 5·N·d (logits, log-softmax, the
 * targets' one-hot and their gradients) plus wte's packing, V·d. Measured on a GPT-2-small probe (one stage, wasm,
 * two steps): the heap's high-water mark was 0.76 GB at N = 256 tokens and 1.62 GB at 1,024 (the latter before
 * writeParams stopped holding old and new weights at once, which took 0.15 GB off at 256), against 0.64 and
 * 1.39 GB here; the rest is the heap's growth slack and fragmentation, which WASM_HEAP_PLANNED leaves room for.
 */
export function backendPeakBytes(model: Model, rows: number, seqLen: number, stage: StageWork, inFlight: number, wholeLogits = false): number {
  const n = rows * seqLen, d = model.nEmbd, v = model.vocabSize, t = stage.tensor;
  // Packings kept cached (small weights only, pack-cache.ts).
  const cached = (elements: number) => (elements <= PACK_CACHE_MAX_ELEMENTS ? elements : 0);
  const packed = stage.blocks * (cached((3 * d * d) / t) + cached((d * d) / t) + 2 * cached((4 * d * d) / t));
  const block = 2 * (16 * n * d + (55 * n * d) / t + (4 * rows * model.nHead * seqLen * seqLen) / t);
  const vc = headChunkRows(v, d);
  const head = !stage.last ? 0 : wholeLogits ? 12 * n * v + 5 * n * d + v * d : 3 * vc * d + 3 * vc * n + 9 * n * d;
  const checkpoints = (stage.blocks + 1) * n * d;
  const stored = inFlight * (stage.first ? n : n * d);
  return BYTES * (stageParams(model, stage) + packed + Math.max(block, head) + checkpoints + stored);
}

/**
 * The largest single tensor a rank of this stage holds, in bytes: what one GPU kernel must bind at once, which
 * WebGPU caps per adapter (maxStorageBufferBindingSize: 128 MiB on many adapters, GPT-2's wte alone is 147 MiB).
 * Weights (the embeddings on the first and last stage; a block's c_attn, c_fc and c_proj cut by the tensor-parallel
 * split) and one micro-batch's activations (attention scores, the MLP's hidden, the head's logits chunk or whole).
 */
export function largestTensorBytes(model: Model, rows: number, seqLen: number, stage: Pick<StageWork, 'blocks' | 'first' | 'last' | 'tensor'>, wholeLogits = false): number {
  const n = rows * seqLen, d = model.nEmbd, v = model.vocabSize, t = stage.tensor;
  const sizes = [
    stage.first || stage.last ? v * d : 0,
    stage.first ? model.nCtx * d : 0,
    stage.blocks > 0 ? Math.max((3 * d * d) / t, (4 * d * d) / t, (rows * model.nHead * seqLen * seqLen) / t, (4 * n * d) / t) : 0,
    stage.last ? (wholeLogits ? n * v : headChunkRows(v, d) * Math.max(n, d)) : 0,
    n * d,
  ];
  return BYTES * Math.max(...sizes);
}

// ---------------------------------------------------------------------------------------------------- per-agent probe

/** The compute figures an agent measured on its own backend at join (node-agent/compute/probe.ts). */
export interface ComputeProbe {
  elementNs: number;
  paramNsPerMicroBatch: number;
  blockPassMs: number;
  microBatchMs: number;
}

/** One probe measurement: a whole-model StageModel forward and backward of one micro-batch, in ms. */
export interface ProbeShape {
  model: Model;
  rows: number;
  seqLen: number;
  measuredMs: number;
}

/** What a worker's round trips add to a micro-batch in an agent, beyond what one thread measures (DEFAULT_CALIBRATION). */
export const WORKER_ROUND_TRIP_MS = 0.7;

/**
 * Fits an agent's non-matmul costs from probe measurements beside its matmul rate. The cost model is linear in its
 * constants: a shape's time is its matmuls (at `matmulGflops` × efficiency) + a·(what DEFAULT_CALIBRATION's
 * element and parameter costs give) + b·(what its per-block and per-micro-batch costs give, one thread's part), so
 * a and b are fitted by least squares over the shapes (a small, dispatch-bound shape and a larger, element-bound
 * one suffice) and scale those constants. Returns null when the measurements cannot be fitted (fewer than two
 * shapes, or no positive solution: the matmuls alone take longer than measured).
 */
export function fitProbe(shapes: readonly ProbeShape[], matmulGflops: number, efficiency = DEFAULT_CALIBRATION.efficiency): ComputeProbe | null {
  if (shapes.length < 2 || !(matmulGflops > 0)) return null;
  const d = DEFAULT_CALIBRATION;
  const threadMicroBatchMs = d.microBatchMs - WORKER_ROUND_TRIP_MS;
  const zero = { ...d, elementNs: 0, paramNsPerMicroBatch: 0, blockPassMs: 0, microBatchMs: 0 };
  const rows = shapes.map((s) => {
    const work: StageWork = { blocks: s.model.nLayer, first: true, last: true, tensor: 1, recompute: false };
    const ms = (cal: PlannerCalibration, flopsPerS: number) => stageComputeMs(s.model, s.rows, s.seqLen, work, flopsPerS, cal).totalMs;
    const matmul = ms(zero, matmulGflops * 1e9 * efficiency);
    const element = ms({ ...zero, elementNs: d.elementNs, paramNsPerMicroBatch: d.paramNsPerMicroBatch }, Infinity);
    const fixed = ms({ ...zero, blockPassMs: d.blockPassMs, microBatchMs: threadMicroBatchMs }, Infinity);
    return { y: s.measuredMs - matmul, element, fixed };
  });
  // normal equations of y ≈ a·element + b·fixed, relative errors (each row divided by its measurement)
  let see = 0, sef = 0, sff = 0, sey = 0, sfy = 0;
  shapes.forEach((s, i) => {
    const w = 1 / (s.measuredMs * s.measuredMs);
    const { y, element: e, fixed: f } = rows[i]!;
    see += w * e * e; sef += w * e * f; sff += w * f * f; sey += w * e * y; sfy += w * f * y;
  });
  const det = see * sff - sef * sef;
  if (!(Math.abs(det) > 0)) return null;
  const a = (sey * sff - sfy * sef) / det, b = (sfy * see - sey * sef) / det;
  if (!(a > 0) || !(b > 0)) return null;
  const round = (x: number) => Math.round(x * 1e4) / 1e4;
  return {
    elementNs: round(d.elementNs * a),
    paramNsPerMicroBatch: round(d.paramNsPerMicroBatch * a),
    blockPassMs: round(d.blockPassMs * b),
    microBatchMs: round(threadMicroBatchMs * b + WORKER_ROUND_TRIP_MS),
  };
}

/** An agent's figures from the probe times it reported at join (protocol/probe.ts), or null when they do not fit. */
export function agentProbe(probeMs: readonly number[] | undefined, matmulGflops: number): ComputeProbe | null {
  if (!probeMs || probeMs.length !== PROBE_SHAPES.length) return null;
  return fitProbe(PROBE_SHAPES.map((s, i) => ({ ...s, measuredMs: probeMs[i]! })), matmulGflops);
}
