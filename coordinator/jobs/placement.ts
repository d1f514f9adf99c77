/**
 * Which agents a layout takes and where they go. Each agent is rated (a Slot): its speed with a core to itself, its
 * non-matmul costs, and its share of its host's cores while all of the job's agents there compute. Agents are taken
 * in agentOrder (greedy: the slowest chosen agent as fast as can be), cut into tensor-parallel groups that stay on
 * one host where they can, and laid onto (data, pipeline) grids two ways; candidate-cost.ts costs each grid.
 *
 * Agents measure matmulGflops on join, and agents started together measure together: sharing a host's cores, they
 * report less than the host gives one of them (four agents joining a 2-core host at once reported 10–23 GFLOP/s;
 * one alone 23–25). The planner therefore rates every agent of a host at the best any of them measured: they run
 * on the same cores (assumed: the same backend too), and sharing is what the cost model adds itself.
 */
import type { ParallelLayout } from '../../protocol/layout.ts';
import { slowdown, type ComputeProbe, type PlannerCalibration } from './cost-model.ts';
import type { PlanContext, PlannerAgent } from './plan-request.ts';

export interface Slot {
  agent: PlannerAgent;
  flopsPerS: number; // a training step's matmuls with a core to itself: its host's best matmulGflops × efficiency
  cal: PlannerCalibration; // the calibration with its speedKey's probe figures (the lowest of each) in place
  share: number; // 1 / slowdown with all of this job's agents on its host computing at once
  pace: number; // flopsPerS × share: its speed while all of the job's agents on its host compute
}
export type Grid = Slot[][][]; // [dp][pp][tp]

/**
 * Whose measurements rate an agent: agents computing on a host's cores with one backend share them, so the best
 * any of them measured (see the top of the file); a GPU agent computes on its own device: its own figure.
 */
export function speedKey(a: Pick<PlannerAgent, 'id' | 'host' | 'backend'>): string {
  return a.backend === 'webgpu' ? `gpu:${a.id}` : `${a.host}|${a.backend ?? ''}`;
}

/** Each speedKey's best matmulGflops: what any of its agents gets with a core to itself (see the top of the file). */
export function hostGflops(agents: readonly PlannerAgent[]): Map<string, number> {
  const best = new Map<string, number>();
  for (const a of agents) best.set(speedKey(a), Math.max(best.get(speedKey(a)) ?? 0, a.matmulGflops));
  return best;
}

/** Each speedKey's probe: the lowest of each figure its agents measured (agents that probed together slowed each other). */
export function hostProbes(agents: readonly PlannerAgent[]): Map<string, ComputeProbe> {
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

export function slotsFor(chosen: readonly PlannerAgent[], ctx: Pick<PlanContext, 'cal' | 'hostGflops' | 'hostProbes'>): Map<string, Slot> {
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
export function agentOrder(agents: readonly PlannerAgent[], ctx: Pick<PlanContext, 'cal' | 'hostGflops' | 'hostProbes'>): PlannerAgent[] {
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
export const compareIds = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** Tensor groups of t slots: whole groups from one host first (fastest first), the remainder across hosts. */
export function tensorGroups(slots: Slot[], t: number): Slot[][] {
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
export function agentSets(order: readonly PlannerAgent[], l: ParallelLayout): PlannerAgent[][] {
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
export function grids(groups: Slot[][], l: ParallelLayout): Grid[] {
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
