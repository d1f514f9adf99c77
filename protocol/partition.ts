/**
 * How a buffer of `length` float32 elements is cut for a ring of `size` ranks: chunk i is
 * [floor(i·L/n), floor((i+1)·L/n)), so chunk sizes differ by at most one element and any L ≥ 0 works
 * (chunks may be empty when L < n). Each chunk is then cut into segments of at most `segmentElems`, the unit
 * that is pipelined around the ring. ZeRO-1 shards use the same chunks.
 */
export interface Range {
  start: number; // first element
  end: number; // one past the last element
}

export function chunkRange(length: number, size: number, index: number): Range {
  return { start: Math.floor((index * length) / size), end: Math.floor(((index + 1) * length) / size) };
}

/** Segments of [start, end), each at most `segmentElems` long; none when the range is empty. */
export function segments(range: Range, segmentElems: number): Range[] {
  const out: Range[] = [];
  for (let s = range.start; s < range.end; s += segmentElems) out.push({ start: s, end: Math.min(range.end, s + segmentElems) });
  return out;
}

export function segmentCount(range: Range, segmentElems: number): number {
  return Math.ceil((range.end - range.start) / segmentElems);
}

export const mod = (a: number, n: number): number => ((a % n) + n) % n;
