/**
 * What the gateway's main thread (worker-engine.ts) and its compute thread (engine-worker.ts) say to each other,
 * and how an error crosses between them with its code. One compute thread serves every model version of a
 * gateway that computes on the same backend; each message names the engine (the version) it is for.
 */
import type { BackendChoice } from '../model/compute/backend.ts';
import type { GPTConfig } from '../model/params.ts';
import type { LoraSpec } from '../model/lora.ts';
import { ModelError } from '../model/errors.ts';
import { GatewayError } from './errors.ts';
import { errorOfThread, type ThreadFailure } from '../protocol/define-errors.ts';

/** The compute thread's workerData. */
export interface ComputeInit {
  entry: string;
  backend: BackendChoice;
}

/** A version to load: its weights (their buffer transferred), adapter, and which cache. */
export interface EngineLoad {
  config: GPTConfig;
  params: Float32Array;
  adapter?: { spec: LoraSpec; flat: Float32Array };
}

export interface ChunkMessage {
  ids: number[];
  allPositions: boolean;
  /** Handle of the prompt this chunk continues (taken over by the worker's engine). */
  from?: number;
}

export type ToEngine =
  | ({ op: 'load'; id: number; engine: number } & EngineLoad)
  | { op: 'unload'; id: number; engine: number }
  | { op: 'prefill'; id: number; engine: number; inputs: ChunkMessage[] }
  | { op: 'decode'; id: number; engine: number; tokens: number[] }
  | { op: 'step'; id: number; engine: number; tokens: number[]; inputs: ChunkMessage[] }
  | { op: 'arrange'; engine: number; keep: number[]; add: number[] }
  | { op: 'release'; engine: number; handle: number }
  | { op: 'clear'; engine: number }
  | { op: 'close' };

/** The paged cache's figures, sent with every answer. */
export interface CacheStats {
  cacheBytes?: number;
  blocksInUse?: number;
}

export type FromEngine =
  | { op: 'ready'; backend: string; adapter?: string }
  | { op: 'loaded'; id: number; kind: 'paged' | 'tensor' }
  | { op: 'unloaded'; id: number }
  | ({ op: 'prefilled'; id: number; outputs: Array<{ logits: Float32Array; prompt: number }> } & CacheStats)
  | ({ op: 'decoded'; id: number; logits: Float32Array } & CacheStats)
  | ({ op: 'stepped'; id: number; logits: Float32Array; outputs: Array<{ logits: Float32Array; prompt: number }> } & CacheStats)
  | ({ op: 'failed'; id: number } & ThreadFailure)
  | { op: 'closed' };

/** The error a failure re-creates on the main thread: a gateway or model error keeps its class, code and Retry-After. */
export function errorOfFailure(f: ThreadFailure): Error {
  return errorOfThread<Error>(f, [GatewayError, ModelError], ({ error }) => new Error(`the model worker failed: ${error}`));
}
