/**
 * The safetensors format (Hugging Face), read and written byte for byte as the reference implementation
 * (huggingface/safetensors, `safetensors/src/tensor.rs`) does, so that a file written here loads in Python's
 * `safetensors`, `transformers` and candle, and a file written there loads here.
 *
 * Layout of a file:
 *
 *   [0, 8)          N, the header length: an unsigned 64-bit little-endian integer
 *   [8, 8 + N)      the header: UTF-8 JSON, one object
 *                     {"__metadata__": {"k": "v", …},                      optional, strings only
 *                      "NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]}, …}
 *                   padded with spaces (0x20) so that 8 + N is a multiple of 8
 *   [8 + N, EOF)    the data buffer: every tensor's bytes, little-endian, row-major ('C' order);
 *                   `data_offsets` are [BEGIN, END) relative to the start of this buffer
 *
 * What the writer does, as the reference's `prepare` does:
 * - tensors are ordered by dtype, widest alignment first (the reference's `Dtype` enum order, descending), then by
 *   name (byte order); they are laid out back to back in that order. With the header padded to 8 bytes this puts
 *   every tensor on a multiple of its element size, so a reader can view the data in place. (The order is by dtype
 *   first and only then by name: with a single dtype, as in a float32 model, that is plain name order.)
 * - the header is compact JSON (no spaces) with `__metadata__` first when given (its keys sorted here; the
 *   reference leaves them in hash order), then the tensors in layout order, each as
 *   `{"dtype":…,"shape":[…],"data_offsets":[b,e]}`, then spaces up to the next multiple of 8.
 *
 * What the reader refuses (each with a ModelError `MDL_ERR_SAFETENSORS` whose message names the problem and the
 * tensor): a file shorter than 8 bytes; a header length past the end of the file or above the reference's 100 MB
 * limit; a header that is not UTF-8, not JSON, not an object, or has a duplicate key at any depth; a `__metadata__`
 * that is not a map of strings; a tensor entry with a missing or unknown field, an unknown or unsupported dtype, a
 * shape or offsets that are not non-negative integers; a byte length that disagrees with shape × dtype; offsets past
 * the end of the data buffer (a truncated file); overlapping tensors; bytes that belong to no tensor (holes); and
 * trailing bytes after the last tensor. The reference refuses all of these too (it silently keeps the last of two
 * duplicate keys and ignores unknown fields; the format's README and JSON schema forbid both, so we refuse them).
 *
 * Element types: F64, F32, I64, I32, I16, I8, U64, U32, U16, U8 and BOOL map to the matching typed array (64-bit
 * integers to BigInt64Array / BigUint64Array, BOOL to Uint8Array). F16 and BF16 have no typed array in Node 20:
 * their data is a Uint16Array of raw bits; model/half-float.ts converts. Other dtypes of the format (F8_*, F4, F6_*, C64) are refused as unsupported. The host must be
 * little-endian (every platform Node runs on today is); this module checks at load.
 *
 * Long: the format's writer and its strict reader are kept together so that what one writes the other accepts,
 * and every rule the reader enforces sits next to the layout the writer produces.
 */
import { ModelError } from './errors.ts';

/** The dtypes this module reads and writes. */
export type Dtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL';

/** The typed array that holds each dtype's elements (F16 and BF16: raw bits). */
export interface DtypeArrays {
  F64: Float64Array;
  F32: Float32Array;
  F16: Uint16Array;
  BF16: Uint16Array;
  I64: BigInt64Array;
  I32: Int32Array;
  I16: Int16Array;
  I8: Int8Array;
  U64: BigUint64Array;
  U32: Uint32Array;
  U16: Uint16Array;
  U8: Uint8Array;
  BOOL: Uint8Array;
}

/** One tensor: its dtype, its shape (row-major) and its elements; narrowing on `dtype` narrows `data`. */
export type Tensor<D extends Dtype = Dtype> = { [K in D]: { dtype: K; shape: readonly number[]; data: DtypeArrays[K] } }[D];

export type TensorMap = Record<string, Tensor>;

interface DtypeInfo {
  bytes: number;
  ctor: { new (buffer: ArrayBufferLike, byteOffset: number, length: number): DtypeArrays[Dtype]; name: string };
}

