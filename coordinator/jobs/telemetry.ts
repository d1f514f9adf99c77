/**
 * What a running job looks like right now, from every rank's own report of each step (job.rank): the step-time
 * breakdown per agent, each data-parallel link's bandwidth, the layout with who holds what, and the straggler —
 * the agent everyone else waits for. `AttemptTelemetry` keeps a short window of reports per rank; the decisions
 * (`findStraggler`, `meanBreakdown`) are pure functions of it, tested with tables.
 */
import type { JobRankReport } from '../../protocol/control.ts';
import { coordsOf, type ParallelLayout } from '../../protocol/layout.ts';

/** Reports kept per rank: enough to smooth one noisy step, few enough to notice a change within seconds. */
export const WINDOW_STEPS = 8;
/** A rank is a straggler when its compute per layer is this many times the median of its peers'. */
export const STRAGGLER_RATIO = 1.5;
/** …and when at least this many steps of it have been seen (one slow first step is warm-up, not a straggler). */
export const STRAGGLER_MIN_STEPS = 3;

export interface Breakdown {
  stepMs: number;
  computeMs: number;
  allreduceMs: number;
  bubbleMs: number;
  waitMs: number;
}

export interface PlacementCell {
  rank: number;
  nodeId: string;
  nodeName: string;
  dp: number;
  pp: number;
  tp: number;
  layers: [number, number];
}

export interface RankLive extends Breakdown {
  rank: number;
  nodeId: string;
  nodeName: string;
  step: number;
}

export interface LinkLive {
  ring: 'data';
  fromRank: number;
  toRank: number;
  fromNode: string;
  toNode: string;
  fromName: string;
  toName: string;
  bytes: number; // sent over the link in the last step's gradient all-reduce
  ms: number;
  gbps: number; // bytes / time: for a ring all-reduce this is NCCL's bus bandwidth
}

export interface Straggler {
  rank: number;
  nodeId: string;
  nodeName: string;
  computeMs: number; // mean over the window
  medianComputeMs: number; // what its peers need for the same work (see findStraggler)
  ratio: number;
  reason: string;
}

/** The mean of each rank's mean over its window: the job's typical step, split into its parts. */
export function meanBreakdown(windows: ReadonlyArray<readonly Breakdown[]>): Breakdown | null {
  const means = windows.filter((w) => w.length > 0).map(meanOf);
  return means.length ? meanOf(means) : null;
}

