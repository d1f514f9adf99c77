/**
 * The messages between a job's main-thread runner (job-runner.ts) and its compute worker (trainer-worker.ts).
 *
 * The worker owns TensorFlow.js, the GPT, AdamW, the TrainState and the data readers; the main thread owns the
 * network (the ring, the coordinator, the artifact store). At init the worker allocates the gradient buffer on a
 * SharedArrayBuffer and hands it over in `ready`: both threads then see the same float32 memory, so the ring
 * all-reduce runs in place on it with no copies.
 *
 * One request at a time, each answered once (or with `failed`):
 *
 *   main → worker            worker → main
 *   init                     ready {grads: SharedArrayBuffer, …}
 *   step {step}              reduce          (only with world > 1: the gradient is in the shared buffer)
 *     reduced                                (main has all-reduced the shared buffer in place: the SUM over ranks)
 *                            stepped {loss, tokens, computeMs, reduceMs, updateMs, lr, cursor}
 *   eval                     evaluated {loss, batches}
 *   export                   exported {step, cursor, model, optimizer}
 *   exportHf                 hf {files}
 *   (any request)            failed {error}
 *
 * Hand-off of the shared buffer: the worker writes the gradient, then posts `reduce` and does nothing until
 * `reduced` arrives; main only touches the buffer between those two messages. postMessage is the synchronisation
 * (the sender's writes happen before the receiver's handler runs), so no Atomics are needed.
 */
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';
import type { TensorMap } from '../../model/safetensors.ts';
import type { ShardCursor } from '../../model/token-shard-reader.ts';

export interface OptimizerSnapshot {
  step: number; // AdamW updates applied (bias correction)
  expAvg: TensorMap;
  expAvgSq: TensorMap;
}

export interface ResumeState {
  /** The weights by GPT-2 name (a checkpoint's model.safetensors). */
  model: TensorMap;
  optimizer: OptimizerSnapshot;
  /** Optimizer steps done: the next step run is step + 1. */
  step: number;
  /** Where the next global training batch starts. */
  cursor: ShardCursor;
}

export type ToWorker =
  | { type: 'init'; spec: ResolvedJobSpec; rank: number; world: number; dataDir: string; seed: number; resume?: ResumeState }
  | { type: 'step'; step: number }
  | { type: 'reduced' }
  | { type: 'eval' }
  | { type: 'export' }
  | { type: 'exportHf' };

export interface SteppedMsg {
  type: 'stepped';
  step: number;
  loss: number; // mean over this rank's micro-batches (not reduced)
  tokens: number; // this rank's tokens
  lr: number;
  gradNorm: number;
  computeMs: number; // forward + backward
  reduceMs: number; // inside reduceGrads, as the worker saw it
  updateMs: number; // clip + AdamW + upload
  cursor: ShardCursor; // where the next step reads
}

export type FromWorker =
  | { type: 'ready'; grads: SharedArrayBuffer; params: number; backend: string; step: number; cursor: ShardCursor }
  | { type: 'reduce' }
  | SteppedMsg
  | { type: 'evaluated'; loss: number; batches: number; skipped?: string } // skipped: why (loss NaN)
  | { type: 'exported'; step: number; cursor: ShardCursor; model: TensorMap; optimizer: OptimizerSnapshot }
  | { type: 'hf'; files: Record<string, Uint8Array> }
  | { type: 'failed'; error: string };
