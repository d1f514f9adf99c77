/**
 * Named deployments: a name clients pass as `model` that the gateway routes to registry model versions — a primary,
 * optional A/B arms and optional shadows (what a deployment is and how a body is checked: deployment-spec.ts) — and
 * that an operator switches, promotes and rolls back at run time (admin.ts, `/admin/deployments`), or that its
 * rollout policy promotes and rolls back by itself (rollout.ts). This file is the DeploymentManager that does it.
 *
 * Weights: each arm has an explicit weight in [0, 1]; the arms sum to ≤ 1 and the primary gets the rest,
 * 1 − Σ arm weights (a deployment without arms sends everything to its primary). Requests are split by
 * `createAbSplit` (ab-assign.ts), sticky on the deployment's sticky header (default `x-meshtrain-key`) or, without
 * it, the OpenAI `user` field; requests with neither get a random arm by weight.
 *
 * Switches are atomic: `put` and `rollback` load every version the new deployment needs first (through the injected
 * `VersionResolver`), then replace one frozen routing table by reference. A request picks its backend from the
 * table once, so it never sees half a change and finishes on the version it started with. Loaded backends are kept
 * (cached by `model@vN`) until the gateway closes, so a rollback to the previous primary loads nothing.
 * Changes are serialised and each one appends an audit entry (memory, and a JSONL file when configured).
 *
 * Shadows (shadow.ts): the primary arm's backend is wrapped in a MirroringBackend that offers a `percent` of its
 * requests to one ShadowMirror per shadow version. A mirror lives as long as its (deployment, primary, shadow)
 * triple: a switch that keeps both keeps its statistics and its SPRT; a new primary starts them afresh.
 *
 * Rollout (rollout.ts), executed here: when a shadow's SPRT says promote and `autoPromote` is on, the shadow becomes
 * the primary ('auto-promote'). After any change of primary other than a rollback, a guard (when configured)
 * watches the new primary for a window — its error rate and p99 generation time, and its divergence from the
 * previous primary, which is mirrored as a shadow meanwhile — and rolls it back ('auto-rollback') when a
 * threshold is crossed; a window that ends quietly is recorded ('guard-passed').
 *
 * Long: one class, because every change (put, promote, rollback, the rollout's automatic ones, a guard window's
 * end) is serialised against the one routing table it replaces; split, the ordering would be spread over files.
 */
import { appendFileSync } from 'node:fs';
import { createAbSplit, type AbSplit } from './ab-assign.ts';
import { GatewayError } from './errors.ts';
import type { InferenceBackend } from './inference-backend.ts';
import { GuardWindow, guardDecision } from './rollout.ts';
import { DEFAULT_SHADOW_SETTINGS, MirroringBackend, ShadowMirror, type MirrorEvents, type ShadowMirrorSnapshot, type ShadowSettings } from './shadow.ts';
import type { SprtState } from './sprt.ts';
import { badDeployment as bad, parseDeployment, versionLabel, type ArmRef, type DeployedVersion, type Deployment } from './deployment-spec.ts';

/** Builds (loads) the backend serving one registry version; throws when the version does not exist or load. */
export type VersionResolver = (model: string, version: number) => Promise<InferenceBackend>;

/**
 * put: a change by an operator (API, CLI, start-up file); promote: a shadow or arm made primary by an operator;
 * rollback: back to the previous primary by an operator; auto-promote: by the rollout's SPRT; auto-rollback: by the
 * guard; guard-passed: a new primary's guard window ended without a threshold crossed (routing unchanged but for
 * the previous primary's guard shadow).
 */
export type AuditAction = 'put' | 'promote' | 'rollback' | 'auto-promote' | 'auto-rollback' | 'guard-passed';

export interface AuditEntry {
  at: string; // ISO time
  who: string; // the admin key's short sha256 id, 'startup-file', or 'rollout' for automatic actions
  deployment: string;
  action: AuditAction;
  old: Deployment | null;
  new: Deployment;
  reason: string;
}

/** One arm of a routing table: its version label, share and backend. */
export interface RouteArm {
  readonly version: string;
  readonly weight: number;
  readonly backend: InferenceBackend;
}

/** A new primary under watch: since when, what it has done, and the previous primary mirrored as a shadow. */
interface Watch {
  readonly window: GuardWindow;
  readonly previous: DeployedVersion;
  readonly mirror: ShadowMirror | undefined;
}

interface Routed {
  readonly deployment: Deployment;
  readonly split: AbSplit<RouteArm>;
  /** Previous primaries, most recent last: what rollback goes back to. */
  readonly history: readonly DeployedVersion[];
  /** One per shadow, in the deployment's order. */
  readonly mirrors: readonly ShadowMirror[];
  readonly watch: Watch | undefined;
}