function meanOf(rows: readonly Breakdown[]): Breakdown {
  const n = rows.length;
  const sum = (k: keyof Breakdown) => rows.reduce((a, r) => a + r[k], 0) / n;
  return { stepMs: sum('stepMs'), computeMs: sum('computeMs'), allreduceMs: sum('allreduceMs'), bubbleMs: sum('bubbleMs'), waitMs: sum('waitMs') };
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

export interface StragglerInput {
  rank: number;
  nodeId: string;
  nodeName: string;
  stage: number; // pipeline stage: ranks of one stage do the same work
  layers: number; // blocks this rank holds
  computeMs: readonly number[]; // its recent steps, oldest first
}

/** Without a peer doing the same work, only a rank this many times slower per layer than the rest is named. */
export const UNPAIRED_STRAGGLER_RATIO = 3;

/**
 * The rank everyone waits for, or null. A rank is compared with the median of the ranks that do the same work
 * (the other replicas and tensor shards of its pipeline stage) and named at STRAGGLER_RATIO times that or more.
 * A stage nobody else runs (a pure pipeline) can only be compared per layer with the other stages, and stages
 * differ by design (the first holds the embedding, the last the head), so it takes UNPAIRED_STRAGGLER_RATIO.
 * In a ring or a pipeline every peer waits for the slowest member at the next collective or receive, so one slow
 * agent costs the whole job its excess. The most extreme rank is named.
 */
export function findStraggler(ranks: readonly StragglerInput[]): Straggler | null {
  const seen = ranks.filter((r) => r.computeMs.length >= STRAGGLER_MIN_STEPS).map((r) => ({ r, mean: r.computeMs.reduce((a, b) => a + b, 0) / r.computeMs.length }));
  if (seen.length < 2) return null;
  let worst: Straggler | null = null;
  for (const { r, mean } of seen) {
    const peers = seen.filter((x) => x.r !== r && x.r.stage === r.stage);
    const paired = peers.length > 0;
    const typical = paired
      ? median(peers.map((x) => x.mean))
      : median(seen.filter((x) => x.r !== r).map((x) => x.mean / Math.max(1, x.r.layers))) * Math.max(1, r.layers);
    if (!(typical > 0)) continue;
    const ratio = mean / typical;
    if (ratio < (paired ? STRAGGLER_RATIO : UNPAIRED_STRAGGLER_RATIO) || (worst && ratio <= worst.ratio)) continue;
    worst = {
      rank: r.rank, nodeId: r.nodeId, nodeName: r.nodeName, computeMs: mean, medianComputeMs: typical, ratio,
      reason: `rank ${r.rank} (${r.nodeName}) computes ${mean.toFixed(0)} ms per step, ${ratio.toFixed(1)}× the ${typical.toFixed(0)} ms ` +
        `${paired ? 'the other ranks of its stage need' : 'its share of layers takes on the other stages'}; its peers wait for it at every collective`,
    };
  }
  return worst;
}

/** The reports of one attempt, as they arrive. */
export class AttemptTelemetry {
  readonly layout: ParallelLayout;
  readonly stages: ReadonlyArray<readonly [number, number]>;
  readonly #nodeOf: readonly string[]; // world rank → node id
  readonly #nameOf: (nodeId: string) => string;
  readonly #windows = new Map<number, JobRankReport[]>();

  constructor(layout: ParallelLayout, stages: ReadonlyArray<readonly [number, number]>, nodeOfRank: readonly string[], nameOf: (nodeId: string) => string) {
    this.layout = layout;
    this.stages = stages;
    this.#nodeOf = nodeOfRank;
    this.#nameOf = nameOf;
  }

  record(report: JobRankReport): void {
    const w = this.#windows.get(report.rank) ?? [];
    // A resumed step replaces nothing here: the window is recent history, and a replay is recent too.
    w.push(report);
    if (w.length > WINDOW_STEPS) w.shift();
    this.#windows.set(report.rank, w);
  }

  placement(): PlacementCell[] {
    return this.#nodeOf.map((nodeId, rank) => {
      const { dp, pp, tp } = coordsOf(rank, this.layout);
      const [a, b] = this.stages[pp] ?? [0, 0];
      return { rank, nodeId, nodeName: this.#nameOf(nodeId), dp, pp, tp, layers: [a, b] as [number, number] };
    });
  }

  ranks(): RankLive[] {
    return [...this.#windows.entries()].sort(([a], [b]) => a - b).map(([rank, w]) => {
      const r = w.at(-1)!;
      const nodeId = this.#nodeOf[rank] ?? '?';
      return { rank, nodeId, nodeName: this.#nameOf(nodeId), step: r.step, stepMs: r.stepMs, computeMs: r.computeMs, allreduceMs: r.allreduceMs, bubbleMs: r.bubbleMs, waitMs: r.waitMs };
    });
  }

  breakdown(): Breakdown | null {
    return meanBreakdown([...this.#windows.values()]);
  }

  links(): LinkLive[] {
    const out: LinkLive[] = [];
    for (const [rank, w] of [...this.#windows.entries()].sort(([a], [b]) => a - b)) {
      const link = w.at(-1)!.link;
      if (!link) continue;
      const fromNode = this.#nodeOf[rank] ?? '?', toNode = this.#nodeOf[link.toRank] ?? '?';
      out.push({
        ring: 'data', fromRank: rank, toRank: link.toRank, fromNode, toNode, fromName: this.#nameOf(fromNode), toName: this.#nameOf(toNode),
        bytes: link.bytes, ms: link.ms, gbps: link.ms > 0 ? link.bytes / (link.ms / 1000) / 1e9 : 0,
      });
    }
    return out;
  }

  /** The nodes with enough steps in the window to be judged, straggler or not. */
  judged(): string[] {
    return [...this.#windows.entries()].filter(([, w]) => w.length >= STRAGGLER_MIN_STEPS).map(([rank]) => this.#nodeOf[rank] ?? '?');
  }

  straggler(): Straggler | null {
    return findStraggler([...this.#windows.entries()].map(([rank, w]) => {
      const nodeId = this.#nodeOf[rank] ?? '?';
      const stage = coordsOf(rank, this.layout).pp;
      const [a, b] = this.stages[stage] ?? [0, 1];
      return { rank, nodeId, nodeName: this.#nameOf(nodeId), stage, layers: b - a, computeMs: w.map((r) => r.computeMs) };
    }));
  }
}