const DTYPES: { readonly [D in Dtype]: DtypeInfo } = {
  F64: { bytes: 8, ctor: Float64Array },
  F32: { bytes: 4, ctor: Float32Array },
  F16: { bytes: 2, ctor: Uint16Array },
  BF16: { bytes: 2, ctor: Uint16Array },
  I64: { bytes: 8, ctor: BigInt64Array },
  I32: { bytes: 4, ctor: Int32Array },
  I16: { bytes: 2, ctor: Int16Array },
  I8: { bytes: 1, ctor: Int8Array },
  U64: { bytes: 8, ctor: BigUint64Array },
  U32: { bytes: 4, ctor: Uint32Array },
  U16: { bytes: 2, ctor: Uint16Array },
  U8: { bytes: 1, ctor: Uint8Array },
  BOOL: { bytes: 1, ctor: Uint8Array },
};

export const SUPPORTED_DTYPES = Object.keys(DTYPES) as readonly Dtype[];

/**
 * Every dtype of the format in the reference's `Dtype` enum order (increasing alignment). The writer sorts by
 * descending position in this list; dtypes we do not support are listed so that the reader can say "unsupported"
 * rather than "unknown".
 */
const REFERENCE_DTYPE_ORDER = [
  'BOOL', 'F4', 'F6_E2M3', 'F6_E3M2', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'F8_E8M0', 'F8_E4M3FNUZ', 'F8_E5M2FNUZ',
  'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'C64', 'F64', 'I64', 'U64',
] as const;

/** The reference refuses headers above this many bytes (`MAX_HEADER_SIZE`); so do we, reading and writing. */
export const MAX_HEADER_BYTES = 100_000_000;

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('model/safetensors.ts needs a little-endian host');
}

function isDtype(s: unknown): s is Dtype {
  return typeof s === 'string' && Object.hasOwn(DTYPES, s);
}

function fail(message: string): never {
  throw new ModelError('MDL_ERR_SAFETENSORS', message);
}

/** Tensor and metadata names sort by their UTF-8 bytes, as Rust's `String` ordering does. */
function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

const showShape = (shape: readonly unknown[]) => `[${shape.join(', ')}]`;

// ---------------------------------------------------------------------------------------------------- writing

/** The header bytes (length prefix, JSON, padding) and the tensors in the order their data must follow. */
export interface PreparedSafetensors {
  header: Buffer;
  order: Array<[name: string, tensor: Tensor]>;
  /** Bytes of the whole file: header.length + the data buffer. */
  totalBytes: number;
}

