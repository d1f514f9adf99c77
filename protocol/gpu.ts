/**
 * How a GPU an agent reports (protocol/control.ts Capabilities.gpu) reads in a log line or a table: what it is, what
 * Dawn drives it through, and its binding limit (the largest tensor one kernel can read).
 */
import type { CapabilitiesInfo } from './control.ts';

export type GpuReport = NonNullable<CapabilitiesInfo['gpu']>;

/** The adapter and how it is driven, e.g. `NVIDIA RTX 4090 (vulkan)`, `… Mesa 22.3.6 (opengl, software)`. */
export function adapterName(g: Pick<GpuReport, 'vendor' | 'description' | 'architecture' | 'dawnBackend' | 'software'>): string {
  const name = [g.vendor, g.description || g.architecture].filter(Boolean).join(' ') || 'unknown adapter';
  return `${name} (${g.dawnBackend}${g.software ? ', software' : ''})`;
}

/** adapterName with the binding limit: `… (vulkan, binding limit 2048 MiB)`. */
export function describeGpu(g: GpuReport): string {
  return `${adapterName(g).slice(0, -1)}, binding limit ${(g.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB)`;
}
