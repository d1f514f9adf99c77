/**
 * What a named deployment is, as an operator writes it (admin API bodies, `gateway deploy`, the start-up file): a
 * primary version, A/B arms with weights, shadows with a mirrored percentage, the sticky header and the rollout
 * settings; and `parseDeployment`, which checks a body's shape and says exactly what is wrong. Whether the versions
 * load, and everything that happens at run time, is deployments.ts's DeploymentManager.
 */
import { GatewayError } from './errors.ts';
import { parseRollout, type RolloutConfig } from './rollout.ts';

/** Header clients put their sticky key in unless a deployment names another. */
export const DEFAULT_STICKY_HEADER = 'x-meshtrain-key';

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const HEADER = /^[a-z0-9][a-z0-9-]{0,63}$/;

/**
 * A version a deployment routes to, as the admin API's bodies name it: `{model, version}`, `model` as in OpenAI's
 * requests. Not protocol/model-version.ts's VersionRef (`{name, version}`), which is the registry's.
 */
export interface DeployedVersion {
  readonly model: string;
  readonly version: number;
}

export interface ArmRef extends DeployedVersion {
  /** Share of the deployment's traffic in [0, 1]; the primary gets 1 − Σ arm weights. */
  readonly weight: number;
}

export interface ShadowRef extends DeployedVersion {
  /** Percentage (0–100) of the primary's requests mirrored to this version. */
  readonly percent: number;
}

export interface Deployment {
  readonly name: string;
  readonly primary: DeployedVersion;
  readonly arms: readonly ArmRef[];
  /** Versions that get copies of the primary's requests; their answers are compared, never returned. */
  readonly shadows: readonly ShadowRef[];
  /** Lower-case header holding the sticky key; the OpenAI `user` field is used when it is absent. */
  readonly stickyHeader: string;
  /** Promotion test, auto-promotion and the rollback guard (rollout.ts); defaults when the body has none. */
  readonly rollout: RolloutConfig;
}

/** `model@vN`: how a version is named in headers, metrics and the CLI. */
export const versionLabel = (v: DeployedVersion): string => `${v.model}@v${v.version}`;

/** The error every refused deployment change raises (400 at the admin API). */
export const badDeployment = (message: string) => new GatewayError('GW_ERR_BAD_DEPLOYMENT', message);
const bad = badDeployment;

function parseVersionRef(raw: unknown, where: string): DeployedVersion {
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
  const allowed = ['name', 'primary', 'arms', 'shadows', 'stickyHeader', 'rollout', 'reason'];
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) throw bad(`unknown field '${key}'; allowed: ${allowed.join(', ')}`);
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
  if (body.shadows !== undefined && !Array.isArray(body.shadows)) throw bad('shadows must be an array of {model, version, percent}');
  const shadows = ((body.shadows as unknown[] | undefined) ?? []).map((a, i): ShadowRef => {
    const ref = parseVersionRef(a, `shadows[${i}]`);
    const percent = (a as Record<string, unknown>).percent ?? 100;
    if (typeof percent !== 'number' || !(percent >= 0 && percent <= 100)) throw bad(`shadows[${i}].percent must be a number in [0, 100], got ${JSON.stringify(percent)}`);
    if (seen.has(versionLabel(ref))) throw bad(`shadows[${i}]: ${versionLabel(ref)} is already the primary, an arm or another shadow`);
    seen.add(versionLabel(ref));
    return { ...ref, percent };
  });
  const sticky = body.stickyHeader ?? DEFAULT_STICKY_HEADER;
  if (typeof sticky !== 'string' || !HEADER.test(sticky.toLowerCase())) throw bad(`stickyHeader must be a header name, got ${JSON.stringify(sticky)}`);
  const rollout = parseRollout(body.rollout);
  const deployment: Deployment = { name, primary, arms, shadows, stickyHeader: sticky.toLowerCase(), rollout };
  return { deployment, reason: typeof reason === 'string' ? reason : 'startup-file' };
}