/** Validates `tensors` and lays them out as the reference does; the data itself is not copied. */
export function prepareSafetensors(tensors: TensorMap, metadata?: Record<string, string>): PreparedSafetensors {
  const byName = new Map<string, Tensor>();
  for (const name of Object.keys(tensors)) {
    const t = tensors[name]!;
    const where = `tensor "${name}"`;
    if (name === '__metadata__') fail(`${where}: the name __metadata__ is reserved for the metadata map`);
    if (!t || typeof t !== 'object') fail(`${where}: not a tensor object`);
    if (!isDtype(t.dtype)) fail(`${where}: unknown dtype ${JSON.stringify(t.dtype)} (supported: ${SUPPORTED_DTYPES.join(', ')})`);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(t.shape)}`);
    }
    const { ctor } = DTYPES[t.dtype];
    if (!(t.data instanceof ctor)) {
      fail(`${where}: dtype ${t.dtype} needs its data in a ${ctor.name}, got ${t.data?.constructor?.name ?? typeof t.data}`);
    }
    const n = elementCount(t.shape);
    if (t.data.length !== n) fail(`${where}: shape ${showShape(t.shape)} has ${n} elements but data has ${t.data.length}`);
    byName.set(name, t);
  }
  const { header, order, totalBytes } = safetensorsLayout([...byName].map(([name, t]) => [name, { dtype: t.dtype, shape: t.shape }]), metadata);
  return { header, order: order.map(({ name }) => [name, byName.get(name)!]), totalBytes };
}

/** A tensor's dtype and shape: what a header says about it. */
export interface TensorKind {
  dtype: Dtype;
  shape: readonly number[];
}

/** Where each tensor's bytes go in a file laid out by `safetensorsLayout`. */
export interface SafetensorsLayout {
  header: Buffer;
  /** The tensors in data order, each with its [begin, end) in the data buffer (which starts at header.length). */
  order: Array<{ name: string; dtype: Dtype; shape: readonly number[]; dataOffsets: [number, number] }>;
  totalBytes: number;
}

/**
 * The header (length prefix, JSON, padding) and data order of a file holding tensors of these kinds, without
 * their data: a writer that produces the tensors one at a time (a merge, a reshard) writes this header first and
 * then each tensor's bytes in `order`. `prepareSafetensors` lays out in-memory tensors the same way.
 */
export function safetensorsLayout(tensors: ReadonlyArray<readonly [string, TensorKind]>, metadata?: Record<string, string>): SafetensorsLayout {
  const order = [...tensors];
  for (const [name, t] of order) {
    if (name === '__metadata__') fail(`tensor "__metadata__": the name __metadata__ is reserved for the metadata map`);
    if (!isDtype(t.dtype)) fail(`tensor "${name}": unknown dtype ${JSON.stringify(t.dtype)} (supported: ${SUPPORTED_DTYPES.join(', ')})`);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`tensor "${name}": shape must be an array of non-negative integers, got ${JSON.stringify(t.shape)}`);
    }
  }
  const rank = (d: Dtype) => REFERENCE_DTYPE_ORDER.indexOf(d);
  order.sort(([an, a], [bn, b]) => rank(b.dtype) - rank(a.dtype) || byteOrder(an, bn));

  const entries: string[] = [];
  if (metadata !== undefined) {
    const keys = Object.keys(metadata).sort(byteOrder);
    for (const k of keys) {
      if (typeof metadata[k] !== 'string') fail(`metadata "${k}": values must be strings, got ${typeof metadata[k]}`);
    }
    entries.push(`"__metadata__":{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`).join(',')}}`);
  }
  let offset = 0;
  const placed: SafetensorsLayout['order'] = [];
  for (const [name, t] of order) {
    const end = offset + elementCount(t.shape) * DTYPES[t.dtype].bytes;
    // Built by hand rather than with JSON.stringify(object): JS objects put integer-like keys ("0", "12") first.
    entries.push(`${JSON.stringify(name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${end}]}`);
    placed.push({ name, dtype: t.dtype, shape: t.shape, dataOffsets: [offset, end] });
    offset = end;
  }
  const json = Buffer.from(`{${entries.join(',')}}`, 'utf8');
  const n = Math.ceil(json.length / 8) * 8;
  if (n > MAX_HEADER_BYTES) fail(`the header would be ${n} bytes, above the format's ${MAX_HEADER_BYTES}-byte limit`);
  const header = Buffer.alloc(8 + n, 0x20);
  header.writeBigUInt64LE(BigInt(n), 0);
  json.copy(header, 8);
  return { header, order: placed, totalBytes: header.length + offset };
}

/** Bytes per element of a dtype. */
export function dtypeBytes(dtype: Dtype): number {
  return DTYPES[dtype].bytes;
}

/** A zero-filled tensor of this kind in its own (aligned) memory, for a reader to fill with a tensor's bytes. */
export function emptyTensor(dtype: Dtype, shape: readonly number[]): Tensor {
  const { bytes, ctor } = DTYPES[dtype];
  const n = elementCount(shape);
  return { dtype, shape, data: new ctor(new ArrayBuffer(n * bytes), 0, n) } as Tensor;
}

/** The byte chunks of a file, in order: the header, then each tensor's data as a view (no copy). */
export function safetensorsChunks(prepared: PreparedSafetensors): Uint8Array[] {
  return [prepared.header, ...prepared.order.map(([, t]) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength))];
}

/**
 * Serializes `tensors` (and an optional string→string `metadata`, stored as `__metadata__`) into one safetensors
 * file. The output does not depend on the key order of `tensors`. For large models, write
 * `safetensorsChunks(prepareSafetensors(…))` to a file instead, which avoids this one big copy.
 */
