/**
 * The training planner: which data × pipeline × tensor layout a job runs with, on which agents, with which pipeline
 * stages, and why. `planJob(request) → plan` is a pure function (STYLE.md habit 3): no clock, no I/O, the same
 * request gives the same plan. The job runner carries a plan out; test/coordinator/planner.test.ts tables it.
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
 *   ZeRO-1 moves the same bytes.
 * - Per step: stepOverheadMs (the worker's begin, norm and update round trips) and the world all-reduce of a few
 *   scalars (2(n − 1) hops) in overheadMs; then the optimizer, optimizerNsPerParam per local parameter.
 * - Memory: float32 params + grads + two AdamW moments (÷ d with ZeRO-1) in the trainer's buffers, plus what the
 *   backend holds (backendPeakBytes): the weights again, XNNPACK's packed weights, the block inputs kept for
 *   recomputation, the inputs of micro-batches in flight (≤ p − stage, recomputing stages only) and one segment's
 *   tape. A wasm agent's backend must also fit wasm32's 4 GB heap (planned to 85% of it): GPT-2-small (124 M
 *   parameters) fits one wasm agent whole up to ~1,000 tokens per micro-batch (the head's logits over 50,257 ids
 *   dominate: ≈ 2.4 MB a token), and a layout or micro-batch that does not fit is refused or avoided.
 *
 * Agents measure matmulGflops on join, and agents started together measure together: sharing a host's cores, they
 * report less than the host gives one of them (four agents joining a 2-core host at once reported 10–23 GFLOP/s;
 * one alone 23–25). The planner therefore rates every agent of a host at the best any of them measured: they run
 * on the same cores (assumed: the same backend too), and sharing is what the cost model adds itself.
 */
import { layoutName, rankOf, type ParallelLayout } from '../../protocol/layout.ts';
import {
  backendPeakBytes, bubbleFraction, DEFAULT_CALIBRATION, largestTensorBytes, memoryBytes, type ComputeProbe, WASM_HEAP_BYTES, WASM_HEAP_PLANNED, ringAllreduceMs, simulatePipeline, slowdown, stageActivationBytes, stageComputeMs,
  stageParams, type Model, type PipelineLane, type PlannerCalibration, type StageWork,
} from './cost-model.ts';

export * from './cost-model.ts';

export interface PlannerAgent {
  id: string;
  host: string; // agents with the same host share its cores and talk over loopback
  cores: number;
  memoryBytes: number;
  matmulGflops: number; // measured on join: best of five 512³ float32 matmuls (model/compute/backend.ts)
  /** Its compute backend (wasm, webgpu, cpu, tensorflow, …); a wasm agent's stage must fit wasm32's 4 GB heap. */
  backend?: string;
  /** On webgpu: the largest buffer one kernel may bind (maxStorageBufferBindingSize); no tensor of its shard may be larger. */
  maxBindingBytes?: number;
  /**
   * Its non-matmul costs, fitted from the probe it ran at join on its own backend (cost-model.ts agentProbe); the
   * calibration's constants where absent. Agents sharing a speedKey are rated at the lowest of each figure.
   */
  probe?: ComputeProbe;
  /**
   * Measured step time ÷ predicted, refitted by the coordinator from the jobs its speedKey's agents ran
   * (coordinator/jobs/runner.ts): every compute figure of the agent is scaled by it. Absent: 1.
   */
  refit?: number;
  /**
   * How many times slower than its peers this agent was seen computing the same work in a running job (a
   * straggler: coordinator/jobs/telemetry.ts); its speed is divided by it. Absent or 1: as fast as its host's best.
   */
  slowdown?: number;
}

export interface PlanRequest {
  model: { vocabSize: number; nCtx: number; nLayer: number; nHead: number; nEmbd: number };
  /** wholeLogits: the objective needs the whole logits (dpo, distill), not the causal-LM head's chunks. */
  training: { batchSize: number; microBatches: number; seqLen: number; zero: 0 | 1; wholeLogits?: boolean };
  parallel: 'auto' | ParallelLayout;
  agents: PlannerAgent[];
  calibration?: Partial<PlannerCalibration>;
}

