/**
 * The GPT's serving engine over a paged KV cache (paged-kv.ts), for the backends whose tensors live in this
 * process's memory (wasm, cpu): every row is a sequence of cache blocks, so rows join and leave the batch without
 * touching anyone else's cache, and decode attention runs in the SIMD kernel over each row's own positions only.
 * The rest of a step (embeddings, projections, MLPs, head) runs in tfjs over all rows at once, as in
 * batched-gpt.ts, whose tensor cache serves the GPU backends (their tensors cannot be read and written in place).
 *
 * A decode step: for each layer, the rows' queries, keys and values come out of one matmul [B, 3d]; each row's
 * new key and value go into its sequence's block, the kernel attends each row's query over its positions, and the
 * outputs [B, d] go back into the block's projection. A row's numbers depend only on its own tokens: the kernel
 * works row by row, and tfjs's matmuls compute rows separately, so a sequence gets the same logits alone or
 * batched, joined mid-batch or not (bit for bit; tested).
 *
 * Prompts: fresh prompts are run together (one forward per group of similar lengths, as batched-gpt.ts groups
 * them) with matmul attention, and their keys and values copied into blocks; a chunk that continues a prompt
 * (chunked prefill) attends to the prompt's cached positions, read back from its blocks. A request's choices fork
 * the prompt's sequence: they share its blocks until each writes its first token (copy on write of one block).
 */
import * as tf from '@tensorflow/tfjs';
import type { GPT } from '../model/gpt.ts';
import { takeValues, withValues } from '../model/tensor-values.ts';
import type { BatchEngine, PrefillInput, PrefillOutput } from './batch-scheduler.ts';
import { GptBatchEngine, prefillGroups } from './batched-gpt.ts';
import { GptForward } from './gpt-forward.ts';
import { PagedKv, type KvSequence } from './paged-kv.ts';

export class PagedGptEngine implements BatchEngine<KvSequence> {
  /** Whether this engine can serve `model` on the current tfjs backend. */
  static supports(model: GPT): boolean {
    const backend = tf.getBackend();
    return (backend === 'wasm' || backend === 'cpu') && PagedKv.supports(model.config);
  }

  readonly logitsWidth: number;
  readonly #model: GPT;
  readonly #fwd: GptForward;
  readonly #kv: PagedKv;
  #rows: KvSequence[] = [];

  constructor(model: GPT) {
    this.#model = model;
    this.#fwd = new GptForward(model);
    this.#kv = new PagedKv(model.config);
    this.logitsWidth = model.config.vocabSize;
  }

  get rows(): number {
    return this.#rows.length;
  }

  /** Bytes the KV cache's pool holds now. */
  get cacheBytes(): number {
    return this.#kv.bytes;
  }

  /** Cache blocks held by rows and prompts (a test's leak check: 0 once everything is released). */
  get blocksInUse(): number {
    return this.#kv.blocksInUse;
  }