export function writeSafetensors(tensors: TensorMap, metadata?: Record<string, string>): Buffer {
  const prepared = prepareSafetensors(tensors, metadata);
  const out = Buffer.allocUnsafe(prepared.totalBytes);
  let at = 0;
  for (const chunk of safetensorsChunks(prepared)) {
    out.set(chunk, at);
    at += chunk.byteLength;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------- reading

export interface Safetensors {
  /** Tensors by name, in data-buffer order (own properties, so even a tensor named "__proto__" is safe). */
  tensors: TensorMap;
  /** `__metadata__`, or {} when the file has none. */
  metadata: Record<string, string>;
}

/** One header entry after validation. */
export interface TensorInfo {
  dtype: Dtype;
  shape: number[];
  /** [begin, end) in the data buffer. */
  dataOffsets: [number, number];
}

/** The parsed and validated header of a safetensors file and where its data buffer starts. */
export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** 8 + N: the offset of the data buffer in the file. */
  dataStart: number;
}

const TENSOR_FIELDS = new Set(['dtype', 'shape', 'data_offsets']);

/**
 * Parses and validates everything about a file but its tensor values: the header, and that the data buffer is
 * exactly covered by the tensors (`buf` must be the whole file).
 */
export function readSafetensorsHeader(buf: Uint8Array): SafetensorsHeader {
  return parseSafetensorsHeader(buf, buf.byteLength);
}

/**
 * The header length N a file's first 8 bytes announce, checked against the format's limit and the file's size;
 * a reader of a file on disk reads these 8 bytes, then N more, and hands both to `parseSafetensorsHeader`.
 */
export function safetensorsHeaderLength(first8: Uint8Array, fileBytes: number): number {
  if (fileBytes < 8 || first8.byteLength < 8) fail(`file is ${fileBytes} bytes, too short for the 8-byte header length`);
  const n64 = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n64 > BigInt(MAX_HEADER_BYTES)) fail(`header length ${n64} is above the format's ${MAX_HEADER_BYTES}-byte limit`);
  const n = Number(n64);
  if (8 + n > fileBytes) fail(`header length ${n} runs past the end of the file (${fileBytes} bytes)`);
  return n;
}

/**
 * `readSafetensorsHeader` for a file that is not in memory: `head` holds at least its first 8 + N bytes (the length
 * and the header) and `fileBytes` is its size, against which the tensors' offsets are checked.
 */
export function parseSafetensorsHeader(head: Uint8Array, fileBytes: number): SafetensorsHeader {
  const n = safetensorsHeaderLength(head, fileBytes);
  if (head.byteLength < 8 + n) throw new RangeError(`parseSafetensorsHeader needs the first ${8 + n} bytes, got ${head.byteLength}`);
  const dataStart = 8 + n;
  const dataLen = fileBytes - dataStart;

  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(head.subarray(8, dataStart));
  } catch {
    fail('header is not valid UTF-8');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    fail(`header is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) fail('header is not a JSON object');
  const duplicate = findDuplicateKey(text);
  if (duplicate) {
    const [top, inner] = duplicate;
    if (inner === undefined) fail(top === '__metadata__' ? '__metadata__ appears twice in the header' : `tensor "${top}" appears twice in the header`);
    fail(`${top === '__metadata__' ? '__metadata__' : `tensor "${top}"`}: key "${inner}" appears twice`);
  }

  const metadataEntries: Array<[string, string]> = [];
  const tensors = new Map<string, TensorInfo>();
  for (const [name, raw] of Object.entries(parsed)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('__metadata__ must be a map of strings');
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') fail(`__metadata__ must be a map of strings: "${k}" holds ${JSON.stringify(v)}`);
        metadataEntries.push([k, v]);
      }
      continue;
    }
    tensors.set(name, parseTensorInfo(name, raw, dataLen));
  }

  // The tensors must tile the data buffer exactly: sorted by offsets, each begins where the previous one ended.
  const sorted = [...tensors].sort(([, a], [, b]) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  let cursor = 0;
  let previous = '';
  for (const [name, { dataOffsets: [begin, end] }] of sorted) {
    if (begin > cursor) fail(`bytes [${cursor}, ${begin}) of the data buffer belong to no tensor (a hole before tensor "${name}")`);
    if (begin < cursor) fail(`tensor "${name}" at data_offsets [${begin}, ${end}) overlaps tensor "${previous}", which ends at ${cursor}`);
    cursor = end;
    previous = name;
  }
  if (cursor < dataLen) {
    fail(`${dataLen - cursor} trailing bytes after the last tensor (the data buffer is ${dataLen} bytes, the tensors cover ${cursor})`);
  }
  // Object.fromEntries defines own properties, so even a key named "__proto__" is kept as data.
  return { tensors: new Map(sorted), metadata: Object.fromEntries(metadataEntries), dataStart };
}

function parseTensorInfo(name: string, raw: unknown, dataLen: number): TensorInfo {
  const where = `tensor "${name}"`;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(`${where}: entry is not an object`);
  const entry = raw as Record<string, unknown>;
  for (const key of Object.keys(entry)) if (!TENSOR_FIELDS.has(key)) fail(`${where}: unknown field "${key}"`);
  for (const key of TENSOR_FIELDS) if (!(key in entry)) fail(`${where}: missing field "${key}"`);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (!isDtype(dtype)) {
    if ((REFERENCE_DTYPE_ORDER as readonly unknown[]).includes(dtype)) fail(`${where}: dtype ${dtype} is not supported here (supported: ${SUPPORTED_DTYPES.join(', ')})`);
    fail(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    fail(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    fail(`${where}: data_offsets must be [begin, end] with non-negative integers, got ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) fail(`${where}: data_offsets [${begin}, ${end}) end before they begin`);
  const bytes = elementCount(shape) * DTYPES[dtype].bytes;
  if (!Number.isSafeInteger(bytes)) fail(`${where}: shape ${showShape(shape)} is too large`);
  if (end - begin !== bytes) {
    fail(`${where}: shape ${showShape(shape)} of ${dtype} needs ${bytes} bytes but data_offsets [${begin}, ${end}) span ${end - begin}`);
  }
  if (end > dataLen) fail(`${where}: data_offsets [${begin}, ${end}) run past the end of the data buffer (${dataLen} bytes): the file is truncated or the offsets are wrong`);
  return { dtype, shape: shape as number[], dataOffsets: [begin, end] };
}