export interface PredictedCost {
  stepMs: number; // computeMs + bubbleMs + sharingMs + dataAllreduceMs + overheadMs + optimizerMs
  computeMs: number; // m × slowest stage's per-micro-batch time with a core to itself (incl. its TP all-reduces)
  bubbleMs: number; // pipeline fill and drain, sends included ((p − 1) × the per-micro-batch time if stages are equal)
  sharingMs: number; // what sharing their hosts' cores adds to the pipeline section (see slowdown)
  tensorCommMs: number; // TP all-reduce share of computeMs + bubbleMs
  pipelineCommMs: number; // p2p activation/gradient share of computeMs + bubbleMs
  dataAllreduceMs: number; // gradient all-reduce over d (slowest stage shard)
  overheadMs: number; // fixed per step: worker round trips, the world all-reduce of the loss and norm scalars
  optimizerMs: number;
  memoryBytesPerAgent: number; // the largest of any agent
  wasmHeapBytesPerAgent: number; // the largest backend peak of any wasm agent (0: none is wasm)
}

export interface Candidate {
  layout: ParallelLayout;
  microBatches: number; // m used
  stages: Array<[number, number]>; // [firstLayer, endLayer) per stage
  placement: string[]; // agent id per world rank
  predicted: PredictedCost; // every field NaN when the layout cannot even be laid out (reason says why)
  feasible: boolean;
  reason?: string;
}

export interface Plan {
  chosen: Candidate | null;
  candidates: Candidate[]; // feasible first, by predicted step time; then the infeasible in enumeration order
  refused?: string; // when chosen is null: why, and what to do
  explanation: string;
}

type Training = PlanRequest['training'];

const BYTES = 4; // float32
const M_PER_STAGE = 4; // auto raises m to at most 4p: the bubble is then < 20%, and smaller micro-batches lose matmul
// efficiency that this model does not see
const MAX_HYPOTHETICAL_AGENTS = 4096; // how far a refusal looks for a layout that would fit

// ---------------------------------------------------------------------------------------------------- stages

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

// ---------------------------------------------------------------------------------------------------- placement

interface Slot {
  agent: PlannerAgent;
  flopsPerS: number; // a training step's matmuls with a core to itself: its host's best matmulGflops × efficiency
  cal: PlannerCalibration; // the calibration with its speedKey's probe figures (the lowest of each) in place
  share: number; // 1 / slowdown with all of this job's agents on its host computing at once
  pace: number; // flopsPerS × share: its speed while all of the job's agents on its host compute
}
type Grid = Slot[][][]; // [dp][pp][tp]

/**
 * Whose measurements rate an agent: agents computing on a host's cores with one backend share them, so the best
 * any of them measured (see the top of the file); a GPU agent computes on its own device: its own figure.
 */
export function speedKey(a: Pick<PlannerAgent, 'id' | 'host' | 'backend'>): string {
  return a.backend === 'webgpu' ? `gpu:${a.id}` : `${a.host}|${a.backend ?? ''}`;
}

/** Each speedKey's best matmulGflops: what any of its agents gets with a core to itself (see the top of the file). */
function hostGflops(agents: readonly PlannerAgent[]): Map<string, number> {
  const best = new Map<string, number>();
  for (const a of agents) best.set(speedKey(a), Math.max(best.get(speedKey(a)) ?? 0, a.matmulGflops));
  return best;
}

/** Each speedKey's probe: the lowest of each figure its agents measured (agents that probed together slowed each other). */
function hostProbes(agents: readonly PlannerAgent[]): Map<string, ComputeProbe> {
  const best = new Map<string, ComputeProbe>();
  for (const a of agents) {
    if (!a.probe) continue;
    const k = speedKey(a), b = best.get(k);
    best.set(k, b ? {
      elementNs: Math.min(b.elementNs, a.probe.elementNs),
      paramNsPerMicroBatch: Math.min(b.paramNsPerMicroBatch, a.probe.paramNsPerMicroBatch),
      blockPassMs: Math.min(b.blockPassMs, a.probe.blockPassMs),
      microBatchMs: Math.min(b.microBatchMs, a.probe.microBatchMs),
    } : { ...a.probe });
  }
  return best;
}

