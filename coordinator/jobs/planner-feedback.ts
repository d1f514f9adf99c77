/**
 * What running jobs teach the planner about the agents: how much slower a straggler is than its peers, how far
 * measured step times are from the cost model's prediction (the refit, by speedKey), and the link bandwidth a
 * self-check measured. The runner feeds it; every plan (the scheduler's, and elastic.ts's reshape) sees the agents
 * through `plannerAgent`, with these measurements applied while they are fresh.
 */
import type { Logger } from '../../common/log.ts';
import type { SelfcheckReport } from '../cluster/selfcheck.ts';
import type { NodeRecord } from '../store/state-store.ts';
import type { Attempt, RunnerHub } from './attempt.ts';
import { agentProbe } from './cost-model.ts';
import { median } from './plan-report.ts';
import { speedKey, type PlannerCalibration } from './planner.ts';
import type { FreeAgent } from './scheduler.ts';

/** How long a straggler's measured slowdown is believed when it is not measured again. */
const SLOWDOWN_TTL_MS = 10 * 60_000;
/** How long a step-time refit of the cost model is believed (a machine's load changes; the probe stays). */
const REFIT_TTL_MS = 60 * 60_000;
/** Steps whose median refits the cost model: the most recent ones (a long job's history is not re-sorted each step). */
const REFIT_WINDOW = 16;

export class PlannerFeedback {
  readonly #hub: Pick<RunnerHub, 'availableNodes'>;
  readonly #now: () => number;
  #calibration: Partial<PlannerCalibration> = {};
  /** Nodes seen straggling: how many times slower than their peers, and when that was measured. */
  readonly #slowdowns = new Map<string, { factor: number; atMs: number }>();
  /** By speedKey (planner.ts): measured step time ÷ predicted, from the last attempt its agents ran (see refit). */
  readonly #refits = new Map<string, { factor: number; atMs: number }>();

  constructor(hub: Pick<RunnerHub, 'availableNodes'>, now: () => number) {
    this.#hub = hub;
    this.#now = now;
  }

  /** The link bandwidths measured so far, for the planner's calibration. */
  get calibration(): Partial<PlannerCalibration> {
    return this.#calibration;
  }

  /** Connected agents not in `busy`, as the planner sees them. */
  freeAgents(busy: ReadonlySet<string>): FreeAgent[] {
    return this.#hub.availableNodes().filter((n) => !busy.has(n.id)).map((n) => this.plannerAgent(n));
  }

  /** A node as the planner sees it: its capabilities, probe, refit and any slowdown measured lately. */
  plannerAgent(n: NodeRecord): FreeAgent {
    const probe = agentProbe(n.capabilities.probeMs, n.capabilities.matmulGflops);
    const refit = this.#refitOf(speedKeyOf(n));
    const seen = this.#slowdowns.get(n.id);
    const fresh = seen && this.#now() - seen.atMs < SLOWDOWN_TTL_MS;
    return {
      id: n.id,
      host: hostOf(n.peerAddress),
      cores: n.capabilities.cores,
      memoryBytes: n.capabilities.memoryBytes,
      matmulGflops: n.capabilities.matmulGflops,
      backend: n.capabilities.backend,
      ...(n.capabilities.gpu ? { maxBindingBytes: n.capabilities.gpu.maxStorageBufferBindingSize } : {}),
      ...(probe ? { probe } : {}),
      ...(refit !== undefined ? { refit } : {}),
      firstSeenMs: n.firstSeenMs,
      ...(fresh ? { slowdown: seen.factor } : {}),
    };
  }

  /** The refits an attempt on `nodeIds` is predicted with, by speedKey (1 where none): the base its own refit builds on. */
  refitBase(nodeIds: readonly string[]): Map<string, number> {
    return new Map(this.#hub.availableNodes().filter((n) => nodeIds.includes(n.id)).map((n) => [speedKeyOf(n), this.#refitOf(speedKeyOf(n)) ?? 1]));
  }

  /**
   * The planner's costs refitted from what it measures: once an attempt has run three steps past its first, the
   * median of them over the prediction becomes the refit of its agents' speedKeys (on top of the refit it was
   * predicted with, each update at most ×2 or ÷2, the whole within ×4 or ÷4), and later plans scale those agents'
   * compute by it. Agents of one host and backend are alike, so what one job measured rates them all.
   */
  refit(a: Attempt, stepMs: number): void {
    if (!a.warmedUp) {
      a.warmedUp = true;
      return;
    }
    a.stepTimes.push(stepMs);
    if (a.stepTimes.length > REFIT_WINDOW) a.stepTimes.shift();
    if (a.stepTimes.length < 3 || !(a.predictedStepMs > 0)) return;
    const ratio = Math.min(2, Math.max(0.5, median(a.stepTimes)! / a.predictedStepMs));
    for (const [key, base] of a.refitBase) this.#refits.set(key, { factor: Math.min(4, Math.max(0.25, base * ratio)), atMs: this.#now() });
  }

  /**
   * A straggler named by an attempt's telemetry is remembered as that many times slower, so the planner gives it
   * less work or leaves it out; its peers, judged and not named, are forgotten as stragglers.
   */
  noteSlowdowns(attempt: Attempt): void {
    const t = attempt.telemetry;
    if (!t) return;
    const straggler = t.straggler();
    for (const id of t.judged()) if (id !== straggler?.nodeId) this.#slowdowns.delete(id);
    if (straggler) this.#slowdowns.set(straggler.nodeId, { factor: straggler.ratio, atMs: this.#now() });
  }

  /**
   * Link bandwidth measured by a self-check (its best all-reduce bus bandwidth, which is what each ring link
   * carried) replaces the planner's default for links of that kind: loopback when every agent of the ring shares a
   * host, else between hosts.
   */
  observeSelfcheck(report: SelfcheckReport, log: Logger): void {
    const best = Math.max(0, ...report.cases.filter((c) => c.ok && c.op === 'allreduce' && c.busbwGbps !== null).map((c) => c.busbwGbps!));
    if (!(best > 0)) return;
    const hosts = new Set(report.ring.map((m) => hostOf(this.#hub.availableNodes().find((n) => n.id === m.nodeId)?.peerAddress ?? m.nodeId)));
    const key = hosts.size <= 1 ? 'loopbackBytesPerS' : 'linkBytesPerS';
    this.#calibration = { ...this.#calibration, [key]: best * 1e9 };
    log.info(`planner: ${key === 'loopbackBytesPerS' ? 'loopback' : 'inter-host'} links measured at ${best} GB/s by the self-check`);
  }

  #refitOf(key: string): number | undefined {
    const r = this.#refits.get(key);
    return r && this.#now() - r.atMs < REFIT_TTL_MS ? r.factor : undefined;
  }
}

/** The host part of an agent's peer address (ws://host:port): agents on one host share its cores and loopback. */
function hostOf(peerAddress: string): string {
  try {
    return new URL(peerAddress).hostname;
  } catch {
    return peerAddress;
  }
}

/** The planner's speedKey of a node, from its record. */
function speedKeyOf(n: NodeRecord): string {
  return speedKey({ id: n.id, host: hostOf(n.peerAddress), backend: n.capabilities.backend });
}
