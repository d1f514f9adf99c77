/**
 * INT8 serving, measured: held-out perplexity of a model's float32 weights and of the same weights after the path a
 * registry version takes (model/quantize.ts: quantize → model.int8.safetensors bytes → read → dequantize), and the
 * size of the quantized weights. Used by test/model/quantize.test.ts and by benchmarks.
 */
import * as tf from '@tensorflow/tfjs';
import { GPT } from '../../model/gpt.ts';
import { flatFromStateDict, paramLayout, stateDict, type GPTConfig } from '../../model/params.ts';
import { readInt8Safetensors, writeInt8Safetensors } from '../../model/quantize.ts';
import { writeSafetensors, type TensorMap } from '../../model/safetensors.ts';
import type { TokenBatch } from '../../model/train-step.ts';

export interface Int8Measurement {
  /** |ppl_int8 − ppl_f32| / ppl_f32. */
  int8_ppl_change: number;
  /**
   * Tensor data bytes of model.int8.safetensors (I8 weights + their F32 scales + the F32 tensors kept: biases,
   * LayerNorms) over the tensor data bytes of the same state dict in F32 (4 bytes × every parameter). Safetensors
   * headers are excluded from both (a few KB; `int8_file_ratio` includes them).
   */
  int8_size_ratio: number;
  /** Whole-file bytes: model.int8.safetensors over model.safetensors (headers included). */
  int8_file_ratio: number;
  ppl_f32: number;
  ppl_int8: number;
  /** The weights as served: read back from model.int8.safetensors and dequantized, in `flat`'s layout. */
  dequantized: Float32Array;
}

/**
 * exp(mean next-token cross-entropy) over `batches`, weighted by tokens. Builds a GPT from `flat`, runs on the
 * current tf backend, disposes it.
 */
export function perplexity(config: GPTConfig, flat: Float32Array, batches: readonly TokenBatch[]): number {
  if (batches.length === 0) throw new RangeError('perplexity needs at least one held-out batch');
  const model = new GPT(config, { flat });
  try {
    let nll = 0, tokens = 0;
    for (const b of batches) {
      const ids = tf.tensor2d(b.ids, [b.batch, b.seq], 'int32');
      const targets = tf.tensor2d(b.targets, [b.batch, b.seq], 'int32');
      const loss = model.loss(ids, targets);
      nll += loss.dataSync()[0]! * b.batch * b.seq;
      tokens += b.batch * b.seq;
      tf.dispose([ids, targets, loss]);
    }
    return Math.exp(nll / tokens);
  } finally {
    model.dispose();
  }
}

/**
 * `heldOut`: micro-batches in model/train-step.ts's TokenBatch form (ids and next-token targets, [batch, seq]
 * row-major, seq ≤ config.nCtx); `tokenBatch(rows, batch, seq)` makes one from rows of seq + 1 tokens.
 */
export async function measureInt8(opts: { config: GPTConfig; flat: Float32Array; heldOut: readonly TokenBatch[] }): Promise<Int8Measurement> {
  const layout = paramLayout(opts.config);
  const dict = stateDict(opts.flat, layout);
  const { bytes, sizes } = writeInt8Safetensors(dict);
  const f32File = writeSafetensors(dict as TensorMap, { format: 'pt' }).byteLength;
  const dequantized = flatFromStateDict(readInt8Safetensors(bytes), layout);
  const ppl_f32 = perplexity(opts.config, opts.flat, opts.heldOut);
  const ppl_int8 = perplexity(opts.config, dequantized, opts.heldOut);
  return {
    int8_ppl_change: Math.abs(ppl_int8 - ppl_f32) / ppl_f32,
    int8_size_ratio: sizes.int8Bytes / sizes.f32Bytes,
    int8_file_ratio: bytes.byteLength / f32File,
    ppl_f32,
    ppl_int8,
    dequantized,
  };
}