function slotsFor(chosen: readonly PlannerAgent[], ctx: Pick<Ctx, 'cal' | 'hostGflops' | 'hostProbes'>): Map<string, Slot> {
  const perHost = new Map<string, number>();
  for (const a of chosen) perHost.set(a.host, (perHost.get(a.host) ?? 0) + 1);
  return new Map(chosen.map((a) => {
    const share = 1 / slowdown(perHost.get(a.host)!, a.cores, ctx.cal);
    const flopsPerS = ((ctx.hostGflops.get(speedKey(a)) ?? a.matmulGflops) * 1e9 * ctx.cal.efficiency) / Math.max(1, a.slowdown ?? 1);
    const probe = ctx.hostProbes.get(speedKey(a));
    const r = a.refit ?? 1;
    const base = probe ? { ...ctx.cal, ...probe } : ctx.cal;
    const cal = r === 1 ? base : {
      ...base, elementNs: base.elementNs * r, paramNsPerMicroBatch: base.paramNsPerMicroBatch * r, blockPassMs: base.blockPassMs * r, microBatchMs: base.microBatchMs * r,
    };
    return [a.id, { agent: a, flopsPerS: flopsPerS / r, cal, share, pace: (flopsPerS / r) * share }];
  }));
}

/**
 * Agents in the order a job of k agents takes them (its first k): each time the one that keeps the slowest chosen
 * agent fastest (a crowded host slows all its agents), then the largest total speed, then a host already in use
 * (tensor groups stay local), then the id. Greedy, so the order for k is a prefix of the order for k + 1.
 */
function agentOrder(agents: readonly PlannerAgent[], ctx: Pick<Ctx, 'cal' | 'hostGflops' | 'hostProbes'>): PlannerAgent[] {
  const chosen: PlannerAgent[] = [];
  const rest = [...agents];
  while (rest.length > 0) {
    let best = 0, bestKey: number[] = [];
    for (let i = 0; i < rest.length; i++) {
      const candidate = rest[i]!;
      const speeds = [...slotsFor([...chosen, candidate], ctx).values()].map((s) => s.pace);
      const key = [Math.min(...speeds), speeds.reduce((a, b) => a + b, 0), chosen.some((a) => a.host === candidate.host) ? 1 : 0];
      if (i === 0 || isGreater(key, bestKey)) { // rest is in id order: ties keep the smaller id
        best = i;
        bestKey = key;
      }
    }
    chosen.push(rest.splice(best, 1)[0]!);
  }
  return chosen;
}

function isGreater(a: number[], b: number[]): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! > b[i]!;
  return false;
}

const bySpeed = (a: Slot, b: Slot): number => b.pace - a.pace || compareIds(a.agent.id, b.agent.id);
const compareIds = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** Tensor groups of t slots: whole groups from one host first (fastest first), the remainder across hosts. */
function tensorGroups(slots: Slot[], t: number): Slot[][] {
  const hosts = [...new Set(slots.map((s) => s.agent.host))].sort(compareIds);
  const groups: Slot[][] = [];
  const leftovers: Slot[] = [];
  for (const host of hosts) {
    const mine = slots.filter((s) => s.agent.host === host).sort(bySpeed);
    const whole = mine.length - (mine.length % t);
    for (let i = 0; i < whole; i += t) groups.push(mine.slice(i, i + t));
    leftovers.push(...mine.slice(whole));
  }
  leftovers.sort(bySpeed);
  for (let i = 0; i < leftovers.length; i += t) groups.push(leftovers.slice(i, i + t));
  const speed = (g: Slot[]) => Math.min(...g.map((s) => s.pace));
  return groups.sort((a, b) => speed(b) - speed(a) || compareIds(a[0]!.agent.id, b[0]!.agent.id));
}

/**
 * Which agents a layout of n = d·p·t takes: the first n in agentOrder and, when t > 1 and that differs, the set
 * that takes whole tensor groups from single hosts first (ranked by their slowest member's place in agentOrder) and
 * fills up in agentOrder. Both are costed: a local group can beat a faster agent across a slow link, or not.
 */
function agentSets(order: readonly PlannerAgent[], l: ParallelLayout): PlannerAgent[][] {
  const n = l.data * l.pipeline * l.tensor, t = l.tensor;
  const first = order.slice(0, n);
  if (t === 1 || n === order.length) return [first];
  const place = new Map(order.map((a, i) => [a.id, i]));
  const local: PlannerAgent[][] = [];
  for (const host of [...new Set(order.map((a) => a.host))].sort(compareIds)) {
    const mine = order.filter((a) => a.host === host);
    for (let i = 0; i + t <= mine.length; i += t) local.push(mine.slice(i, i + t));
  }
  const worst = (g: PlannerAgent[]) => Math.max(...g.map((a) => place.get(a.id)!));
  const taken = local.sort((a, b) => worst(a) - worst(b)).slice(0, l.data * l.pipeline).flat();
  const set = [...taken, ...order.filter((a) => !taken.includes(a))].slice(0, n);
  const same = set.every((a) => first.includes(a));
  return same ? [first] : [first, set];
}

