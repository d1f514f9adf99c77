/**
 * The compute backends a process that runs a model can be asked for (`--backend`), shared by the agent, the
 * gateway and the coordinator's workers; model/compute/backend.ts loads them.
 */
export const BACKENDS = ['auto', 'webgpu', 'webgpu-software', 'wasm', 'cpu', 'tensorflow', 'tensorflow-gpu'] as const;
export type BackendChoice = (typeof BACKENDS)[number];

export function isBackendChoice(s: string): s is BackendChoice {
  return (BACKENDS as readonly string[]).includes(s);
}
