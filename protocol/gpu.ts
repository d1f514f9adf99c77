/**
 * How a GPU an agent reports (protocol/control.ts Capabilities.gpu) reads in a log line or a table: what it is, what
 * Dawn drives it through, and its binding limit (the largest tensor one kernel can read).
 */
import type { CapabilitiesInfo } from './control.ts';

export type GpuReport = NonNullable<CapabilitiesInfo['gpu']>;

export function describeGpu(g: GpuReport): string {
  const name = [g.vendor, g.description || g.architecture].filter(Boolean).join(' ') || 'unknown adapter';
  return `${name} (${g.dawnBackend}${g.software ? ', software' : ''}, binding limit ${(g.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB)`;
}