/** Where the manager reports, set by the gateway (metrics, batching): see createGateway. */
export interface DeploymentHooks {
  /** Every backend loaded for a version, once, before it serves (batching settings, the priority gate). */
  prepare?(backend: InferenceBackend, version: string): void;
  onCompared?(deployment: string, version: string, ...args: Parameters<NonNullable<MirrorEvents['onCompared']>>): void;
  onDropped?(deployment: string, version: string, reason: Parameters<NonNullable<MirrorEvents['onDropped']>>[0]): void;
  onQueue?(deployment: string, version: string, depth: number): void;
  onDecision?(deployment: string, version: string, state: SprtState): void;
  /** Every audit entry, as it is recorded. */
  onAudit?(entry: AuditEntry): void;
}

export interface DeploymentManagerOptions {
  resolve: VersionResolver;
  /** Append every audit entry to this JSONL file. */
  auditLogPath?: string;
  /** Names that are already served models: a deployment may not shadow them. */
  reserved?: (name: string) => boolean;
  /** Shadow queues and concurrency (per shadow version). */
  shadow?: ShadowSettings;
  /** How often the rollback guards are evaluated, ms (default 250). */
  guardIntervalMs?: number;
  now?: () => Date;
}

/** What GET /admin/deployments/NAME/comparison serves. */
export interface ComparisonReport {
  deployment: string;
  primary: string;
  shadows: Array<ShadowMirrorSnapshot & { percent: number }>;
  /** The new primary's guard, while one is watching. */
  guard: null | { since: string; previous: string; windowS: number; requests: number; errors: number; p99Ms: number | null; previousAsShadow: ShadowMirrorSnapshot | null };
}

const AUTOMATIC = 'rollout';

export class DeploymentManager {
  /** The routing table: replaced whole, never mutated, so a reader sees one consistent state. */
  #table: ReadonlyMap<string, Routed> = new Map();
  readonly #backends = new Map<string, Promise<InferenceBackend>>();
  readonly #audit = new Map<string, AuditEntry[]>();
  #queue: Promise<unknown> = Promise.resolve();
  readonly #opts: DeploymentManagerOptions;
  #hooks: DeploymentHooks = {};
  readonly #prepared = new WeakSet<InferenceBackend>();
  #guardTimer: NodeJS.Timeout | undefined;

  constructor(opts: DeploymentManagerOptions) {
    this.#opts = opts;
  }

