/**
 * Largest right operand (elements) whose XNNPACK packing the fast wasm matmul keeps cached (wasm-batch-matmul.ts).
 * A packed operator is a second copy of the weight on the wasm heap, which wasm32 caps at 4 GB: GPT-2-small's
 * packed projections took 0.35–0.5 GB of it. Larger weights are packed per call: k·n copies for 2·m·k·n FLOPs.
 * Measured on a GPT-2-small stage (one micro-batch of 128 tokens, interleaved runs): 11.6 s a step packing per
 * call vs 11.7 s cached, 3.3 vs 3.7 GB peak RSS. Here, not in the kernel, so the coordinator's planner can count
 * it without loading TensorFlow.js.
 */
export const PACK_CACHE_MAX_ELEMENTS = 1 << 18;

/**
 * Products of at most this many rows keep any weight's packing: there the packing costs as much as the product or
 * more (decoding: 1 row × GPT-2's [768, 50257] head took 441 ms packing per call, ~4 ms with the packing kept).
 * Training's products have a micro-batch of tokens as rows, far more than this.
 */
export const PACK_CACHE_ANY_SIZE_ROWS = 32;
