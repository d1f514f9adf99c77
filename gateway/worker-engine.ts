/**
 * A serving engine in a worker thread (engine-worker.ts), seen from the gateway's main thread as the BatchEngine
 * the batch scheduler drives: prefill and decode are requests answered in order (logits come back as transferred
 * buffers, no copy), arrange, release and clear are sent without waiting (the worker runs them in order before the
 * next request). Prompts are handles to the worker's prompt caches. The scheduler, sampling, stop sequences,
 * priorities and backpressure stay on the main thread; only forward passes move, so the main thread's event loop
 * stays free while a step runs (what a GPT-2 prefill chunk would otherwise block for seconds).
 *
 * A worker that dies fails what was in flight and every later call with GW_ERR_INTERNAL, saying what to do.
 */
import { Worker } from 'node:worker_threads';
import { prepareBackendEnv, terminateComputeWorker, type BackendChoice } from '../model/compute/backend.ts';
import type { GPTConfig } from '../model/params.ts';
import type { LoraSpec } from '../model/lora.ts';
import type { BatchEngine, PrefillInput, PrefillOutput } from './batch-scheduler.ts';
import { errorOfFailure, type CacheStats, type ChunkMessage, type EngineInit, type FromEngine, type ToEngine } from './engine-messages.ts';
import { GatewayError } from './errors.ts';

const CLOSE_WAIT_MS = 5_000;

export interface WorkerEngineOptions {
  backend: BackendChoice;
  config: GPTConfig;
  /** The weights, flat; their buffer is transferred to the worker (copied first when it is a view of a larger one). */
  params: Float32Array;
  adapter?: { spec: LoraSpec; flat: Float32Array };
  engine?: 'paged' | 'tensor';
}

type Pending = { resolve: (m: FromEngine) => void; reject: (e: Error) => void };

export class WorkerEngine implements BatchEngine<number> {
  /** Starts the worker and resolves once it has loaded the model (rejects with what went wrong there). */
  static async start(opts: WorkerEngineOptions): Promise<WorkerEngine> {
    prepareBackendEnv(opts.backend);
    const own = (a: Float32Array) => (a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? a : a.slice());
    const params = own(opts.params);
    const adapter = opts.adapter && { spec: opts.adapter.spec, flat: own(opts.adapter.flat) };
    const init: EngineInit = {
      entry: new URL('./engine-worker.ts', import.meta.url).href,
      backend: opts.backend,
      config: opts.config,
      params,
      ...(adapter ? { adapter } : {}),
      ...(opts.engine ? { engine: opts.engine } : {}),
    };
    const worker = new Worker(new URL('../common/worker-boot.mjs', import.meta.url), {
      workerData: init,
      transferList: [params.buffer as ArrayBuffer, ...(adapter ? [adapter.flat.buffer as ArrayBuffer] : [])],
    });
    // Listeners are taken off one by one: removeAllListeners would also take Node's own off the worker.
    const listeners: { message?: (m: FromEngine) => void; error?: (e: Error) => void; exit?: (code: number) => void } = {};
    const ready = await new Promise<Extract<FromEngine, { op: 'ready' }>>((resolve, reject) => {
      const fail = (why: string) => reject(new GatewayError('GW_ERR_INTERNAL', `the model worker could not load the model: ${why}`));
      worker.on('message', (listeners.message = (m) => (m.op === 'ready' ? resolve(m) : fail(`it said ${m.op}`))));
      worker.on('error', (listeners.error = (err) => fail(err.message)));
      worker.on('exit', (listeners.exit = (code) => fail(`it exited (code ${code})`)));
    }).catch(async (err: unknown) => {
      await terminateComputeWorker(worker, opts.backend);
      throw err;
    }).finally(() => {
      worker.off('message', listeners.message!);
      worker.off('error', listeners.error!);
      worker.off('exit', listeners.exit!);
    });
    return new WorkerEngine(worker, opts, ready);
  }

  readonly logitsWidth: number;
  readonly config: GPTConfig;
  /** The compute backend the worker runs on (wasm, webgpu, …; with its GPU adapter) and the cache it serves with. */
  readonly computeBackend: string;
  readonly kind: 'paged' | 'tensor';
  /** One forward per iteration, where the worker's engine has it (the paged one). */
  readonly step?: BatchEngine<number>['step'];
  readonly #worker: Worker;
  readonly #choice: BackendChoice;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #dead: Error | undefined;
  #stats: CacheStats = {};
  #closed: Promise<void> | undefined;

