/**
 * Named deployments: a name clients pass as `model` that the gateway routes to registry model versions — a primary
 * and optional A/B arms — and that an operator switches and rolls back at run time (admin.ts, `/admin/deployments`).
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
 */
import { appendFileSync } from 'node:fs';
import { createAbSplit, type AbSplit } from './ab-assign.ts';
import { GatewayError } from './errors.ts';
import type { InferenceBackend } from './inference-backend.ts';

/** Header clients put their sticky key in unless a deployment names another. */
export const DEFAULT_STICKY_HEADER = 'x-meshtrain-key';

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const HEADER = /^[a-z0-9][a-z0-9-]{0,63}$/;

export interface VersionRef {
  readonly model: string;
  readonly version: number;
}

export interface ArmRef extends VersionRef {
  /** Share of the deployment's traffic in [0, 1]; the primary gets 1 − Σ arm weights. */
  readonly weight: number;
}

export interface Deployment {
  readonly name: string;
  readonly primary: VersionRef;
  readonly arms: readonly ArmRef[];
  /** Lower-case header holding the sticky key; the OpenAI `user` field is used when it is absent. */
  readonly stickyHeader: string;
}

/** Builds (loads) the backend serving one registry version; throws when the version does not exist or load. */
export type VersionResolver = (model: string, version: number) => Promise<InferenceBackend>;

export interface AuditEntry {
  at: string; // ISO time
  who: string; // the admin key's short sha256 id, or 'startup-file'
  deployment: string;
  action: 'put' | 'rollback';
  old: Deployment | null;
  new: Deployment;
  reason: string;
}

/** `model@vN`: how a version is named in headers, metrics and the CLI. */
export const versionLabel = (v: VersionRef): string => `${v.model}@v${v.version}`;

const bad = (message: string) => new GatewayError('GW_ERR_BAD_DEPLOYMENT', message);

function parseVersionRef(raw: unknown, where: string): VersionRef {
  if (typeof raw !== 'object' || raw === null) throw bad(`${where} must be an object {model, version}`);
  const { model, version } = raw as Record<string, unknown>;
  if (typeof model !== 'string' || !NAME.test(model)) throw bad(`${where}.model must be a model name (${NAME}), got ${JSON.stringify(model)}`);
  if (typeof version !== 'number' || !Number.isInteger(version) || version < 1) throw bad(`${where}.version must be an integer ≥ 1, got ${JSON.stringify(version)}`);
  return { model, version };
}

/**
 * Turns a PUT body or a start-up file entry into a Deployment (shape only: whether the versions load is checked by
 * the manager). `name` comes from the URL; a body `name` must match it. Returns the reason too (required, non-empty).
 */
export function parseDeployment(name: string, raw: unknown, opts: { requireReason: boolean }): { deployment: Deployment; reason: string } {
  if (!NAME.test(name)) throw bad(`deployment name must match ${NAME}, got ${JSON.stringify(name.slice(0, 80))}`);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('the body must be a JSON object {primary, arms?, stickyHeader?, reason}');
  const body = raw as Record<string, unknown>;
  for (const key of Object.keys(body)) {
    if (!['name', 'primary', 'arms', 'stickyHeader', 'reason'].includes(key)) throw bad(`unknown field '${key}'; allowed: name, primary, arms, stickyHeader, reason`);
  }
  if (body.name !== undefined && body.name !== name) throw bad(`body name '${String(body.name)}' differs from the URL's '${name}'`);
  const reason = body.reason;
  if (reason !== undefined && (typeof reason !== 'string' || reason.trim() === '')) throw bad('reason must be a non-empty string');
  if (opts.requireReason && reason === undefined) throw bad('reason is required: say why this change is made (it goes in the audit log)');
  const primary = parseVersionRef(body.primary, 'primary');
  if (body.arms !== undefined && !Array.isArray(body.arms)) throw bad('arms must be an array of {model, version, weight}');
  const seen = new Set([versionLabel(primary)]);
  let total = 0;
  const arms = ((body.arms as unknown[] | undefined) ?? []).map((a, i): ArmRef => {
    const ref = parseVersionRef(a, `arms[${i}]`);
    const weight = (a as Record<string, unknown>).weight;
    if (typeof weight !== 'number' || !(weight >= 0 && weight <= 1)) throw bad(`arms[${i}].weight must be a number in [0, 1], got ${JSON.stringify(weight)}`);
    if (seen.has(versionLabel(ref))) throw bad(`arms[${i}]: ${versionLabel(ref)} appears twice (as the primary or another arm)`);
    seen.add(versionLabel(ref));
    total += weight;
    return { ...ref, weight };
  });
  if (total > 1 + 1e-9) throw bad(`arm weights sum to ${total}; they must sum to ≤ 1 (the primary gets 1 − the sum)`);
  const sticky = body.stickyHeader ?? DEFAULT_STICKY_HEADER;
  if (typeof sticky !== 'string' || !HEADER.test(sticky.toLowerCase())) throw bad(`stickyHeader must be a header name, got ${JSON.stringify(sticky)}`);
  const deployment: Deployment = { name, primary, arms, stickyHeader: sticky.toLowerCase() };
  return { deployment, reason: typeof reason === 'string' ? reason : 'startup-file' };
}

/** One arm of a routing table: its version label, share and backend. */
export interface RouteArm {
  readonly version: string;
  readonly weight: number;
  readonly backend: InferenceBackend;
}

