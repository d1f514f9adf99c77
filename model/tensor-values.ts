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

/**
 * Whether the backend can read a tensor synchronously. tfjs' WebGPU backend cannot in Node (its dataSync needs
 * OffscreenCanvas), nor should a GPU backend be made to: what reads tensors goes through valuesOf/copyOf below,
 * which take the zero-copy synchronous path where there is one and await data() where there is not.
 */
export function readsSync(): boolean {
  const name = tf.getBackend();
  return name !== 'webgpu' && name !== 'webgl';
}

/**
 * `use` gets the tensor's values: a view of the wasm heap as withValues gives it on wasm (read only, and no tensor
 * allocated meanwhile), the array data() resolves to on GPU backends (a fresh copy from the device).
 */
export async function valuesOf<T>(t: tf.Tensor, use: (values: Float32Array) => T): Promise<T> {
  if (readsSync()) return withValues(t, use);
  if (t.dtype !== 'float32') throw new TypeError(`valuesOf reads float32 tensors, got ${t.dtype}`);
  return use((await readChecked(t)) as Float32Array);
}

let deviceCheck: (() => void) | undefined;

/**
 * Set by the WebGPU backend (model/compute/webgpu.ts): throws when the device reported an error (a kernel
 * that failed validation, a lost device). Every asynchronous read runs it after the values arrive, so a kernel
 * that did not run surfaces as an error at the next read instead of as numbers computed from garbage.
 */
export function setDeviceCheck(check: (() => void) | undefined): void {
  deviceCheck = check;
}

/** Any tensor's values (int32 and bool too), read asynchronously and checked like valuesOf's. */
export async function readChecked(t: tf.Tensor): Promise<ArrayLike<number>> {
  const values = (await t.data()) as ArrayLike<number>;
  deviceCheck?.();
  return values;
}

/** A float32 tensor's values in an array of the caller's own (free to change or transfer). */
export async function copyOf(t: tf.Tensor): Promise<Float32Array> {
  if (t.dtype !== 'float32') throw new TypeError(`copyOf reads float32 tensors, got ${t.dtype}`);
  const name = tf.getBackend();
  const values = (await readChecked(t)) as Float32Array;
  // wasm's data() is a fresh copy of the heap; cpu's is the tensor's own array, and WebGPU's is kept as the
  // tensor's CPU copy (convertAndCacheOnCPU): changing it would change the tensor.
  return name === 'wasm' ? values : Float32Array.from(values);
}

/** copyOf, then the tensor disposed (also when the read fails). */
export async function takeValues(t: tf.Tensor): Promise<Float32Array> {
  try {
    return await copyOf(t);
  } finally {
    t.dispose();
  }
}