  /** The gateway's hooks; backends already loaded are prepared now. */
  setHooks(hooks: DeploymentHooks): void {
    this.#hooks = hooks;
    for (const [label, p] of this.#backends) void p.then((b) => this.#prepare(b, label), () => undefined);
  }

  has(name: string): boolean {
    return this.#table.has(name);
  }

  list(): Deployment[] {
    return [...this.#table.values()].map((r) => r.deployment).sort((a, b) => a.name.localeCompare(b.name));
  }

  get(name: string): { deployment: Deployment; rollbackTo: DeployedVersion | null } | undefined {
    const r = this.#table.get(name);
    return r && { deployment: r.deployment, rollbackTo: r.history.at(-1) ?? null };
  }

  audit(name: string): readonly AuditEntry[] {
    return this.#audit.get(name) ?? [];
  }

  /** The shadows' comparisons with the primary, their SPRT decisions, and the guard when one is watching. */
  comparison(name: string): ComparisonReport | undefined {
    const r = this.#table.get(name);
    if (!r) return undefined;
    const w = r.watch;
    const nowMs = this.#now().getTime();
    const seen = w?.window.observe(nowMs, null);
    return {
      deployment: name,
      primary: versionLabel(r.deployment.primary),
      shadows: r.mirrors.map((m, i) => ({ ...m.snapshot(), percent: r.deployment.shadows[i]!.percent })),
      guard: w && seen
        ? {
          since: new Date(w.window.startedMs).toISOString(),
          previous: versionLabel(w.previous),
          windowS: r.deployment.rollout.guard!.windowS,
          requests: seen.requests,
          errors: seen.errors,
          p99Ms: seen.p99Ms,
          previousAsShadow: w.mirror?.snapshot() ?? null,
        }
        : null,
    };
  }

  /** The primary's backend (what /v1/models describes the deployment by). */
  primaryBackend(name: string): InferenceBackend | undefined {
    return this.#table.get(name)?.split.arms[0]?.backend;
  }

  /** The arm serving a request with this sticky key (read from the header the deployment names, or `user`). */
  route(name: string, keyOf: (stickyHeader: string) => string | undefined): RouteArm | undefined {
    const r = this.#table.get(name);
    return r?.split.assign(keyOf(r.deployment.stickyHeader));
  }

  /** Validates, loads every version, then swaps the table. Throws GW_ERR_BAD_DEPLOYMENT (400) when a version fails. */
  put(raw: Deployment, who: string, reason: string): Promise<Deployment> {
    return this.#serial(async () => {
      if (this.#opts.reserved?.(raw.name)) throw bad(`'${raw.name}' is a served model's name; a deployment needs a name of its own`);
      const old = this.#table.get(raw.name);
      const newPrimary = old !== undefined && versionLabel(old.deployment.primary) !== versionLabel(raw.primary);
      const history = newPrimary ? [...old.history, old.deployment.primary] : old?.history ?? [];
      await this.#install(raw, history, newPrimary ? { startWatch: old.deployment.primary } : {});
      this.#record({ who, deployment: raw.name, action: 'put', old: old?.deployment ?? null, new: raw, reason });
      return raw;
    });
  }

  /**
   * Makes `version` (one of the deployment's shadows or arms) the primary; the old primary goes into the rollback
   * history, and is mirrored as a shadow while the guard (if configured) watches. `auto` marks the rollout's own.
   */
  promote(name: string, version: string, who: string, reason: string, auto = false): Promise<Deployment> {
    return this.#serial(async () => {
      const old = this.#table.get(name);
      if (!old) throw new GatewayError('GW_ERR_DEPLOYMENT_NOT_FOUND', `no deployment '${name}'`);
      const d = old.deployment;
      const candidates = [...d.shadows, ...d.arms].map(versionLabel);
      if (!candidates.includes(version)) {
        throw new GatewayError('GW_ERR_BAD_DEPLOYMENT', `${version} is not a shadow or an arm of '${name}' (${candidates.join(', ') || 'it has none'}); promote one of those, or PUT a new primary`);
      }
      const target = [...d.shadows, ...d.arms].find((x) => versionLabel(x) === version)!;
      const next: Deployment = {
        ...d,
        primary: { model: target.model, version: target.version },
        arms: d.arms.filter((a) => versionLabel(a) !== version),
        shadows: d.shadows.filter((s) => versionLabel(s) !== version),
      };
      await this.#install(next, [...old.history, d.primary], { startWatch: d.primary });
      this.#record({ who, deployment: name, action: auto ? 'auto-promote' : 'promote', old: d, new: next, reason });
      return next;
    });
  }

  /** Primary back to the previous primary, arms dropped (all traffic to it). Its backend is still loaded. */
  rollback(name: string, who: string, reason: string, auto = false): Promise<Deployment> {
    return this.#serial(async () => {
      const old = this.#table.get(name);
      if (!old) throw new GatewayError('GW_ERR_DEPLOYMENT_NOT_FOUND', `no deployment '${name}'`);
      const previous = old.history.at(-1);
      if (!previous) throw new GatewayError('GW_ERR_NO_ROLLBACK', `deployment '${name}' has had only one primary (${versionLabel(old.deployment.primary)}); there is nothing to roll back to`);
      const next: Deployment = { ...old.deployment, primary: previous, arms: [], shadows: old.deployment.shadows.filter((s) => versionLabel(s) !== versionLabel(previous)) };
      await this.#install(next, old.history.slice(0, -1), { endWatch: true });
      this.#record({ who, deployment: name, action: auto ? 'auto-rollback' : 'rollback', old: old.deployment, new: next, reason });
      return next;
    });
  }

  /**
   * Evaluates every guard now (the timer calls it every guardIntervalMs): rolls back a new primary that crossed a
   * threshold, ends the watch of one whose window is over. Resolves when the actions it started are done.
   */
  async checkGuards(): Promise<void> {
    const nowMs = this.#now().getTime();
    const actions: Array<Promise<unknown>> = [];
    for (const [name, r] of this.#table) {
      const guard = r.deployment.rollout.guard;
      if (!r.watch || !guard) continue;
      const watched = r;
      const action = guardDecision(guard, r.watch.window.observe(nowMs, r.watch.mirror?.snapshot().comparison ?? null));
      if (action.kind === 'rollback') {
        const reason = `guard: ${action.reason} within ${guard.windowS} s of ${versionLabel(r.deployment.primary)} becoming primary`;
        actions.push(this.#ifCurrent(name, watched, () => this.rollback(name, AUTOMATIC, reason, true)));
      } else if (action.kind === 'window-over') {
        actions.push(this.#ifCurrent(name, watched, () => this.#serial(async () => {
          if (this.#table.get(name) !== watched) return;
          await this.#install(watched.deployment, watched.history, { endWatch: true });
          const reason = `guard: no threshold crossed in the ${guard.windowS} s after ${versionLabel(watched.deployment.primary)} became primary`;
          this.#record({ who: AUTOMATIC, deployment: name, action: 'guard-passed', old: watched.deployment, new: watched.deployment, reason });
        })));
      }
    }
    await Promise.allSettled(actions);
  }

  /** Every backend loaded for deployments, closed (the gateway's close); mirrors and guards stop. */
  async close(): Promise<void> {
    clearInterval(this.#guardTimer);
    this.#guardTimer = undefined;
    for (const r of this.#table.values()) for (const m of mirrorsOf(r)) m.close();
    const loaded = await Promise.allSettled(this.#backends.values());
    await Promise.all(loaded.map((r) => (r.status === 'fulfilled' ? r.value.close?.() : undefined)));
  }

  /** Runs fn only while the deployment is still the one that was judged (a change since makes the action moot). */
  async #ifCurrent(name: string, judged: Routed, fn: () => Promise<unknown>): Promise<void> {
    if (this.#table.get(name) !== judged) return;
    try {
      await fn();
    } catch {
      // Another change came first (nothing to roll back to any more, say): the guard's next look decides again.
    }
  }

  /**
   * Loads every version `d` needs, builds its routing entry and swaps it in. `startWatch` (the previous primary) is
   * given when the primary changes other than by rollback: with a guard configured, a watch starts and mirrors it.
   * A change that keeps the primary keeps its watch, unless `endWatch`.
   */
  async #install(d: Deployment, history: readonly DeployedVersion[], change: { startWatch?: DeployedVersion; endWatch?: boolean }): Promise<void> {
    const guard = d.rollout.guard;
    const previous = change.startWatch;
    const watchPrevious = previous !== undefined && guard !== null;
    const refs = [d.primary, ...d.arms];
    const [backends, shadowBackends, previousBackend] = await Promise.all([
      Promise.all(refs.map((ref) => this.#load(ref))),
      Promise.all(d.shadows.map((ref) => this.#load(ref))),
      watchPrevious ? this.#load(previous) : undefined,
    ]);
    const old = this.#table.get(d.name);
    const primaryLabel = versionLabel(d.primary);
    // A mirror keeps its statistics while its primary stays the same.
    const reuse = old && versionLabel(old.deployment.primary) === primaryLabel ? new Map(old.mirrors.map((m) => [m.version, m])) : new Map<string, ShadowMirror>();
    const mirrors = d.shadows.map((ref, i) => reuse.get(versionLabel(ref)) ?? this.#mirror(d, versionLabel(ref), shadowBackends[i]!));
    const watch: Watch | undefined = watchPrevious
      ? { window: new GuardWindow(this.#now().getTime()), previous: previous!, mirror: guard!.maxDivergence !== null && guard!.shadowPercent > 0 ? this.#mirror(d, versionLabel(previous!), previousBackend!) : undefined }
      : !change.endWatch && guard !== null && old && versionLabel(old.deployment.primary) === primaryLabel ? old.watch : undefined;
    let primary = backends[0]!;
    const shadows = [...mirrors.map((mirror, i) => ({ mirror, percent: d.shadows[i]!.percent })), ...(watch?.mirror ? [{ mirror: watch.mirror, percent: guard!.shadowPercent }] : [])];
    if (shadows.length > 0 || watch) {
      primary = new MirroringBackend(primary, { shadows, ...(watch ? { onOutcome: (ok, ms) => watch.window.record(ok, ms) } : {}) });
    }
    const armWeight = d.arms.reduce((s, a) => s + a.weight, 0);
    const arms: RouteArm[] = refs.map((ref, i) => ({ version: versionLabel(ref), weight: i === 0 ? Math.max(0, 1 - armWeight) : (ref as ArmRef).weight, backend: i === 0 ? primary : backends[i]! }));
    let split: AbSplit<RouteArm>;
    try {
      split = createAbSplit({ arms, salt: d.name });
    } catch (err) {
      throw bad(`${(err as Error).message}`);
    }
    const entry: Routed = Object.freeze({ deployment: freeze(d), split, history: Object.freeze([...history]), mirrors: Object.freeze(mirrors), watch });
    const table = new Map(this.#table);
    table.set(d.name, entry);
    this.#table = table; // the switch: one reference
    // Mirrors the new entry no longer uses stop (their queued work is dropped, counted as 'closed').
    if (old) {
      const kept = new Set(mirrorsOf(entry));
      for (const m of mirrorsOf(old)) if (!kept.has(m)) m.close();
    }
    if (watch && !this.#guardTimer) {
      this.#guardTimer = setInterval(() => void this.checkGuards(), this.#opts.guardIntervalMs ?? 250);
      this.#guardTimer.unref();
    }
  }

  #mirror(d: Deployment, version: string, backend: InferenceBackend): ShadowMirror {
    const name = d.name;
    const hooks = () => this.#hooks;
    return new ShadowMirror(version, backend, {
      settings: this.#opts.shadow ?? DEFAULT_SHADOW_SETTINGS,
      rollout: d.rollout,
      events: {
        onCompared: (result, snapshot) => hooks().onCompared?.(name, version, result, snapshot),
        onDropped: (reason) => hooks().onDropped?.(name, version, reason),
        onQueue: (depth) => hooks().onQueue?.(name, version, depth),
        onDecision: (state) => {
          hooks().onDecision?.(name, version, state);
          const r = this.#table.get(name);
          if (state.decision !== 'accept-h1' || !r?.deployment.rollout.autoPromote || !r.mirrors.some((m) => m.version === version)) return;
          const reason = `SPRT: ${state.successes}/${state.n} mirrored requests succeeded (${r.deployment.rollout.success.metric}); llr ${state.llr.toFixed(2)} ≥ ${state.upper.toFixed(2)}`;
          void this.#ifCurrent(name, r, () => this.promote(name, version, AUTOMATIC, reason, true));
        },
      },
    });
  }

  #load(ref: DeployedVersion): Promise<InferenceBackend> {
    const label = versionLabel(ref);
    let p = this.#backends.get(label);
    if (!p) {
      p = this.#opts.resolve(ref.model, ref.version).then((b) => {
        this.#prepare(b, label);
        return b;
      });
      this.#backends.set(label, p);
      p.catch(() => this.#backends.delete(label)); // a failed load is retried next time
    }
    return p.catch((err: unknown) => {
      throw new GatewayError('GW_ERR_BAD_DEPLOYMENT', `${label} cannot be served: ${(err as Error).message}`, { cause: err });
    });
  }

  #prepare(backend: InferenceBackend, label: string): void {
    if (!this.#hooks.prepare || this.#prepared.has(backend)) return;
    this.#prepared.add(backend);
    this.#hooks.prepare(backend, label);
  }

  #now(): Date {
    return this.#opts.now?.() ?? new Date();
  }

  #record(e: Omit<AuditEntry, 'at'>): void {
    const entry: AuditEntry = { at: this.#now().toISOString(), ...e };
    const list = this.#audit.get(e.deployment) ?? [];
    list.push(entry);
    this.#audit.set(e.deployment, list);
    if (this.#opts.auditLogPath) appendFileSync(this.#opts.auditLogPath, JSON.stringify(entry) + '\n');
    this.#hooks.onAudit?.(entry);
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }
}

function mirrorsOf(r: Routed): ShadowMirror[] {
  return [...r.mirrors, ...(r.watch?.mirror ? [r.watch.mirror] : [])];
}

function freeze(d: Deployment): Deployment {
  return Object.freeze({
    ...d,
    primary: Object.freeze({ ...d.primary }),
    arms: Object.freeze(d.arms.map((a) => Object.freeze({ ...a }))),
    shadows: Object.freeze(d.shadows.map((s) => Object.freeze({ ...s }))),
  });
}

/** `--deployments FILE`: a JSON array of deployments ({name, primary, arms?, shadows?, stickyHeader?, rollout?}), installed at start. */
export async function loadDeploymentsFile(manager: DeploymentManager, text: string, where: string): Promise<void> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new GatewayError('GW_ERR_BAD_ARGS', `${where} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  if (!Array.isArray(doc)) throw new GatewayError('GW_ERR_BAD_ARGS', `${where} must hold a JSON array of deployments`);
  for (const [i, entry] of doc.entries()) {
    const name = (entry as { name?: unknown } | null)?.name;
    try {
      if (typeof name !== 'string') throw bad('each deployment needs a "name"');
      const { deployment, reason } = parseDeployment(name, entry, { requireReason: false });
      await manager.put(deployment, 'startup-file', reason);
    } catch (err) {
      throw new GatewayError('GW_ERR_BAD_ARGS', `${where}[${i}]: ${(err as Error).message}`, { cause: err });
    }
  }
}