/**
 * Parses a whole safetensors file. Tensors are views into `buf` (no copy) where their position in memory is a
 * multiple of their element size, which is always the case for files laid out like the reference's in a buffer
 * that starts aligned (fs.readFile's do); otherwise they are copied. Views share memory with `buf`: changing one
 * changes the other.
 */
export function readSafetensors(buf: Uint8Array): Safetensors {
  const { tensors: infos, metadata, dataStart } = readSafetensorsHeader(buf);
  const entries: Array<[string, Tensor]> = [];
  for (const [name, { dtype, shape, dataOffsets: [begin, end] }] of infos) {
    const { bytes, ctor } = DTYPES[dtype];
    const at = buf.byteOffset + dataStart + begin;
    const length = (end - begin) / bytes;
    const data = at % bytes === 0 ? new ctor(buf.buffer, at, length) : new ctor(buf.slice(dataStart + begin, dataStart + end).buffer, 0, length);
    entries.push([name, { dtype, shape, data } as Tensor]);
  }
  return { tensors: Object.fromEntries(entries), metadata };
}

/**
 * The first duplicate object key in a JSON text that JSON.parse accepted, as [top-level key] when a top-level key
 * repeats, or [top-level key, inner key] when a key repeats inside (at any depth) the value of that top-level key.
 * JSON.parse keeps the last of two equal keys silently; the format forbids them.
 */
function findDuplicateKey(json: string): [string, string?] | undefined {
  const stack: Array<Set<string> | null> = []; // one entry per open object (its keys) or array (null)
  let expectKey = false;
  let top = '';
  for (let i = 0; i < json.length; i++) {
    const c = json[i];
    if (c === '"') {
      let j = i + 1;
      while (json[j] !== '"') j += json[j] === '\\' ? 2 : 1;
      const keys = stack[stack.length - 1];
      if (expectKey && keys) {
        const key = JSON.parse(json.slice(i, j + 1)) as string;
        if (keys.has(key)) return stack.length === 1 ? [key] : [top, key];
        keys.add(key);
        if (stack.length === 1) top = key;
        expectKey = false;
      }
      i = j;
    } else if (c === '{') {
      stack.push(new Set());
      expectKey = true;
    } else if (c === '[') {
      stack.push(null);
      expectKey = false;
    } else if (c === '}' || c === ']') {
      stack.pop();
      expectKey = false;
    } else if (c === ',') {
      expectKey = stack[stack.length - 1] != null;
    }
  }
  return undefined;
}
