/**
 * Per-client token buckets: each client (an API key's id, or an IP address when no keys are configured) may send
 * `rps` requests a second on average and `burst` at once. `takeToken` is the pure decision on one bucket;
 * `RateLimiter` keeps the buckets, with an injectable clock for tests.
 */
export interface RateLimit {
  rps: number; // tokens added per second (> 0)
  burst: number; // bucket size: requests a client may send at once after being idle (≥ 1)
}

export interface Bucket {
  tokens: number;
  atMs: number; // when `tokens` was last brought up to date
}

/** Buckets past this many are pruned of idle (full) ones, so a flood of client IPs cannot grow memory without end. */
const PRUNE_ABOVE = 10_000;

/** Refills `bucket` to `nowMs` and takes one token: the new bucket, and how long to wait when there was none. */
export function takeToken(bucket: Bucket | undefined, nowMs: number, limit: RateLimit): { bucket: Bucket; retryAfterMs: number } {
  const refilled = bucket ? Math.min(limit.burst, bucket.tokens + ((nowMs - bucket.atMs) / 1000) * limit.rps) : limit.burst;
  if (refilled >= 1) return { bucket: { tokens: refilled - 1, atMs: nowMs }, retryAfterMs: 0 };
  return { bucket: { tokens: refilled, atMs: nowMs }, retryAfterMs: Math.ceil(((1 - refilled) / limit.rps) * 1000) };
}

export class RateLimiter {
  readonly limit: RateLimit;
  readonly #buckets = new Map<string, Bucket>();
  readonly #nowMs: () => number;

  constructor(limit: RateLimit, nowMs: () => number = () => performance.now()) {
    if (!(limit.rps > 0) || !Number.isFinite(limit.rps)) throw new RangeError(`rate limit must be a positive number of requests per second, got ${limit.rps}`);
    if (!Number.isInteger(limit.burst) || limit.burst < 1) throw new RangeError(`rate burst must be an integer ≥ 1, got ${limit.burst}`);
    this.limit = Object.freeze({ ...limit });
    this.#nowMs = nowMs;
  }

  /** Takes a token for `client`: 0 when the request may go on, else the milliseconds until one is available. */
  take(client: string): number {
    const now = this.#nowMs();
    const { bucket, retryAfterMs } = takeToken(this.#buckets.get(client), now, this.limit);
    this.#buckets.set(client, bucket);
    if (this.#buckets.size > PRUNE_ABOVE) this.#prune(now);
    return retryAfterMs;
  }

  #prune(now: number): void {
    for (const [client, b] of this.#buckets) {
      if (b.tokens + ((now - b.atMs) / 1000) * this.limit.rps >= this.limit.burst) this.#buckets.delete(client);
    }
  }
}