  private constructor(worker: Worker, opts: WorkerEngineOptions, ready: Extract<FromEngine, { op: 'ready' }>) {
    this.#worker = worker;
    this.#choice = opts.backend;
    this.logitsWidth = opts.config.vocabSize;
    this.config = opts.config;
    this.computeBackend = ready.adapter ? `${ready.backend} on ${ready.adapter}` : ready.backend;
    this.kind = ready.engine;
    if (ready.engine === 'paged') this.step = (tokens, chunks) => this.#step(tokens, chunks);
    worker.on('message', (m: FromEngine) => this.#onMessage(m));
    worker.on('error', (err) => this.#die(`the model worker crashed: ${err.message}`));
    worker.on('exit', this.#onExit);
  }

  /** The paged cache's bytes and blocks in use, as of the last answer. */
  get stats(): CacheStats {
    return this.#stats;
  }

  async prefill(prompts: ReadonlyArray<PrefillInput<number>>): Promise<Array<PrefillOutput<number>>> {
    const m = await this.#request({ op: 'prefill', id: 0, inputs: prompts.map(chunkMessage) });
    if (m.op !== 'prefilled') throw new GatewayError('GW_ERR_INTERNAL', `the model worker answered ${m.op} to a prefill`);
    return m.outputs;
  }

  arrange(keep: readonly number[], add: readonly number[]): void {
    this.#send({ op: 'arrange', keep: [...keep], add: [...add] });
  }

  async #step(tokens: readonly number[], chunks: ReadonlyArray<PrefillInput<number>>): Promise<{ logits: Float32Array; outputs: Array<PrefillOutput<number>> }> {
    const m = await this.#request({ op: 'step', id: 0, tokens: [...tokens], inputs: chunks.map(chunkMessage) });
    if (m.op !== 'stepped') throw new GatewayError('GW_ERR_INTERNAL', `the model worker answered ${m.op} to a step`);
    return { logits: m.logits, outputs: m.outputs };
  }

  async decode(tokens: readonly number[]): Promise<Float32Array> {
    const m = await this.#request({ op: 'decode', id: 0, tokens: [...tokens] });
    if (m.op !== 'decoded') throw new GatewayError('GW_ERR_INTERNAL', `the model worker answered ${m.op} to a decode`);
    return m.logits;
  }

  release(prompt: number): void {
    this.#send({ op: 'release', handle: prompt });
  }

  clear(): void {
    this.#send({ op: 'clear' });
  }

  /** Frees the model on its thread and stops the thread (at most CLOSE_WAIT_MS for a step in flight to end). */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      if (!this.#dead) {
        const closed = new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, CLOSE_WAIT_MS);
          this.#worker.on('message', (m: FromEngine) => {
            if (m.op !== 'closed') return;
            clearTimeout(timer);
            resolve();
          });
        });
        this.#worker.postMessage({ op: 'close' } satisfies ToEngine);
        await closed;
      }
      this.#dead ??= new GatewayError('GW_ERR_SHUTTING_DOWN', 'the model is closed');
      this.#worker.off('exit', this.#onExit);
      await terminateComputeWorker(this.#worker, this.#choice);
    })();
    return this.#closed;
  }

  readonly #onExit = (code: number): void => this.#die(`the model worker exited (code ${code})`);

  #send(m: ToEngine): void {
    if (!this.#dead) this.#worker.postMessage(m);
  }

  #request(m: Extract<ToEngine, { id: number }>): Promise<FromEngine> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    return new Promise<FromEngine>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ ...m, id });
    });
  }

  #onMessage(m: FromEngine): void {
    if (m.op !== 'prefilled' && m.op !== 'decoded' && m.op !== 'stepped' && m.op !== 'failed') return;
    const p = this.#pending.get(m.id);
    if (!p) return;
    this.#pending.delete(m.id);
    if (m.op === 'failed') return p.reject(errorOfFailure(m));
    if (m.cacheBytes !== undefined) this.#stats = { cacheBytes: m.cacheBytes, blocksInUse: m.blocksInUse! };
    p.resolve(m);
  }

  #die(why: string): void {
    if (this.#dead) return;
    this.#dead = new GatewayError('GW_ERR_INTERNAL', `${why}; this model cannot serve until the gateway restarts (its log has the cause)`);
    for (const p of this.#pending.values()) p.reject(this.#dead);
    this.#pending.clear();
  }
}

const chunkMessage = (p: PrefillInput<number>): ChunkMessage => ({ ids: [...p.ids], allPositions: p.allPositions, ...(p.from === undefined ? {} : { from: p.from }) });