interface Routed {
  readonly deployment: Deployment;
  readonly split: AbSplit<RouteArm>;
  /** Previous primaries, most recent last: what rollback goes back to. */
  readonly history: readonly VersionRef[];
}

export interface DeploymentManagerOptions {
  resolve: VersionResolver;
  /** Append every audit entry to this JSONL file. */
  auditLogPath?: string;
  /** Names that are already served models: a deployment may not shadow them. */
  reserved?: (name: string) => boolean;
  now?: () => Date;
}

export class DeploymentManager {
  /** The routing table: replaced whole, never mutated, so a reader sees one consistent state. */
  #table: ReadonlyMap<string, Routed> = new Map();
  readonly #backends = new Map<string, Promise<InferenceBackend>>();
  readonly #audit = new Map<string, AuditEntry[]>();
  #queue: Promise<unknown> = Promise.resolve();
  readonly #opts: DeploymentManagerOptions;

  constructor(opts: DeploymentManagerOptions) {
    this.#opts = opts;
  }

  has(name: string): boolean {
    return this.#table.has(name);
  }

  list(): Deployment[] {
    return [...this.#table.values()].map((r) => r.deployment).sort((a, b) => a.name.localeCompare(b.name));
  }

  get(name: string): { deployment: Deployment; rollbackTo: VersionRef | null } | undefined {
    const r = this.#table.get(name);
    return r && { deployment: r.deployment, rollbackTo: r.history.at(-1) ?? null };
  }

  audit(name: string): readonly AuditEntry[] {
    return this.#audit.get(name) ?? [];
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
      const history = old && versionLabel(old.deployment.primary) !== versionLabel(raw.primary) ? [...old.history, old.deployment.primary] : old?.history ?? [];
      await this.#install(raw, history);
      this.#record({ who, deployment: raw.name, action: 'put', old: old?.deployment ?? null, new: raw, reason });
      return raw;
    });
  }

  /** Primary back to the previous primary, arms dropped (all traffic to it). Its backend is still loaded. */
  rollback(name: string, who: string, reason: string): Promise<Deployment> {
    return this.#serial(async () => {
      const old = this.#table.get(name);
      if (!old) throw new GatewayError('GW_ERR_DEPLOYMENT_NOT_FOUND', `no deployment '${name}'`);
      const previous = old.history.at(-1);
      if (!previous) throw new GatewayError('GW_ERR_NO_ROLLBACK', `deployment '${name}' has had only one primary (${versionLabel(old.deployment.primary)}); there is nothing to roll back to`);
      const next: Deployment = { ...old.deployment, primary: previous, arms: [] };
      await this.#install(next, old.history.slice(0, -1));
      this.#record({ who, deployment: name, action: 'rollback', old: old.deployment, new: next, reason });
      return next;
    });
  }

  /** Every backend loaded for deployments, closed (the gateway's close). */
  async close(): Promise<void> {
    const loaded = await Promise.allSettled(this.#backends.values());
    await Promise.all(loaded.map((r) => (r.status === 'fulfilled' ? r.value.close?.() : undefined)));
  }

  async #install(d: Deployment, history: readonly VersionRef[]): Promise<void> {
    const refs = [d.primary, ...d.arms];
    const backends = await Promise.all(refs.map((ref) => this.#load(ref)));
    const armWeight = d.arms.reduce((s, a) => s + a.weight, 0);
    const arms: RouteArm[] = refs.map((ref, i) => ({ version: versionLabel(ref), weight: i === 0 ? Math.max(0, 1 - armWeight) : (ref as ArmRef).weight, backend: backends[i]! }));
    let split: AbSplit<RouteArm>;
    try {
      split = createAbSplit({ arms, salt: d.name });
    } catch (err) {
      throw bad(`${(err as Error).message}`);
    }
    const table = new Map(this.#table);
    table.set(d.name, Object.freeze({ deployment: freeze(d), split, history: Object.freeze([...history]) }));
    this.#table = table; // the switch: one reference
  }

  #load(ref: VersionRef): Promise<InferenceBackend> {
    const label = versionLabel(ref);
    let p = this.#backends.get(label);
    if (!p) {
      p = this.#opts.resolve(ref.model, ref.version);
      this.#backends.set(label, p);
      p.catch(() => this.#backends.delete(label)); // a failed load is retried next time
    }
    return p.catch((err: unknown) => {
      throw new GatewayError('GW_ERR_BAD_DEPLOYMENT', `${label} cannot be served: ${(err as Error).message}`, { cause: err });
    });
  }

  #record(e: Omit<AuditEntry, 'at'>): void {
    const entry: AuditEntry = { at: (this.#opts.now?.() ?? new Date()).toISOString(), ...e };
    const list = this.#audit.get(e.deployment) ?? [];
    list.push(entry);
    this.#audit.set(e.deployment, list);
    if (this.#opts.auditLogPath) appendFileSync(this.#opts.auditLogPath, JSON.stringify(entry) + '\n');
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }
}

function freeze(d: Deployment): Deployment {
  return Object.freeze({ ...d, primary: Object.freeze({ ...d.primary }), arms: Object.freeze(d.arms.map((a) => Object.freeze({ ...a }))) });
}

/** `--deployments FILE`: a JSON array of deployments ({name, primary, arms?, stickyHeader?}), installed at start. */
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
