/**
 * The main thread's handle on a job's compute worker (trainer-worker.ts): it starts the worker thread, sends one
 * request at a time and hands back the one answer it expects (messages.ts lists them), and meanwhile serves the
 * tensor-parallel all-reduces the worker asks for in the middle of a forward or backward.
 *
 * Why a class of its own: the worker can die at any moment (a crash, an exit, job.stop terminating it), and every
 * request in flight must then fail at once with the reason rather than hang. All of that bookkeeping — the pending
 * request, the first fatal error, the shared tensor-parallel buffer and its flag word — lives here, so the rank's
 * runner (job-runner.ts) and the step (step.ts) only `await worker.request(…)`.
 */
import { Worker } from 'node:worker_threads';
import { prepareBackendEnv, terminateComputeWorker, type BackendChoice } from '../../model/compute/backend.ts';
import type { Ring } from '../collectives/ring.ts';
import { AgentError } from '../errors.ts';
import { errorOf, type FromWorker, type Ready, type ToWorker } from './messages.ts';

/** The answer of kind `K`. */
export type Reply<K extends FromWorker['type']> = Extract<FromWorker, { type: K }>;

/** The compute worker: one request at a time, plus the tensor-parallel all-reduces it asks for meanwhile. */
export class TrainerWorker {
  readonly #worker: Worker;
  #pending: { expect: string; resolve(m: FromWorker): void; reject(e: Error): void } | null = null;
  #dead: Error | null = null;
  #exited: Promise<void>;
  #tp: { data: Float32Array; flag: Int32Array; ring: Ring } | null = null;
  #tpError: Error | null = null;

  readonly #backend: BackendChoice;

  constructor(backend: BackendChoice) {
    this.#backend = backend;
    prepareBackendEnv(backend);
    this.#worker = new Worker(new URL('../../common/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./trainer-worker.ts', import.meta.url).href, backend },
    });
    this.#exited = new Promise((resolve) => this.#worker.once('exit', () => resolve()));
    this.#worker.on('message', (m: FromWorker) => this.#onMessage(m));
    this.#worker.on('error', (err) => this.#fail(new AgentError('AGT_ERR_TRAINER', `trainer worker crashed: ${err.message}`)));
    this.#worker.on('exit', (code) => this.#fail(new AgentError('AGT_ERR_TRAINER', `trainer worker exited (code ${code})`)));
  }

  /** From now on, the worker's `tp` requests run on `ring` over the shared scratch buffer. */
  serveTensorParallel(ready: Ready, ring: Ring): void {
    this.#tp = { data: new Float32Array(ready.tpData), flag: new Int32Array(ready.tpFlag), ring };
  }

  /** Sends `msg` (transferring `transfer`) and resolves with the worker's answer, which must be of kind `expect`. */
  request<K extends FromWorker['type']>(msg: ToWorker, expect: K, transfer: ArrayBuffer[] = []): Promise<Reply<K>> {
    if (this.#dead) return Promise.reject(this.#dead);
    if (this.#pending) return Promise.reject(new AgentError('AGT_ERR_TRAINER', `trainer worker is busy with a ${this.#pending.expect} request`));
    return new Promise<Reply<K>>((resolve, reject) => {
      this.#pending = { expect, resolve: resolve as (m: FromWorker) => void, reject };
      this.#worker.postMessage(msg, transfer);
    });
  }

  /** Stops the worker now (a request in flight fails); resolves once its thread has exited. */
  terminate(): Promise<void> {
    this.#fail(new AgentError('AGT_ERR_STOPPED', 'trainer worker stopped'));
    void terminateComputeWorker(this.#worker, this.#backend);
    return this.#exited;
  }

  #onMessage(m: FromWorker): void {
    if (m.type === 'tp') return this.#allReduceForWorker(m.elems);
    const p = this.#pending;
    if (!p) return;
    // The worker's error keeps its code across the thread boundary (messages.ts errorOf).
    if (m.type === 'failed') return this.#settle(this.#tpError ?? errorOf(m));
    if (m.type !== p.expect) return this.#settle(new AgentError('AGT_ERR_TRAINER', `the worker answered ${m.type} to a request for ${p.expect}`));
    this.#pending = null;
    p.resolve(m);
  }

  #allReduceForWorker(elems: number): void {
    const tp = this.#tp;
    const wake = (value: 1 | 2) => {
      if (!tp) return;
      Atomics.store(tp.flag, 0, value);
      Atomics.notify(tp.flag, 0);
    };
    if (!tp || elems > tp.data.length) {
      this.#settle(new AgentError('AGT_ERR_TRAINER', `the worker asked for a tensor-parallel all-reduce of ${elems} floats it cannot have`));
      return wake(2);
    }
    tp.ring.allReduce(tp.data.subarray(0, elems)).then(
      () => wake(1),
      (err: Error) => {
        this.#tpError = err; // the worker fails its request with a generic message; this is the one worth reporting
        this.#settle(err);
        wake(2);
      },
    );
  }

  #settle(err: Error): void {
    const p = this.#pending;
    this.#pending = null;
    p?.reject(err);
  }

  #fail(err: Error): void {
    this.#dead ??= err;
    this.#settle(this.#dead);
  }
}
