/**
 * The self-check's data, shared by the side that runs a collective (node-agent/collective-runner.ts) and the side that
 * checks it (coordinator/cluster/selfcheck.ts): each rank's deterministic input and the serial result to compare with.
 */
import { chunkRange } from '../protocol/partition.ts';

/**
 * Deterministic inputs for self-checks and benchmarks: rank r's buffer depends only on (seed, r, length), so
 * every agent (and every test) can compute any rank's input, and the serial sum to check against.
 * Values are multiples of 1/64 in [−15.625, 15.625]: float32 sums of up to 2^12 ranks are exact in any order,
 * so a correct ring result equals the serial sum bit for bit.
 */
export function selfcheckData(seed: number, rank: number, length: number): Float32Array {
  const out = new Float32Array(length);
  let x = (Math.imul(seed + 1, 0x9e3779b1) ^ Math.imul(rank + 1, 0x85ebca6b)) >>> 0 || 1; // xorshift never leaves 0
  for (let i = 0; i < length; i++) {
    // xorshift32: cheap enough for 16M elements in well under a second.
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = ((x % 2001) - 1000) / 64;
  }
  return out;
}

/** The element-wise sum of every rank's selfcheckData, computed one rank after another. */
export function serialSum(seed: number, size: number, length: number): Float32Array {
  const sum = new Float32Array(length);
  for (let r = 0; r < size; r++) {
    const d = selfcheckData(seed, r, length);
    for (let i = 0; i < length; i++) sum[i] = sum[i]! + d[i]!;
  }
  return sum;
}

/** The fields of a collective run that decide its data. */
export interface RunShape {
  op: string;
  elements: number;
  seed: number;
  root?: number | undefined;
}

/** Rank `rank`'s input for a collective run (made fresh for each repeat: the collectives work in place). */
export function collectiveInput(run: RunShape, rank: number, size: number): Float32Array {
  const n = run.elements;
  switch (run.op) {
    case 'allreduce':
    case 'reducescatter':
      return selfcheckData(run.seed, rank, n);
    case 'allgather': {
      const buf = new Float32Array(n);
      const own = chunkRange(n, size, rank);
      buf.set(selfcheckData(run.seed, rank, n).subarray(own.start, own.end), own.start);
      return buf;
    }
    case 'broadcast':
      return rank === (run.root ?? 0) ? selfcheckData(run.seed, rank, n) : new Float32Array(n);
    default:
      return new Float32Array(0);
  }
}

/** What a correct collective leaves in the buffer, computed serially; undefined for ops with no result. */
export function expectedResult(run: RunShape, size: number): Float32Array | undefined {
  const n = run.elements;
  switch (run.op) {
    case 'allreduce':
    case 'reducescatter':
      return serialSum(run.seed, size, n);
    case 'allgather': {
      const out = new Float32Array(n);
      for (let c = 0; c < size; c++) {
        const r = chunkRange(n, size, c);
        out.set(selfcheckData(run.seed, c, n).subarray(r.start, r.end), r.start);
      }
      return out;
    }
    case 'broadcast':
      return selfcheckData(run.seed, run.root ?? 0, n);
    default:
      return undefined;
  }
}
