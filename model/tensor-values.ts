/**
 * A float32 tensor's values without a copy where the backend allows it.
 *
 * `dataSync()` on the wasm backend copies the tensor out of the heap into a fresh ArrayBuffer: a backward pass that
 * adds each gradient into the trainer's flat buffer made ~0.5 GB of such garbage a step on GPT-2-small, which the
 * garbage collector frees when it gets to it (resident memory meanwhile). On wasm, `use` gets a view of the heap
 * instead, valid only while no tensor is allocated (allocating may grow the heap and move it): `use` must only
 * read. Elsewhere it gets dataSync()'s array (on the cpu backend, the tensor's own: also read only).
 */
import * as tf from '@tensorflow/tfjs';

interface HeapBackend {
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

export function withValues<T>(t: tf.Tensor, use: (values: Float32Array) => T): T {
  if (t.dtype !== 'float32') throw new TypeError(`withValues reads float32 tensors, got ${t.dtype}`);
  const backend = tf.backend() as unknown as Partial<HeapBackend>;
  if (tf.getBackend() === 'wasm' && typeof backend.typedArrayFromHeap === 'function') {
    return use(backend.typedArrayFromHeap({ dataId: t.dataId, shape: t.shape, dtype: t.dtype }) as Float32Array);
  }
  return use(t.dataSync() as Float32Array);
}
