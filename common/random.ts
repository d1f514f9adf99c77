/**
 * Seeded, platform-independent randomness shared by every package: a 32-bit integer hash and a deterministic
 * stream built on it. Not cryptographic; what reproducible sampling, sweeps, data splits and A/B assignment need.
 */

/**
 * A deterministic random stream in [0, 1) for choice `stream` of a request seeded with `seed` (any safe integer,
 * negative too). mulberry32 over a 32-bit mix of both: not cryptographic, but fast, and identical on every
 * platform, which is what reproducible sampling needs.
 */
export function seededRandom(seed: number, stream = 0): () => number {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 2 ** 32) >>> 0;
  let state = mix32(mix32(lo ^ 0x9e3779b9) ^ mix32(hi + 0x85ebca6b) ^ mix32(stream + 0xc2b2ae35));
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** murmur3's 32-bit finaliser: spreads every input bit over the output. */
export function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}
