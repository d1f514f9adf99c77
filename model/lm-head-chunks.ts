/**
 * How model/lm-head.ts cuts the causal-LM head, here without TensorFlow.js so that the coordinator's planner
 * (coordinator/jobs/cost-model.ts) can count the head's working set.
 */

/** Elements of the head's weight per chunk: 4 Mi (16 MB in float32): 5,461 rows of GPT-2's 768. */
export const HEAD_CHUNK_ELEMENTS = 1 << 22;

/** Pass 1's logits are kept (in JS memory) for pass 2 up to this many bytes (GPT-2 at 256 tokens: 51 MB); past it, recomputed. */
export const LOGITS_KEPT_BYTES = 64 * 2 ** 20;

/** Rows of the weight [V, d] per chunk, for chunks of at most `chunkElements` elements (one row at least). */
export function headChunkRows(vocabSize: number, d: number, chunkElements = HEAD_CHUNK_ELEMENTS): number {
  return Math.max(1, Math.min(vocabSize, Math.floor(chunkElements / d)));
}
