/**
 * The gateway's compute thread: a worker that loads the compute backend once and holds the model versions the
 * gateway serves on it, each with its serving engine (paged-gpt.ts or batched-gpt.ts), for the batch schedulers on
 * the main thread (worker-engine.ts). Forward passes run here, so the main thread's event loop (HTTP, streams,
 * metrics, the coordinator announcement) never waits on one: a GPT-2 prefill chunk takes seconds on wasm. One
 * thread for every version means one version's step never competes with another's for the cores: a shadow's step
 * and the primary's run one after the other, and the priority gate (priority-gate.ts) decides which goes next.
 *
 * Messages are handled one at a time, in order (the next waits for the one before, awaits included): the
 * schedulers' arrange, release and clear need no answer, and a failure of one of them is reported with that
 * engine's next answer. Prompts cross as handles (numbers) to the engines' prompt caches here.
 * Started through common/worker-boot.mjs.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadBackend } from '../model/compute/backend.ts';
import { adapterName } from '../protocol/gpu.ts';
import { GPT } from '../model/gpt.ts';
import { attachLora } from '../model/lora.ts';
import type { BatchEngine, PrefillOutput } from './batch-scheduler.ts';
import { PagedGptEngine, servingEngine } from './paged-gpt.ts';
import { threadFailure } from '../protocol/define-errors.ts';
import type { ChunkMessage, ComputeInit, FromEngine, ToEngine } from './engine-messages.ts';

const port = parentPort!;
const init = workerData as ComputeInit;
const compute = await loadBackend(init.backend);

interface Loaded {
  model: GPT;
  engine: BatchEngine<unknown> & { dispose(): void }; // servingEngine's, seen through the interface the messages use
  deferred: unknown; // an arrange, release or clear that failed: reported with the next answer
}
const engines = new Map<number, Loaded>();
const prompts = new Map<number, unknown>();
let nextHandle = 1;

const handleOf = (prompt: unknown): number => {
  const h = nextHandle++;
  prompts.set(h, prompt);
  return h;
};
const promptOf = (h: number): unknown => {
  if (!prompts.has(h)) throw new RangeError(`engine worker: no prompt ${h}`);
  return prompts.get(h);
};
const engineOf = (id: number): Loaded => {
  const e = engines.get(id);
  if (!e) throw new RangeError(`engine worker: no engine ${id}`);
  return e;
};
const stats = (e: Loaded) => (e.engine instanceof PagedGptEngine ? { cacheBytes: e.engine.cacheBytes, blocksInUse: e.engine.blocksInUse } : {});
/**
 * Each buffer under these arrays once, for the transfer list: the engines' logits come from takeValues (an array of
 * their own) and the answers are views into it, so nothing is copied to send them.
 */
const buffersOf = (arrays: Float32Array[]): ArrayBuffer[] => [...new Set(arrays.map((a) => a.buffer as ArrayBuffer))];
const chunksOf = (inputs: ChunkMessage[]) => inputs.map((c) => ({ ids: c.ids, allPositions: c.allPositions, ...(c.from === undefined ? {} : { from: promptOf(c.from) }) }));
const outputsOf = (inputs: ChunkMessage[], outputs: Array<PrefillOutput<unknown>>) => {
  for (const c of inputs) if (c.from !== undefined) prompts.delete(c.from); // taken over by the engine
  return outputs.map((o) => ({ logits: o.logits, prompt: handleOf(o.prompt) }));
};

async function handle(m: ToEngine): Promise<void> {
  if (m.op === 'close') {
    for (const e of engines.values()) {
      e.engine.dispose();
      e.model.dispose();
    }
    engines.clear();
    compute.release();
    port.postMessage({ op: 'closed' } satisfies FromEngine);
    return;
  }
  if (m.op === 'arrange' || m.op === 'release' || m.op === 'clear') {
    const e = engines.get(m.engine);
    if (!e) return;
    try {
      if (m.op === 'arrange') e.engine.arrange(m.keep, m.add.map(promptOf));
      else if (m.op === 'release') {
        e.engine.release(promptOf(m.handle));
        prompts.delete(m.handle);
      } else e.engine.clear();
    } catch (err) {
      e.deferred ??= err;
    }
    return;
  }
  try {
    if (m.op === 'load') {
      const model = new GPT(m.config, { flat: m.params });
      try {
        if (m.adapter) attachLora(model, m.adapter.spec, m.adapter.flat);
        const engine = servingEngine(model);
        engines.set(m.engine, { model, engine: engine as BatchEngine<unknown> & { dispose(): void }, deferred: undefined });
        port.postMessage({ op: 'loaded', id: m.id, kind: engine instanceof PagedGptEngine ? 'paged' : 'tensor' } satisfies FromEngine);
      } catch (err) {
        model.dispose();
        throw err;
      }
      return;
    }
    const e = engineOf(m.engine);
    if (m.op === 'unload') {
      engines.delete(m.engine);
      e.engine.dispose();
      e.model.dispose();
      port.postMessage({ op: 'unloaded', id: m.id } satisfies FromEngine);
      return;
    }
    if (e.deferred !== undefined) {
      const err = e.deferred;
      e.deferred = undefined;
      throw err;
    }
    if (m.op === 'prefill') {
      const outputs = outputsOf(m.inputs, await e.engine.prefill(chunksOf(m.inputs)));
      port.postMessage({ op: 'prefilled', id: m.id, outputs, ...stats(e) } satisfies FromEngine, buffersOf(outputs.map((o) => o.logits)));
    } else if (m.op === 'step') {
      if (!e.engine.step) throw new RangeError('this engine has no step');
      const { logits, outputs: raw } = await e.engine.step(m.tokens, chunksOf(m.inputs));
      const outputs = outputsOf(m.inputs, raw);
      port.postMessage({ op: 'stepped', id: m.id, logits, outputs, ...stats(e) } satisfies FromEngine, buffersOf([logits, ...outputs.map((o) => o.logits)]));
    } else {
      const logits = await e.engine.decode(m.tokens);
      port.postMessage({ op: 'decoded', id: m.id, logits, ...stats(e) } satisfies FromEngine, buffersOf([logits]));
    }
  } catch (err) {
    port.postMessage({ op: 'failed', id: m.id, ...threadFailure(err) } satisfies FromEngine);
  }
}

let queue = Promise.resolve();
port.on('message', (m: ToEngine) => {
  queue = queue.then(() => handle(m));
});
port.postMessage({ op: 'ready', backend: compute.name, ...(compute.gpu ? { adapter: adapterName(compute.gpu) } : {}) } satisfies FromEngine);
