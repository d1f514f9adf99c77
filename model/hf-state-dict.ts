/**
 * A GPT-2 state dict as published (transformers' GPT2LMHeadModel / GPT2Model saved to model.safetensors) into our
 * flat float32 parameters, checked tensor by tensor against the config.
 *
 * What published GPT-2 files hold beyond our parameters, and how each is treated:
 *   - a `transformer.` prefix on every name (GPT2LMHeadModel.save_pretrained) — stripped;
 *   - F16 or BF16 weights (fp16 / bf16 releases) — widened to float32 (exact: every F16/BF16 value is a float32);
 *   - `h.N.attn.bias` [1, 1, n_positions, n_positions] and `h.N.attn.masked_bias` [] — the causal-mask buffers older
 *     transformers versions saved; they are not parameters, so they are checked for shape and skipped;
 *   - `lm_head.weight` [vocab, n_embd] — the output head, which GPT-2 ties to `wte`; accepted only when it equals
 *     `wte` exactly, since our model always ties them (an untied head would be silently replaced otherwise).
 * Anything else is refused, as is a missing parameter, a wrong shape or an unsupported dtype. The tensors are
 * checked in our layout's order and then the extras by name, so "the first that disagrees" is always the same one.
 */
import { ModelError } from './errors.ts';
import { paramLayout, type GPTConfig } from './params.ts';
import type { Tensor, TensorMap } from './safetensors.ts';
import { bf16BitsToF32, f16BitsToF32 } from './half-float.ts';

const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16']);

const bad = (file: string, why: string) => new ModelError('MDL_ERR_MODEL_FILES', `${file}: ${why}`);
const shapeOf = (shape: readonly number[]) => `[${shape.join(', ')}]`;

/** Writes `t`'s elements, widened to float32, into `out` from `offset`. */
function widenInto(t: Tensor, out: Float32Array, offset: number): void {
  if (t.dtype === 'F32') out.set(t.data, offset);
  else if (t.dtype === 'F16') for (let i = 0; i < t.data.length; i++) out[offset + i] = f16BitsToF32(t.data[i]!);
  else if (t.dtype === 'BF16') for (let i = 0; i < t.data.length; i++) out[offset + i] = bf16BitsToF32(t.data[i]!);
  else throw new RangeError(`unsupported dtype ${t.dtype}`);
}

/**
 * Our flat parameters from a published GPT-2 state dict; `file` names the source in messages. Throws
 * MDL_ERR_MODEL_FILES naming the first tensor whose name, shape or dtype disagrees with `config`.
 */
export function flatFromHfStateDict(tensors: TensorMap, config: GPTConfig, file = 'model.safetensors'): Float32Array {
  const byName = new Map<string, Tensor>();
  for (const [raw, t] of Object.entries(tensors)) {
    const name = raw.replace(/^transformer\./, '');
    if (byName.has(name)) throw bad(file, `holds ${name} twice (with and without the transformer. prefix)`);
    byName.set(name, t);
  }
  const layout = paramLayout(config);
  const flat = new Float32Array(layout.totalSize);
  for (const spec of layout.specs) {
    const t = byName.get(spec.name);
    if (t === undefined) throw bad(file, `lacks ${spec.name} ${shapeOf(spec.shape)}, which config.json implies`);
    if (!FLOAT_DTYPES.has(t.dtype)) throw bad(file, `${spec.name} is ${t.dtype}; weights must be F32, F16 or BF16`);
    if (shapeOf(t.shape) !== shapeOf(spec.shape)) {
      throw bad(file, `${spec.name} has shape ${shapeOf(t.shape)}, config.json implies ${shapeOf(spec.shape)} (GPT-2 stores linear weights as Conv1D [in, out])`);
    }
    widenInto(t, flat, spec.offset);
    byName.delete(spec.name);
  }
  const { vocabSize: V, nEmbd: d, nCtx, nLayer } = config;
  for (const name of [...byName.keys()].sort()) {
    const t = byName.get(name)!;
    const buffer = /^h\.(\d+)\.attn\.(bias|masked_bias)$/.exec(name);
    if (buffer && Number(buffer[1]) < nLayer) {
      const expected = buffer[2] === 'bias' ? [1, 1, nCtx, nCtx] : [];
      if (shapeOf(t.shape) !== shapeOf(expected)) throw bad(file, `${name} (the causal-mask buffer) has shape ${shapeOf(t.shape)}, expected ${shapeOf(expected)}`);
      continue;
    }
    if (name === 'lm_head.weight') {
      if (!FLOAT_DTYPES.has(t.dtype)) throw bad(file, `lm_head.weight is ${t.dtype}; weights must be F32, F16 or BF16`);
      if (shapeOf(t.shape) !== shapeOf([V, d])) throw bad(file, `lm_head.weight has shape ${shapeOf(t.shape)}, expected ${shapeOf([V, d])}`);
      const head = new Float32Array(V * d);
      widenInto(t, head, 0);
      const wte = layout.specs[0]!; // wte.weight comes first in our layout
      for (let i = 0; i < head.length; i++) {
        if (!Object.is(head[i], flat[wte.offset + i])) {
          throw bad(file, `lm_head.weight differs from wte.weight (first at element ${i}): an untied output head is not supported (GPT-2 ties them)`);
        }
      }
      continue;
    }
    throw bad(file, `holds ${name} ${shapeOf(t.shape)}, which is no tensor of a GPT-2 model with config.json's shape`);
  }
  return flat;
}
