/**
 * Model-version lineage: what a registered version was made from. coordinator/jobs/completion.ts writes it into lineage.json when a
 * job succeeds (the job, its spec and final metrics, the coordinator's code version, the dataset by digest, and
 * the parent version it started from); `GET /api/models/:name/versions/:v/lineage` walks it back through parents.
 */
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { isVersionRef } from '../../protocol/model-version.ts';
import { CoordinatorError } from '../errors.ts';
import type { Lineage, ModelRegistry } from '../registry/registry.ts';
import type { RunRecord } from '../store/run-store.ts';

/** The data a version was trained on: the corpus, and the sha256 of the prepared index.json and tokenizer.json. */
export interface LineageData {
  corpus: string;
  index: string | null;
  tokenizer: string | null;
}

export interface LineageLink {
  name: string;
  version: number;
  jobId: string | null;
  codeVersion: string | null;
  data: LineageData | null;
  metrics: Record<string, number>;
  parent: { name: string; version: number } | null;
}

/** Parents followed at most this deep: a chain longer than this is cut (and says so) rather than walked forever. */
const MAX_CHAIN = 100;

/**
 * The version a job starts from, from `spec.init.from` when the spec has one (another part of the spec adds it;
 * read here defensively): "name@v3", "name@3", "name:3", "name" (its latest version now), or {name, version}.
 * Undefined when there is none or it names nothing registered.
 */
export function parentOf(spec: ResolvedJobSpec, registry: Pick<ModelRegistry, 'models'>): { name: string; version: number } | undefined {
  const from = (spec as { init?: { from?: unknown } }).init?.from;
  let name: string | undefined, version: unknown;
  if (typeof from === 'string') {
    const m = /^([^@:]+)(?:[@:]v?(\d+|latest))?$/.exec(from);
    if (!m) return undefined;
    [name, version] = [m[1], m[2]];
  } else if (from && typeof from === 'object') {
    ({ name, version } = from as { name?: string; version?: unknown });
  }
  if (typeof name !== 'string') return undefined;
  const n = typeof version === 'number' ? version : typeof version === 'string' && /^v?\d+$/.test(version) ? Number(version.replace(/^v/, '')) : undefined;
  if (n !== undefined) return Number.isInteger(n) && n > 0 ? { name, version: n } : undefined;
  const latest = registry.models().find((m) => m.name === name)?.latest;
  return latest === undefined ? undefined : { name, version: latest };
}

/** The lineage.json of a version a job registers. */
export function jobLineage(o: {
  jobId: string;
  spec: ResolvedJobSpec;
  metrics: Record<string, number>;
  attempt: number;
  run: RunRecord | undefined;
  parent: { name: string; version: number } | undefined;
}): Lineage {
  const files = o.run?.data?.files;
  const data: LineageData = { corpus: o.spec.data.corpus, index: files?.['index.json'] ?? null, tokenizer: files?.['tokenizer.json'] ?? null };
  return {
    jobId: o.jobId,
    spec: o.spec,
    metrics: o.metrics,
    attempt: o.attempt,
    codeVersion: o.run?.codeVersion ?? 'unknown',
    data,
    ...(o.parent ? { parent: o.parent } : {}),
  };
}

/** The chain from `name` v`version` back through its parents, the version itself first. */
export function lineageChain(registry: Pick<ModelRegistry, 'get'>, name: string, version: number): { chain: LineageLink[]; truncated: boolean } {
  const chain: LineageLink[] = [];
  const seen = new Set<string>();
  let at: { name: string; version: number } | null = { name, version };
  while (at && chain.length < MAX_CHAIN) {
    const key = `${at.name}@${at.version}`;
    if (seen.has(key)) break; // a cycle can only come from hand-edited records; stop rather than loop
    seen.add(key);
    let lineage: Lineage;
    try {
      lineage = registry.get(at.name, at.version).lineage;
    } catch (err) {
      // The version asked for must exist; a parent that was removed ends the chain where it is.
      if (chain.length === 0 || !(err instanceof CoordinatorError) || err.code !== 'CRD_ERR_NOT_FOUND') throw err;
      break;
    }
    const parent = isVersionRef(lineage.parent) ? { name: lineage.parent.name, version: lineage.parent.version } : null;
    chain.push({
      name: at.name,
      version: at.version,
      jobId: typeof lineage.jobId === 'string' ? lineage.jobId : null,
      codeVersion: typeof lineage.codeVersion === 'string' ? lineage.codeVersion : null,
      data: (lineage.data as LineageData | undefined) ?? null,
      metrics: lineage.metrics ?? {},
      parent,
    });
    at = parent;
  }
  return { chain, truncated: at !== null && chain.length >= MAX_CHAIN };
}
