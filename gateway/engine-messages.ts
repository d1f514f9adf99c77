/**
 * What the gateway's main thread (worker-engine.ts) and a model's engine worker (engine-worker.ts) say to each
 * other, and how an error crosses between them with its code.
 */
import type { BackendChoice } from '../model/compute/backend.ts';
import type { GPTConfig } from '../model/params.ts';
import type { LoraSpec } from '../model/lora.ts';
import { ModelError } from '../model/errors.ts';
import { GatewayError } from './errors.ts';

/** The worker's workerData: the weights (their buffer transferred), where to compute, which cache. */
export interface EngineInit {
  entry: string;
  backend: BackendChoice;
  config: GPTConfig;
  params: Float32Array;
  adapter?: { spec: LoraSpec; flat: Float32Array };
  engine?: 'paged' | 'tensor';
}

export interface ChunkMessage {
  ids: number[];
  allPositions: boolean;
  /** Handle of the prompt this chunk continues (taken over by the worker's engine). */
  from?: number;
}

export type ToEngine =
  | { op: 'prefill'; id: number; inputs: ChunkMessage[] }
  | { op: 'decode'; id: number; tokens: number[] }
  | { op: 'step'; id: number; tokens: number[]; inputs: ChunkMessage[] }
  | { op: 'arrange'; keep: number[]; add: number[] }
  | { op: 'release'; handle: number }
  | { op: 'clear' }
  | { op: 'close' };

/** The paged cache's figures, sent with every answer. */
export interface CacheStats {
  cacheBytes?: number;
  blocksInUse?: number;
}

export type FromEngine =
  | { op: 'ready'; backend: string; engine: 'paged' | 'tensor'; adapter?: string }
  | ({ op: 'prefilled'; id: number; outputs: Array<{ logits: Float32Array; prompt: number }> } & CacheStats)
  | ({ op: 'decoded'; id: number; logits: Float32Array } & CacheStats)
  | ({ op: 'stepped'; id: number; logits: Float32Array; outputs: Array<{ logits: Float32Array; prompt: number }> } & CacheStats)
  | ({ op: 'failed'; id: number } & ThreadFailure)
  | { op: 'closed' };

export interface ThreadFailure {
  error: string;
  code?: string;
  retryAfterS?: number;
}

/** What the worker posts about `err`. */
export function threadFailure(err: unknown): ThreadFailure {
  const e = err as { code?: unknown; retryAfterS?: unknown } | null | undefined;
  return {
    error: err instanceof Error ? err.message : String(err),
    ...(typeof e?.code === 'string' ? { code: e.code } : {}),
    ...(typeof e?.retryAfterS === 'number' ? { retryAfterS: e.retryAfterS } : {}),
  };
}

/** The error a failure re-creates on the main thread: a gateway or model error keeps its class and code. */
export function errorOfFailure(f: ThreadFailure): Error {
  if (GatewayError.isCode(f.code)) return new GatewayError(f.code, f.error, f.retryAfterS === undefined ? undefined : { retryAfterS: f.retryAfterS });
  if (ModelError.isCode(f.code)) return new ModelError(f.code, f.error);
  return new Error(`the model worker failed: ${f.error}`);
}
