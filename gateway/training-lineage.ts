/**
 * How a served version's weights were trained, which decides its chat template (chat-templates.ts). A version a
 * job registered carries the job's spec in its lineage. A quantized version (`quantization`, `parent`) or an adapter
 * merged into its base (`merged`, `parent`) has no job of its own: its weights are its parent's, transformed, so it
 * was trained as its parent was. `withTrainingLineage` wraps a RegistrySource so that loading such a version follows
 * `parent` back through the registry — lineage files only, never weights — and puts the first lineage a job wrote
 * in `meta.training`.
 */
import { GatewayError } from './errors.ts';
import type { RegistrySource } from './registry-source.ts';

/** Parents followed at most: a longer chain (quantized of merged of …) is cut rather than walked forever. */
export const MAX_HOPS = 8;

type Ref = { name: string; version: number };
const isRef = (x: unknown): x is Ref => !!x && typeof x === 'object' && typeof (x as Ref).name === 'string' && Number.isInteger((x as Ref).version);

/** True for a version no job trained: its weights are its parent's, quantized or with an adapter merged in. */
export function isDerived(lineage: Record<string, unknown>): boolean {
  return lineage.spec === undefined && isRef(lineage.parent) && (lineage.quantization !== undefined || lineage.merged === true);
}

/** The lineage of the nearest version at or above `lineage` that a job trained (itself when it is not derived). */
export async function trainingLineage(source: Pick<RegistrySource, 'lineage'>, lineage: Record<string, unknown>): Promise<Record<string, unknown>> {
  let at = lineage;
  for (let hops = 0; isDerived(at) && hops < MAX_HOPS; hops++) {
    const parent = at.parent as Ref;
    at = await source.lineage(parent.name, parent.version);
  }
  return at;
}

/** `source`, with derived versions' `meta.training` filled in. A parent that cannot be read leaves it unset. */
export function withTrainingLineage(source: RegistrySource): RegistrySource {
  return {
    models: () => source.models(),
    lineage: (name, version) => source.lineage(name, version),
    async load(name, version) {
      const v = await source.load(name, version);
      if (!isDerived(v.meta.lineage)) return v;
      try {
        return { ...v, meta: { ...v.meta, training: await trainingLineage(source, v.meta.lineage) } };
      } catch (err) {
        if (err instanceof GatewayError && err.code === 'GW_ERR_REGISTRY') return v; // a removed parent: served, without a template
        throw err;
      }
    },
  };
}