  async prefill(prompts: ReadonlyArray<PrefillInput<KvSequence>>): Promise<Array<PrefillOutput<KvSequence>>> {
    const out = new Array<PrefillOutput<KvSequence>>(prompts.length);
    const fresh = prompts.flatMap((p, i) => (p.from ? [] : [i]));
    for (const group of prefillGroups(fresh.map((i) => prompts[i]!.ids.length))) {
      const members = group.map((j) => fresh[j]!);
      (await this.#run(members.map((i) => prompts[i]!))).forEach((o, j) => (out[members[j]!] = o));
    }
    for (const [i, p] of prompts.entries()) if (p.from) out[i] = (await this.#run([p]))[0]!;
    return out;
  }

  /** One forward over chunks (one when it continues a prompt); their keys and values go into their sequences. */
  async #run(prompts: ReadonlyArray<PrefillInput<KvSequence>>): Promise<Array<PrefillOutput<KvSequence>>> {
    const { nHead: nh, nEmbd: d, nLayer } = this.#model.config;
    const from = prompts[0]!.from;
    const run = this.#fwd.chunks(prompts, from && {
      length: from.length,
      layer: (l) => {
        const { k, v } = this.#kv.read(from, l, from.length); // [p, d] each
        const heads = (z: Float32Array) => tf.tensor3d(z, [from.length, nh, d / nh]).transpose([1, 0, 2]) as tf.Tensor3D;
        return { k: heads(k), v: heads(v) };
      },
    });
    const sequences = prompts.map((p) => p.from ?? this.#kv.sequence());
    try {
      for (const [r, p] of prompts.entries()) this.#kv.reserve(sequences[r]!, p.ids.length);
      for (let l = 0; l < nLayer; l++) {
        const { k, v } = run.kv[l]!;
        withValues(k, (keys) => withValues(v, (values) => {
          for (const [r, p] of prompts.entries()) {
            const seq = sequences[r]!;
            this.#kv.write(seq, l, seq.length, p.ids.length, keys, r * run.T * d, values, r * run.T * d, d);
          }
        }));
      }
      for (const [r, p] of prompts.entries()) sequences[r]!.length += p.ids.length;
    } catch (err) {
      for (const [r, p] of prompts.entries()) if (!p.from) this.#kv.release(sequences[r]!);
      run.logits.dispose();
      throw err;
    } finally {
      for (const { k, v } of run.kv) tf.dispose([k, v]);
    }
    const values = await takeValues(run.logits);
    const V = this.logitsWidth;
    let row = 0;
    return prompts.map((c, r) => {
      const rows = c.allPositions ? c.ids.length : 1;
      const result = { logits: values.subarray(row * V, (row + rows) * V), prompt: sequences[r]! };
      row += rows;
      return result;
    });
  }

  /** The batch becomes: rows `keep` (in that order), then a fork of each prompt in `add`. Copies no cache. */
  arrange(keep: readonly number[], add: readonly KvSequence[]): void {
    const kept = new Set(keep);
    for (const [b, seq] of this.#rows.entries()) if (!kept.has(b)) this.#kv.release(seq);
    this.#rows = [...keep.map((b) => this.#rows[b]!), ...add.map((p) => this.#kv.fork(p))];
  }

  /** Feeds tokens[b] to row b at its next position, every row in one forward; returns logits [rows, V]. */
  async decode(tokens: readonly number[]): Promise<Float32Array> {
    const B = this.#rows.length;
    if (tokens.length !== B) throw new RangeError(`decode: ${tokens.length} tokens for ${B} rows`);
    const { nEmbd: d, nLayer } = this.#model.config;
    const rows = this.#rows;
    for (const seq of rows) this.#kv.reserve(seq, 1);
    const positions = Int32Array.from(rows, (s) => s.length);
    const logits = tf.tidy(() => {
      let x = this.#fwd.embed(Int32Array.from(tokens), positions); // [B, d]
      for (let l = 0; l < nLayer; l++) {
        const y = new Float32Array(B * d); // a fresh one per layer: a backend may keep the array a tensor is made from
        withValues(this.#fwd.qkv(x, l), (qkv) => { // [B, 3d]: row b's query, key, value side by side
          for (let b = 0; b < B; b++) {
            const seq = rows[b]!, at = b * 3 * d;
            this.#kv.write(seq, l, seq.length, 1, qkv, at + d, qkv, at + 2 * d, 3 * d);
            this.#kv.attend(seq, l, seq.length + 1, qkv, at, y, b * d);
          }
        });
        x = this.#fwd.finishBlock(x, l, tf.tensor2d(y, [B, d]), B, 1);
      }
      return this.#fwd.head(x);
    });
    for (const seq of rows) seq.length++;
    return takeValues(logits); // [B, V]
  }

  release(prompt: KvSequence): void {
    this.#kv.release(prompt);
  }

  clear(): void {
    for (const seq of this.#rows) this.#kv.release(seq);
    this.#rows = [];
  }

  /** Frees the engine's own tensors; the cache's memory goes with the engine. */
  dispose(): void {
    this.clear();
    this.#fwd.dispose();
  }
}

/**
 * The engine that serves `model`: the paged cache (PagedGptEngine) where the compute backend keeps tensors in this
 * process and the head size suits its kernel, the tensor cache (batched-gpt.ts) elsewhere; or the one asked for.
 */
export function servingEngine(model: GPT, engine: 'paged' | 'tensor' = PagedGptEngine.supports(model) ? 'paged' : 'tensor'): PagedGptEngine | GptBatchEngine {
  return engine === 'paged' ? new PagedGptEngine(model) : new GptBatchEngine(model);
}
