/**
 * Serving engines on the gateway's compute thread (engine-worker.ts), seen from the main thread as the
 * BatchEngines the batch schedulers drive: prefill, decode and step are requests answered in order (logits come
 * back as transferred buffers, no copy), arrange, release and clear are sent without waiting (the thread runs them
 * in order before the next request). Prompts are handles to the thread's prompt caches. The schedulers, sampling,
 * stop sequences, priorities and backpressure stay on the main thread; only forward passes move, so the main
 * thread's event loop stays free while a step runs (what a GPT-2 prefill chunk would otherwise block for seconds).
 *
 * One compute thread per compute backend serves every version (ComputeThread, shared while some engine uses it):
 * versions' steps run one after another, never competing for the cores, and the compute backend (a GPU device,
 * the wasm runtime) is loaded once. A thread that dies fails what was in flight and every later call of its
 * engines with GW_ERR_INTERNAL, saying what to do; the next version loaded starts a new one.
 */
import { Worker } from 'node:worker_threads';
import { prepareBackendEnv, terminateComputeWorker, type BackendChoice } from '../model/compute/backend.ts';
import type { GPTConfig } from '../model/params.ts';
import type { LoraSpec } from '../model/lora.ts';
import type { BatchEngine, PrefillInput, PrefillOutput } from './batch-scheduler.ts';
import { errorOfFailure, type CacheStats, type ChunkMessage, type ComputeInit, type FromEngine, type ToEngine } from './engine-messages.ts';
import { GatewayError } from './errors.ts';

const CLOSE_WAIT_MS = 5_000;

type Pending = { resolve: (m: FromEngine) => void; reject: (e: Error) => void };
type Ready = Extract<FromEngine, { op: 'ready' }>;
type Request = ToEngine extends infer T ? (T extends { id: number } ? Omit<T, 'id'> : never) : never;

/** The compute thread of one backend choice, shared by the engines that use it. */
class ComputeThread {
  static readonly #threads = new Map<BackendChoice, ComputeThread>();

  /** The thread for `choice` (started now when there is none), with one more user. */
  static async acquire(choice: BackendChoice): Promise<ComputeThread> {
    let thread = ComputeThread.#threads.get(choice);
    if (!thread) {
      thread = new ComputeThread(choice);
      ComputeThread.#threads.set(choice, thread);
    }
    thread.#users++;
    try {
      await thread.ready;
    } catch (err) {
      thread.#users--;
      throw err;
    }
    return thread;
  }

  readonly ready: Promise<Ready>;
  readonly #choice: BackendChoice;
  readonly #worker: Worker;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #nextEngine = 1;
  #users = 0;
  #dead: Error | undefined;
  #onReady: ((m: Ready) => void) | undefined;
  #failReady: ((e: Error) => void) | undefined;

  private constructor(choice: BackendChoice) {
    this.#choice = choice;
    prepareBackendEnv(choice);
    const init: ComputeInit = { entry: new URL('./engine-worker.ts', import.meta.url).href, backend: choice };
    this.#worker = new Worker(new URL('../common/worker-boot.mjs', import.meta.url), { workerData: init });
    this.ready = new Promise<Ready>((resolve, reject) => {
      this.#onReady = resolve;
      this.#failReady = reject;
    });
    // Listeners stay on for the thread's life (removeAllListeners would also take Node's own off the worker).
    this.#worker.on('message', (m: FromEngine) => this.#onMessage(m));
    this.#worker.on('error', (err) => this.#die(`the compute thread crashed: ${err.message}`));
    this.#worker.on('exit', (code) => this.#die(`the compute thread exited (code ${code})`));
    this.ready.catch(() => {}); // a start that fails is reported through acquire
  }

  get dead(): Error | undefined {
    return this.#dead;
  }

  /** An id for a new engine on this thread. */
  engineId(): number {
    return this.#nextEngine++;
  }

