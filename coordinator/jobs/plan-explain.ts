/**
 * The plan's explanation, in words for the job's page and GET /api/jobs/:id/plan: the layout chosen or pinned, its
 * predicted step time term by term, each agent's figures and where they came from, the stage bounds, a raised
 * micro-batch count, and what the runner-up lost on. Also the units the planner's messages are written in.
 */
import { layoutName } from '../../protocol/layout.ts';
import { bubbleFraction, WASM_HEAP_BYTES } from './cost-model.ts';
import type { Candidate, PlanContext } from './plan-request.ts';
import { slotsFor, speedKey } from './placement.ts';

/** The explanation of `c`, chosen (or pinned) over `runnerUp`. */
export function explain(ctx: PlanContext, c: Candidate, runnerUp: Candidate | undefined, pinned: boolean): string {
  const p = c.predicted;
  const n = c.layout.data * c.layout.pipeline * c.layout.tensor;
  const parts = [
    `${pinned ? 'Pinned' : 'Chose'} ${layoutName(c.layout)} (data × pipeline × tensor) on ${n} of ${ctx.agents.length} agent(s) with m = ${c.microBatches}: ` +
      `predicted ${fmtMs(p.stepMs)} per step (compute ${fmtMs(p.computeMs)} + bubble ${fmtMs(p.bubbleMs)}, of which tensor all-reduce ` +
      `${fmtMs(p.tensorCommMs)} and p2p ${fmtMs(p.pipelineCommMs)}; ${p.sharingMs > 0 ? `waiting for shared cores ${fmtMs(p.sharingMs)}; ` : ''}` +
      `data all-reduce ${fmtMs(p.dataAllreduceMs)}${dilocoNote(ctx)}; per-step overhead ${fmtMs(p.overheadMs)}; optimizer ${fmtMs(p.optimizerMs)}), ` +
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

/** How a DiLoCo job's data all-reduce is counted, for the explanation's data term. */
function dilocoNote(ctx: PlanContext): string {
  const d = ctx.training.diloco;
  const wire = ctx.training.gradientWire ?? 'f32';
  return d ? ` (DiLoCo: one ${wire} pseudo-gradient all-reduce per ${d.innerSteps} steps, spread over them)` : wire !== 'f32' ? ` (${wire} on the wire)` : '';
}

/** What the cost model used for each agent of a placement: its speed, its non-matmul costs and where they came from. */
function agentFigures(ctx: PlanContext, placement: readonly string[]): string {
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

export function fmtBytes(b: number): string {
  if (b >= 1e9) return `${(b / 1e9).toFixed(2)} GB`;
  if (b >= 1e6) return `${(b / 1e6).toFixed(1)} MB`;
  return `${(b / 1e3).toFixed(1)} kB`;
}

export const fmtMs = (ms: number): string => (ms >= 10 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`);