/**
 * Two ways to lay the groups (fastest first) onto (dp, pp): stage-major puts a stage's d replicas side by side (its
 * data ring stays local), replica-major a replica's p stages (its p2p links stay local). Both are costed.
 */
function grids(groups: Slot[][], l: ParallelLayout): Grid[] {
  const make = (at: (j: number) => { dp: number; pp: number }): Grid => {
    const grid: Grid = Array.from({ length: l.data }, () => Array.from({ length: l.pipeline }, () => []));
    groups.forEach((g, j) => {
      const { dp, pp } = at(j);
      grid[dp]![pp] = g;
    });
    return grid;
  };
  const stageMajor = make((j) => ({ dp: j % l.data, pp: Math.floor(j / l.data) }));
  if (l.data === 1 || l.pipeline === 1) return [stageMajor];
  return [stageMajor, make((j) => ({ dp: Math.floor(j / l.pipeline), pp: j % l.pipeline }))];
}

// ---------------------------------------------------------------------------------------------------- costing

interface Ctx {
  model: Model;
  training: Training;
  cal: PlannerCalibration;
  agents: PlannerAgent[]; // usable, in agentOrder
  hostGflops: Map<string, number>; // best matmulGflops of each host's usable agents
  hostProbes: Map<string, ComputeProbe>; // lowest probe figures of each speedKey's usable agents
}

const stageWork = (l: ParallelLayout, i: number, blocks: number): StageWork => ({
  blocks,
  first: i === 0,
  last: i === l.pipeline - 1,
  tensor: l.tensor,
  recompute: l.pipeline > 1 && i < l.pipeline - 1,
});