  request(m: Request, transfer: ArrayBuffer[] = []): Promise<FromEngine> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    return new Promise<FromEngine>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ ...m, id }, transfer);
    });
  }

  send(m: ToEngine): void {
    if (!this.#dead) this.#worker.postMessage(m);
  }

  /** One user fewer; the last one stops the thread (at most CLOSE_WAIT_MS for what is in flight). */
  async release(): Promise<void> {
    if (--this.#users > 0) return;
    if (ComputeThread.#threads.get(this.#choice) === this) ComputeThread.#threads.delete(this.#choice);
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
    await terminateComputeWorker(this.#worker, this.#choice);
  }

  #onMessage(m: FromEngine): void {
    if (m.op === 'ready') return this.#onReady?.(m);
    if (m.op === 'closed') return;
    const p = this.#pending.get(m.id);
    if (!p) return;
    this.#pending.delete(m.id);
    if (m.op === 'failed') p.reject(errorOfFailure(m));
    else p.resolve(m);
  }

  #die(why: string): void {
    if (this.#dead) return;
    if (ComputeThread.#threads.get(this.#choice) === this) ComputeThread.#threads.delete(this.#choice); // the next load starts a new one
    this.#dead = new GatewayError('GW_ERR_INTERNAL', `${why}; the models it served cannot serve until the gateway restarts (its log has the cause)`);
    for (const p of this.#pending.values()) p.reject(this.#dead);
    this.#pending.clear();
    this.#failReady?.(new GatewayError('GW_ERR_INTERNAL', `the model worker could not load the model: ${why}`)); // before ready: acquire reports it
  }
}

export interface WorkerEngineOptions {
  backend: BackendChoice;
  config: GPTConfig;
  /** The weights, flat; their buffer is transferred to the thread (copied first when it is a view of a larger one). */
  params: Float32Array;
  adapter?: { spec: LoraSpec; flat: Float32Array };
}

export class WorkerEngine implements BatchEngine<number> {
  /** Loads the model on the compute thread (starting it if need be); rejects with what went wrong there. */
  static async start(opts: WorkerEngineOptions): Promise<WorkerEngine> {
    const own = (a: Float32Array) => (a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? a : a.slice());
    const params = own(opts.params);
    const adapter = opts.adapter && { spec: opts.adapter.spec, flat: own(opts.adapter.flat) };
    const thread = await ComputeThread.acquire(opts.backend);
    const ready = await thread.ready;
    const engine = thread.engineId();
    let loaded: FromEngine;
    try {
      loaded = await thread.request(
        { op: 'load', engine, config: opts.config, params, ...(adapter ? { adapter } : {}) },
        [params.buffer as ArrayBuffer, ...(adapter ? [adapter.flat.buffer as ArrayBuffer] : [])],
      );
      if (loaded.op !== 'loaded') throw new Error(`it answered ${loaded.op}`);
    } catch (err) {
      await thread.release();
      throw new GatewayError('GW_ERR_INTERNAL', `the model worker could not load the model: ${(err as Error).message}`);
    }
    return new WorkerEngine(thread, engine, opts.config, ready, loaded.kind);
  }

  readonly logitsWidth: number;
  readonly config: GPTConfig;
  /** The compute backend the thread runs on (wasm, webgpu, …; with its GPU adapter) and the cache it serves with. */
  readonly computeBackend: string;
  readonly kind: 'paged' | 'tensor';
  /** One forward per iteration, where the engine has it (the paged one). */
  readonly step?: BatchEngine<number>['step'];
  readonly #thread: ComputeThread;
  readonly #engine: number;
  #stats: CacheStats = {};
  #closed: Promise<void> | undefined;

  private constructor(thread: ComputeThread, engine: number, config: GPTConfig, ready: Ready, kind: 'paged' | 'tensor') {
    this.#thread = thread;
    this.#engine = engine;
    this.config = config;
    this.logitsWidth = config.vocabSize;
    this.computeBackend = ready.adapter ? `${ready.backend} on ${ready.adapter}` : ready.backend;
    this.kind = kind;
    if (kind === 'paged') this.step = (tokens, chunks) => this.#step(tokens, chunks);
  }

  /** The paged cache's bytes and blocks in use, as of the last answer. */
  get stats(): CacheStats {
    return this.#stats;
  }

  async prefill(prompts: ReadonlyArray<PrefillInput<number>>): Promise<Array<PrefillOutput<number>>> {
    const m = await this.#request({ op: 'prefill', engine: this.#engine, inputs: prompts.map(chunkMessage) });
    if (m.op !== 'prefilled') throw new GatewayError('GW_ERR_INTERNAL', `the model worker answered ${m.op} to a prefill`);
    return m.outputs;
  }

  arrange(keep: readonly number[], add: readonly number[]): void {
    this.#thread.send({ op: 'arrange', engine: this.#engine, keep: [...keep], add: [...add] });
  }

  async #step(tokens: readonly number[], chunks: ReadonlyArray<PrefillInput<number>>): Promise<{ logits: Float32Array; outputs: Array<PrefillOutput<number>> }> {
    const m = await this.#request({ op: 'step', engine: this.#engine, tokens: [...tokens], inputs: chunks.map(chunkMessage) });
    if (m.op !== 'stepped') throw new GatewayError('GW_ERR_INTERNAL', `the model worker answered ${m.op} to a step`);
    return { logits: m.logits, outputs: m.outputs };
  }

  async decode(tokens: readonly number[]): Promise<Float32Array> {
    const m = await this.#request({ op: 'decode', engine: this.#engine, tokens: [...tokens] });
    if (m.op !== 'decoded') throw new GatewayError('GW_ERR_INTERNAL', `the model worker answered ${m.op} to a decode`);
    return m.logits;
  }

  release(prompt: number): void {
    this.#thread.send({ op: 'release', engine: this.#engine, handle: prompt });
  }

  clear(): void {
    this.#thread.send({ op: 'clear', engine: this.#engine });
  }

  /** Frees the model on the compute thread; the thread stops when no engine uses it any more. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      await this.#thread.request({ op: 'unload', engine: this.#engine }).catch(() => {}); // a dead thread holds nothing
      await this.#thread.release();
    })();
    return this.#closed;
  }

  async #request(m: Request): Promise<FromEngine> {
    if (this.#closed) throw new GatewayError('GW_ERR_SHUTTING_DOWN', 'the model is closed');
    const answer = await this.#thread.request(m);
    if ('cacheBytes' in answer && answer.cacheBytes !== undefined) this.#stats = { cacheBytes: answer.cacheBytes, blocksInUse: answer.blocksInUse! };
    return answer;
  }
}

const chunkMessage = (p: PrefillInput<number>): ChunkMessage => ({ ids: [...p.ids], allPositions: p.allPositions, ...(p.from === undefined ? {} : { from: p.from }) });
