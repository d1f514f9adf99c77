/**
 * The model's thread: a worker that holds a version's weights on its compute backend and runs the serving engine
 * (paged-gpt.ts or batched-gpt.ts) for the batch scheduler on the gateway's main thread (worker-engine.ts). Forward
 * passes run here, so the main thread's event loop (HTTP, streams, metrics, the coordinator announcement) never
 * waits on one: a GPT-2 prefill chunk takes seconds on wasm.
 *
 * Messages are handled one at a time, in order (each handler is synchronous up to its one await, and the next
 * message waits for it): the scheduler's arrange, release and clear need no answer, and a failure of one of them is
 * reported with the next prefill or decode. Prompts cross as handles (numbers) to the engine's prompt caches here.
 * Started through common/worker-boot.mjs.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadBackend } from '../model/compute/backend.ts';
import { adapterName } from '../protocol/gpu.ts';
import { GPT } from '../model/gpt.ts';
import { attachLora } from '../model/lora.ts';
import type { BatchEngine, PrefillOutput } from './batch-scheduler.ts';
import { PagedGptEngine, servingEngine } from './paged-gpt.ts';
import { threadFailure, type ChunkMessage, type EngineInit, type FromEngine, type ToEngine } from './engine-messages.ts';

const port = parentPort!;
const init = workerData as EngineInit;

const compute = await loadBackend(init.backend);
const model = new GPT(init.config, { flat: init.params });
if (init.adapter) attachLora(model, init.adapter.spec, init.adapter.flat);
const served = servingEngine(model, init.engine);
const engine = served as BatchEngine<unknown> & { dispose(): void };
const prompts = new Map<number, unknown>();
let nextHandle = 1;
let deferred: unknown; // an arrange, release or clear that failed: reported with the next answer

const stats = () => (served instanceof PagedGptEngine ? { cacheBytes: served.cacheBytes, blocksInUse: served.blocksInUse } : {});
const handleOf = (prompt: unknown): number => {
  const h = nextHandle++;
  prompts.set(h, prompt);
  return h;
};
const promptOf = (h: number): unknown => {
  if (!prompts.has(h)) throw new RangeError(`engine worker: no prompt ${h}`);
  return prompts.get(h);
};

async function handle(m: ToEngine): Promise<void> {
  if (m.op === 'arrange' || m.op === 'release' || m.op === 'clear') {
    try {
      if (m.op === 'arrange') engine.arrange(m.keep, m.add.map(promptOf));
      else if (m.op === 'release') {
        engine.release(promptOf(m.handle));
        prompts.delete(m.handle);
      } else engine.clear();
    } catch (err) {
      deferred ??= err;
    }
    return;
  }
  if (m.op === 'close') {
    engine.dispose();
    model.dispose();
    compute.release();
    port.postMessage({ op: 'closed' } satisfies FromEngine);
    return;
  }
  try {
    if (deferred !== undefined) {
      const err = deferred;
      deferred = undefined;
      throw err;
    }
    const chunksOf = (inputs: ChunkMessage[]) => inputs.map((c) => ({ ids: c.ids, allPositions: c.allPositions, ...(c.from === undefined ? {} : { from: promptOf(c.from) }) }));
    const outputsOf = (inputs: ChunkMessage[], outputs: Array<PrefillOutput<unknown>>) => {
      for (const c of inputs) if (c.from !== undefined) prompts.delete(c.from); // taken over by the engine
      return outputs.map((o) => ({ logits: o.logits.slice(), prompt: handleOf(o.prompt) })); // own buffers, to transfer
    };
    if (m.op === 'prefill') {
      const outputs = outputsOf(m.inputs, await engine.prefill(chunksOf(m.inputs)));
      port.postMessage({ op: 'prefilled', id: m.id, outputs, ...stats() } satisfies FromEngine, outputs.map((o) => o.logits.buffer as ArrayBuffer));
    } else if (m.op === 'step') {
      if (!engine.step) throw new RangeError('this engine has no step');
      const { logits, outputs: raw } = await engine.step(m.tokens, chunksOf(m.inputs));
      const outputs = outputsOf(m.inputs, raw);
      const rows = logits.slice();
      port.postMessage({ op: 'stepped', id: m.id, logits: rows, outputs, ...stats() } satisfies FromEngine, [rows.buffer as ArrayBuffer, ...outputs.map((o) => o.logits.buffer as ArrayBuffer)]);
    } else {
      const logits = await engine.decode(m.tokens);
      const own = logits.byteOffset === 0 && logits.byteLength === logits.buffer.byteLength ? logits : logits.slice();
      port.postMessage({ op: 'decoded', id: m.id, logits: own, ...stats() } satisfies FromEngine, [own.buffer as ArrayBuffer]);
    }
  } catch (err) {
    port.postMessage({ op: 'failed', id: m.id, ...threadFailure(err) } satisfies FromEngine);
  }
}

let queue = Promise.resolve();
port.on('message', (m: ToEngine) => {
  queue = queue.then(() => handle(m));
});
port.postMessage({ op: 'ready', backend: compute.name, engine: served instanceof PagedGptEngine ? 'paged' : 'tensor', ...(compute.gpu ? { adapter: adapterName(compute.gpu) } : {}) } satisfies FromEngine);
