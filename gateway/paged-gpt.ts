/**
 * The GPT's serving engine over a paged KV cache (paged-kv.ts), for the backends whose tensors live in this
 * process's memory (wasm, cpu): every row is a sequence of cache blocks, so rows join and leave the batch without
 * touching anyone else's cache, and attention runs in the SIMD kernel over each query's own sequence only.
 * The rest of a forward (embeddings, projections, MLPs, head) runs in tfjs over all its tokens at once;
 * batched-gpt.ts, whose tensor cache serves the GPU backends (their tensors cannot be written in place), is the other engine.
 *
 * An iteration is ONE forward (`step`, vLLM's mixed batches): the next token of every row and the prompt chunks
 * the scheduler runs this iteration, as more rows of the same matmuls. For each layer, every token's query, key and
 * value come out of one matmul [N, 3d]; each new key and value goes into its sequence's block; then each query
 * attends in the kernel to its sequence's positions up to its own (a chunk's token i sees the cached prefix and
 * chunk tokens 0 … i), and the outputs [N, d] go on through the block. A token's numbers depend only on its own
 * sequence: the kernel works query by query and tfjs's matmuls compute rows separately, so a request gets the same
 * logits alone or batched, its prompt whole or in chunks, joining a running batch or not (bit for bit; tested).
 * A request's choices fork the prompt's sequence: they share its blocks until each writes its first token (copy on
 * write of one block). `prefill` (matmul attention, prompts grouped by length) serves callers outside the scheduler.
 */
import * as tf from '@tensorflow/tfjs';
import type { GPT } from '../model/gpt.ts';
import { takeValues, withValues } from '../model/tensor-values.ts';
import type { BatchEngine, PrefillInput, PrefillOutput } from './batch-scheduler.ts';
import { GptBatchEngine, prefillGrouped } from './batched-gpt.ts';
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

  /** Prompt chunks on their own (callers outside the scheduler): matmul attention, fresh prompts grouped by length. */
  prefill(prompts: ReadonlyArray<PrefillInput<KvSequence>>): Promise<Array<PrefillOutput<KvSequence>>> {
    return prefillGrouped(prompts, (group) => this.#run(group));
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
    return (await this.step(tokens, [])).logits;
  }

  /**
   * One forward for a whole iteration (vLLM's mixed batches): the next token of every row, and the prompt chunks,
   * their tokens as more rows of the same matmuls. Every new key and value goes into its sequence first; then each
   * query attends, in the kernel, to its own sequence's positions up to its own (a chunk's token i sees the cached
   * prefix and chunk tokens 0 … i). Returns the rows' next logits [rows, V] and each chunk's output as prefill's.
   */
  async step(tokens: readonly number[], chunks: ReadonlyArray<PrefillInput<KvSequence>>): Promise<{ logits: Float32Array; outputs: Array<PrefillOutput<KvSequence>> }> {
    const B = this.#rows.length;
    if (tokens.length !== B) throw new RangeError(`step: ${tokens.length} tokens for ${B} rows`);
    const { nEmbd: d, nLayer } = this.#model.config;
    const rows = this.#rows;
    const sequences = chunks.map((c) => c.from ?? this.#kv.sequence());
    // Every query of the forward: its sequence, its position, and whether its logits come back.
    const seqOf: KvSequence[] = [], posOf: number[] = [], ids: number[] = [], wanted: number[] = [];
    rows.forEach((seq, b) => {
      seqOf.push(seq);
      posOf.push(seq.length);
      ids.push(tokens[b]!);
      wanted.push(b);
    });
    chunks.forEach((c, j) => {
      const seq = sequences[j]!;
      for (let i = 0; i < c.ids.length; i++) {
        if (c.allPositions || i === c.ids.length - 1) wanted.push(seqOf.length);
        seqOf.push(seq);
        posOf.push(seq.length + i);
        ids.push(c.ids[i]!);
      }
    });
    const N = ids.length;
    let logits: tf.Tensor2D;
    try {
      for (const seq of rows) this.#kv.reserve(seq, 1);
      chunks.forEach((c, j) => this.#kv.reserve(sequences[j]!, c.ids.length));
      logits = tf.tidy(() => {
        let x = this.#fwd.embed(Int32Array.from(ids), Int32Array.from(posOf)); // [N, d]
        for (let l = 0; l < nLayer; l++) {
          const y = new Float32Array(N * d); // a fresh one per layer: a backend may keep the array a tensor is made from
          withValues(this.#fwd.qkv(x, l), (qkv) => { // [N, 3d]: query, key, value side by side per token
            for (let n = 0; n < N; n++) this.#kv.write(seqOf[n]!, l, posOf[n]!, 1, qkv, n * 3 * d + d, qkv, n * 3 * d + 2 * d, 3 * d);
            for (let n = 0; n < N; n++) this.#kv.attend(seqOf[n]!, l, posOf[n]! + 1, qkv, n * 3 * d, y, n * d);
          });
          x = this.#fwd.finishBlock(x, l, tf.tensor2d(y, [N, d]), N, 1);
        }
        return this.#fwd.head(x, wanted.length === N ? undefined : wanted);
      });
    } catch (err) {
      chunks.forEach((c, j) => c.from ?? this.#kv.release(sequences[j]!));
      throw err;
    }
    for (const seq of rows) seq.length++;
    chunks.forEach((c, j) => (sequences[j]!.length += c.ids.length));
    const values = await takeValues(logits); // [wanted, V]
    const V = this.logitsWidth;
    let at = B;
    const outputs = chunks.map((c, j) => {
      const n = c.allPositions ? c.ids.length : 1;
      const out = { logits: values.subarray(at * V, (at + n) * V), prompt: sequences[j]! };
      at += n;
      return out;
    });
    return { logits: values.subarray(0, B * V), outputs };
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