/** Predicted cost, stages and placement of one layout with m micro-batches on one grid of agents. */
function evaluate(ctx: Ctx, l: ParallelLayout, m: number, grid: Grid): Candidate {
  const { model, training, cal } = ctx;
  const { data: d, pipeline: p, tensor: t } = l;
  const rows = training.batchSize / (d * m);
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
    const need = memoryBytes(params, backendBytes, d, training.zero);
    const largest = largestTensorBytes(model, rows, training.seqLen, work, training.wholeLogits);
    // A tensor-parallel group's replicated tensors (LayerNorms, biases, embeddings) stay bit-identical only when
    // its ranks run the same kernels: one backend per group.
    for (const replica of grid) {
      const backends = [...new Set(replica[i]!.map((s) => s.agent.backend ?? 'unknown'))];
      if (backends.length > 1 && !mixedGroup) mixedGroup = { stage: i, backends };
    }
    for (let tp = 0; tp < t; tp++) {
      const ring = grid.map((replica) => replica[i]![tp]!);
      let ms = ringAllreduceMs(d, params * BYTES, ringBw(ring), alpha(ring));
      if (p > 1 && (i === 0 || i === p - 1)) {
        const wte = model.vocabSize * model.nEmbd * BYTES; // the tied embedding's two copies sum their gradients
        ms += Math.max(...grid.map((replica) => {
          const pair = [replica[0]![tp]!, replica[p - 1]![tp]!];
          return ringAllreduceMs(2, wte, pairBw(pair[0]!, pair[1]!), alpha(pair));
        }));
      }
      dataAllreduceMs = Math.max(dataAllreduceMs, ms);
      for (const slot of ring) {
        optimizerMs = Math.max(optimizerMs, (cal.optimizerNsPerParam * params) / (training.zero ? d : 1) / slot.share / 1e6); // all at once
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
  // Every step the world all-reduces the loss, the norm's sum of squares and per-stage timings: a few floats.
  const world = grid.flat(2);
  const overheadMs = cal.stepOverheadMs + ringAllreduceMs(world.length, (3 + 2 * p) * BYTES, ringBw(world), alpha(world));

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

interface Problem {
  reason: string;
  advice: string;
}

/** Why a layout cannot be laid out at all, before any costing. */
function structuralProblem(ctx: Ctx, l: ParallelLayout, m: number): Problem | undefined {
  const { model, training } = ctx;
  const n = l.data * l.pipeline * l.tensor;
  if (![l.data, l.pipeline, l.tensor].every((x) => Number.isSafeInteger(x) && x >= 1)) {
    return { reason: `degrees ${layoutName(l)} must be positive integers`, advice: 'give data, pipeline and tensor as positive integers' };
  }
  if (n > ctx.agents.length) {
    return { reason: `${layoutName(l)} needs ${n} agents, ${ctx.agents.length} usable`, advice: `start ${n - ctx.agents.length} more agent(s), or use parallel: auto` };
  }
  if (model.nHead % l.tensor !== 0) {
    return { reason: `tensor ${l.tensor} does not divide nHead ${model.nHead}`, advice: `use a tensor degree among ${divisors(model.nHead).join(', ')}` };
  }
  if (l.pipeline > model.nLayer) {
    return { reason: `pipeline ${l.pipeline} exceeds nLayer ${model.nLayer} (each stage needs a block)`, advice: `use at most ${model.nLayer} stages` };
  }
  if (training.batchSize % l.data !== 0) {
    return { reason: `batchSize ${training.batchSize} does not divide over data ${l.data}`, advice: 'make batchSize a multiple of the data degree' };
  }
  if ((training.batchSize / l.data) % m !== 0) {
    return { reason: `batchSize per data rank ${training.batchSize / l.data} does not divide into ${m} micro-batches`, advice: 'make batchSize / data a multiple of microBatches' };
  }
  if (training.seqLen > model.nCtx) {
    return { reason: `seqLen ${training.seqLen} exceeds nCtx ${model.nCtx}`, advice: 'lower seqLen or raise nCtx' };
  }
  return undefined;
}

/** Micro-batch counts to try: the spec's, and larger divisors of batchSize/d, up to 4p for p > 1 (same model: the
 * global batch and its mean-loss gradient do not change, only how it is cut into micro-batches). With one stage
 * more micro-batches only cost time, so they win only where the spec's count does not fit in memory. */
function microBatchOptions(training: Training, l: ParallelLayout, pinned: boolean): number[] {
  const m = training.microBatches;
  if (pinned) return [m];
  const cap = l.pipeline === 1 ? Infinity : Math.max(m, M_PER_STAGE * l.pipeline);
  return divisors(training.batchSize / l.data).filter((x) => x >= m && x <= cap);
}

const unpredicted = (): PredictedCost => ({
  stepMs: NaN, computeMs: NaN, bubbleMs: NaN, sharingMs: NaN, tensorCommMs: NaN, pipelineCommMs: NaN, dataAllreduceMs: NaN, overheadMs: NaN, optimizerMs: NaN,
  memoryBytesPerAgent: NaN,
  wasmHeapBytesPerAgent: NaN,
});

/** The best (feasible first, then fastest; else leanest) of a layout's micro-batch counts and placements. */
function weigh(ctx: Ctx, l: ParallelLayout, pinned: boolean): { candidate: Candidate; problem?: Problem } {
  const problem = structuralProblem(ctx, l, ctx.training.microBatches);
  if (problem) return { candidate: { layout: { ...l }, microBatches: ctx.training.microBatches, stages: [], placement: [], predicted: unpredicted(), feasible: false, reason: problem.reason }, problem };
  const layoutGrids = agentSets(ctx.agents, l).flatMap((set) => grids(tensorGroups([...slotsFor(set, ctx).values()], l.tensor), l));
  let best: Candidate | undefined;
  for (const m of microBatchOptions(ctx.training, l, pinned)) {
    for (const grid of layoutGrids) {
      const c = evaluate(ctx, l, m, grid);
      const better = !best || (c.feasible !== best.feasible ? c.feasible
        : c.feasible ? c.predicted.stepMs < best.predicted.stepMs : c.predicted.memoryBytesPerAgent < best.predicted.memoryBytesPerAgent);
      if (better) best = c;
    }
  }
  return { candidate: best! };
}

/** Faster first; equal (to 1e-9) → fewer agents, then smaller p·t, then the layout and m themselves. */
function compareFeasible(a: Candidate, b: Candidate): number {
  const x = a.predicted.stepMs, y = b.predicted.stepMs;
  if (Math.abs(x - y) > 1e-9 * Math.max(x, y)) return x - y;
  const agents = (c: Candidate) => c.layout.data * c.layout.pipeline * c.layout.tensor;
  const split = (c: Candidate) => c.layout.pipeline * c.layout.tensor;
  return agents(a) - agents(b) || split(a) - split(b) || a.layout.data - b.layout.data || a.layout.pipeline - b.layout.pipeline || a.microBatches - b.microBatches;
}

// ---------------------------------------------------------------------------------------------------- the plan

export function planJob(req: PlanRequest): Plan {
  const cal = calibration(req.calibration);
  validate(req);
  const usable = req.agents.filter((a) => a.matmulGflops > 0 && a.cores >= 1 && a.memoryBytes > 0).sort((a, b) => compareIds(a.id, b.id));
  const best = hostGflops(usable), probes = hostProbes(usable);
  const ctx: Ctx = { model: req.model, training: req.training, cal, agents: agentOrder(usable, { cal, hostGflops: best, hostProbes: probes }), hostGflops: best, hostProbes: probes };
  const pinned = req.parallel !== 'auto';
  const layouts: ParallelLayout[] = req.parallel === 'auto' ? enumerate(usable.length) : [req.parallel];
  const weighed = layouts.map((l) => weigh(ctx, l, pinned));
  const feasible = weighed.map((w) => w.candidate).filter((c) => c.feasible).sort(compareFeasible);
  const infeasible = weighed.map((w) => w.candidate).filter((c) => !c.feasible);
  const candidates = [...feasible, ...infeasible];
  const chosen = feasible[0] ?? null;
  if (chosen) return { chosen, candidates, explanation: explain(ctx, chosen, feasible[1], pinned) };

  let refused: string;
  if (usable.length === 0) {
    refused = req.agents.length === 0 ? 'no agents are connected: start at least one node-agent'
      : `none of the ${req.agents.length} agents can compute (0 GFLOP/s, cores or memory): start a working node-agent`;
  } else if (pinned) {
    const w = weighed[0]!;
    refused = `layout ${layoutName(req.parallel as ParallelLayout)} is infeasible: ${w.candidate.reason}; ` +
      (w.problem ? w.problem.advice : heapBound(w.candidate) ? WASM_HEAP_ADVICE : memoryAdvice(ctx));
  } else if (weighed.every((w) => w.problem)) {
    const w = weighed[0]!; // 1×1×1 fails only on the spec itself
    refused = `no layout is possible: ${w.candidate.reason}; ${w.problem!.advice}`;
  } else {
    const leanest = infeasible.filter((c) => !Number.isNaN(c.predicted.memoryBytesPerAgent))
      .reduce((a, b) => (b.predicted.memoryBytesPerAgent < a.predicted.memoryBytesPerAgent ? b : a));
    refused = `no layout fits in memory on ${usable.length} agent(s): the leanest, ${layoutName(leanest.layout)} with m = ${leanest.microBatches}, ` +
      `${leanest.reason}; ${heapBound(leanest) ? WASM_HEAP_ADVICE : memoryAdvice(ctx)}`;
  }
  return { chosen: null, candidates, refused, explanation: `Refused: ${refused}.` };
}

/**
 * What would make the job fit: the fewest agents like the roomiest one that some layout fits on (an estimate, with
 * blocks split evenly rather than by speed), or else a smaller batch or model.
 */
/** True when a candidate fails on the wasm heap only (its agents have the memory). */
const heapBound = (c: Candidate) => /of wasm heap/.test(c.reason ?? '');
const WASM_HEAP_ADVICE = 'split the model over more pipeline stages or tensor shards (start more agents), put fewer tokens in a ' +
  'micro-batch (raise microBatches, lower seqLen), or run agents on a backend without that limit (--backend tensorflow, a GPU)';

function memoryAdvice(ctx: Ctx): string {
  const { model, training, cal } = ctx;
  const roomiest = ctx.agents.reduce((a, b) => (b.memoryBytes > a.memoryBytes || (b.memoryBytes === a.memoryBytes && b.id < a.id) ? b : a));
  const allow = roomiest.memoryBytes * cal.memoryFraction;
  const size = (l: ParallelLayout) => l.data * l.pipeline * l.tensor;
  const layouts = enumerate(MAX_HYPOTHETICAL_AGENTS)
    .filter((l) => model.nHead % l.tensor === 0 && l.pipeline <= model.nLayer && training.batchSize % l.data === 0 && (training.batchSize / l.data) % training.microBatches === 0)
    .sort((a, b) => size(a) - size(b));
  let fit: { agents: number; need: number; l: ParallelLayout; m: number } | undefined;
  for (const l of layouts) {
    const n = size(l);
    if (fit && n > fit.agents) break;
    for (const m of microBatchOptions(training, l, false)) {
      const need = evenSplitMemory(ctx, l, m);
      if (need <= allow && (!fit || n < fit.agents || (n === fit.agents && need < fit.need))) fit = { agents: n, need, l, m };
    }
  }
  const hint = 'or lower batchSize or seqLen (activations shrink with them), or raise microBatches';
  if (!fit) return `no layout of up to ${MAX_HYPOTHETICAL_AGENTS} agents like ${roomiest.id} would fit: lower batchSize or seqLen, raise microBatches, or train a smaller model`;
  const example = `${layoutName(fit.l)} with m = ${fit.m} needs ${fmtBytes(fit.need)} per agent`;
  if (fit.agents > ctx.agents.length) {
    return `start ${fit.agents - ctx.agents.length} more agent(s) with at least ${fmtBytes(fit.need / cal.memoryFraction)} of memory like ${roomiest.id} (${example}), ${hint}`;
  }
  return `give every agent at least ${fmtBytes(fit.need / cal.memoryFraction)} of memory (${example}), ${hint}`;
}

/** Peak memory per agent of a layout with blocks split evenly (later stages take the remainder). */
function evenSplitMemory(ctx: Ctx, l: ParallelLayout, m: number): number {
  const { model, training } = ctx;
  const rows = training.batchSize / (l.data * m);
  let peak = 0;
  for (let i = 0; i < l.pipeline; i++) {
    const blocks = Math.floor(model.nLayer / l.pipeline) + (i >= l.pipeline - (model.nLayer % l.pipeline) ? 1 : 0);
    const work = stageWork(l, i, blocks);
    const backendBytes = backendPeakBytes(model, rows, training.seqLen, work, work.recompute ? Math.min(m, l.pipeline - i) : 0, training.wholeLogits);
    peak = Math.max(peak, memoryBytes(stageParams(model, work), backendBytes, l.data, training.zero));
  }
  return peak;
}

function explain(ctx: Ctx, c: Candidate, runnerUp: Candidate | undefined, pinned: boolean): string {
  const p = c.predicted;
  const n = c.layout.data * c.layout.pipeline * c.layout.tensor;
  const parts = [
    `${pinned ? 'Pinned' : 'Chose'} ${layoutName(c.layout)} (data × pipeline × tensor) on ${n} of ${ctx.agents.length} agent(s) with m = ${c.microBatches}: ` +
      `predicted ${fmtMs(p.stepMs)} per step (compute ${fmtMs(p.computeMs)} + bubble ${fmtMs(p.bubbleMs)}, of which tensor all-reduce ` +
      `${fmtMs(p.tensorCommMs)} and p2p ${fmtMs(p.pipelineCommMs)}; ${p.sharingMs > 0 ? `waiting for shared cores ${fmtMs(p.sharingMs)}; ` : ''}` +
      `data all-reduce ${fmtMs(p.dataAllreduceMs)}; per-step overhead ${fmtMs(p.overheadMs)}; optimizer ${fmtMs(p.optimizerMs)}), ` +
      `${fmtBytes(p.memoryBytesPerAgent)} per agent at most${p.wasmHeapBytesPerAgent > 0 ? ` (of it ${fmtBytes(p.wasmHeapBytesPerAgent)} on the wasm heap, which holds ${fmtBytes(WASM_HEAP_BYTES)} at most)` : ''}.`,
  ];
  parts.push(`Agents' figures: ${agentFigures(ctx, c.placement)}.`);
  if (c.layout.pipeline > 1) parts.push(`Stages hold blocks ${c.stages.map(([a, b]) => `[${a}, ${b})`).join(' ')}, sized to the agents' speeds.`);
  if (c.microBatches > ctx.training.microBatches) {
    parts.push(`m was raised from ${ctx.training.microBatches} to ${c.microBatches} to shrink the bubble to ${Math.round(100 * bubbleFraction(c.layout.pipeline, c.microBatches))}%; ` +
      'the model and its gradients are the same, only the batch is cut finer.');
  }
  if (runnerUp) {
    const r = runnerUp.predicted;
    const terms: Array<[string, number]> = [
      ['compute', r.computeMs - p.computeMs], ['bubble', r.bubbleMs - p.bubbleMs], ['shared cores', r.sharingMs - p.sharingMs],
      ['data all-reduce', r.dataAllreduceMs - p.dataAllreduceMs], ['per-step overhead', r.overheadMs - p.overheadMs], ['optimizer', r.optimizerMs - p.optimizerMs],
    ];
    const [why, delta] = terms.reduce((a, b) => (b[1] > a[1] ? b : a));
    parts.push(`Runner-up ${layoutName(runnerUp.layout)} with m = ${runnerUp.microBatches}: ${fmtMs(r.stepMs)}` +
      (delta > 0 ? `, mostly from ${why} (+${fmtMs(delta)}).` : '.'));
  } else if (!pinned) {
    parts.push('No other layout fits.');
  }
  return parts.join(' ');
}

/** What the cost model used for each agent of a placement: its speed, its non-matmul costs and where they came from. */
function agentFigures(ctx: Ctx, placement: readonly string[]): string {
  const ids = [...new Set(placement)];
  const slots = slotsFor(ctx.agents.filter((a) => ids.includes(a.id)), ctx);
  return ids.map((id) => {
    const s = slots.get(id)!, a = s.agent;
    const from = ctx.hostProbes.has(speedKey(a)) ? 'probed at join' : 'calibration defaults';
    return `${id} ${a.backend ?? '?'} ${fmtNum(s.flopsPerS / 1e9 / s.cal.efficiency)} GFLOP/s, ${fmtNum(s.cal.elementNs)} ns/element, ` +
      `${fmtNum(s.cal.blockPassMs)} ms/block pass, ${fmtNum(s.cal.microBatchMs)} ms/micro-batch (${from}${a.refit !== undefined ? `, step-time refit ×${fmtNum(a.refit)}` : ''})`;
  }).join('; ');
}

const fmtNum = (x: number) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

// ---------------------------------------------------------------------------------------------------- helpers

/** Every (d, p, t) with d·p·t ≤ n, in order of d, then p, then t. */
function enumerate(n: number): ParallelLayout[] {
  const out: ParallelLayout[] = [];
  for (let data = 1; data <= n; data++) {
    for (let pipeline = 1; data * pipeline <= n; pipeline++) {
      for (let tensor = 1; data * pipeline * tensor <= n; tensor++) out.push({ data, pipeline, tensor });
    }
  }
  return out;
}

function divisors(n: number): number[] {
  const low: number[] = [], high: number[] = [];
  for (let i = 1; i * i <= n; i++) {
    if (n % i !== 0) continue;
    low.push(i);
    if (i * i !== n) high.unshift(n / i);
  }
  return [...low, ...high];
}

function calibration(partial: Partial<PlannerCalibration> | undefined): PlannerCalibration {
  const cal = { ...DEFAULT_CALIBRATION, ...partial };
  for (const [key, v] of Object.entries(cal)) {
    // the overheads may be zero (an idealised machine); speeds, bandwidths and fractions must be positive
    const min = ['efficiency', 'linkBytesPerS', 'loopbackBytesPerS', 'memoryFraction', 'agentCores'].includes(key) ? Number.MIN_VALUE : 0;
    if (!Number.isFinite(v) || v < min) throw new RangeError(`calibration.${key} must be a ${min === 0 ? 'non-negative' : 'positive'} number, got ${v}`);
  }
  if (cal.efficiency > 1 || cal.memoryFraction > 1) throw new RangeError('calibration.efficiency and memoryFraction must be at most 1');
  return Object.freeze(cal);
}

function validate(req: PlanRequest): void {
  const ints: Array<[string, number]> = [
    ...Object.entries(req.model).map(([k, v]) => [`model.${k}`, v] as [string, number]),
    ['training.batchSize', req.training.batchSize], ['training.microBatches', req.training.microBatches], ['training.seqLen', req.training.seqLen],
  ];
  for (const [name, v] of ints) if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${v}`);
  if (req.model.nEmbd % req.model.nHead !== 0) throw new RangeError(`model.nEmbd ${req.model.nEmbd} must be a multiple of nHead ${req.model.nHead}`);
}

function fmtBytes(b: number): string {
  if (b >= 1e9) return `${(b / 1e9).toFixed(2)} GB`;
  if (b >= 1e6) return `${(b / 1e6).toFixed(1)} MB`;
  return `${(b / 1e3).toFixed(1)} kB`;
}

const fmtMs = (ms: number): string => (ms >= 10 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`);
