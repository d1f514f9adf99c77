/**
 * Per-client token buckets: each client (an API key's id, or an IP address when no keys are configured) may send
 * `rps` requests a second on average and `burst` at once. `takeToken` is the pure decision on one bucket;
 * `RateLimiter` keeps the buckets of at most `maxClients` clients, with an injectable clock for tests. Every `take`
 * does a bounded amount of work, however many clients there are: it never scans the buckets.
 */
export interface RateLimit {
  rps: number; // tokens added per second (> 0)
  burst: number; // bucket size: requests a client may send at once after being idle (≥ 1)
}

export interface Bucket {
  tokens: number;
  atMs: number; // when `tokens` was last brought up to date
}

export interface RateLimiterOptions {
  nowMs?: () => number; // the clock, in ms; monotonic (performance.now) unless a test injects one
  maxClients?: number; // most clients tracked at once (integer ≥ 1); see DEFAULT_MAX_CLIENTS
}

/** Counters for tests and metrics. `evicted` > 0 means a flood of clients has reset some client's partial bucket. */
export interface RateLimiterStats {
  clients: number; // buckets tracked now (≤ maxClients)
  examined: number; // buckets other than the requester's looked at to prune or evict, since construction
  pruned: number; // full buckets dropped: deciding as if they were never there, so no limit changed
  evicted: number; // partly drained buckets dropped at the cap: those clients got a fresh burst
}

/**
 * Far more clients than a deployment has keys or busy IPs, so only a flood of distinct clients reaches it, while the
 * buckets stay small: 100,000 IP-address keys took 19.6 MB of heap on Node 20 (key string, entry, bucket: ~200 bytes each).
 */
export const DEFAULT_MAX_CLIENTS = 100_000;

/**
 * Full buckets dropped from the least recently used end per `take`. Each `take` adds at most one client, so dropping
 * up to two lets the tracked set shrink back to the active clients once a flood of new ones has passed.
 */
const PRUNE_PER_TAKE = 2;

/** `bucket`'s tokens at `nowMs`: what it had plus what `rps` added since, never more than `burst`. */
function refill(bucket: Bucket, nowMs: number, limit: RateLimit): number {
  return Math.min(limit.burst, bucket.tokens + ((nowMs - bucket.atMs) / 1000) * limit.rps);
}

/** Refills `bucket` to `nowMs` and takes one token: the new bucket, and how long to wait when there was none. */
export function takeToken(bucket: Bucket | undefined, nowMs: number, limit: RateLimit): { bucket: Bucket; retryAfterMs: number } {
  const refilled = bucket ? refill(bucket, nowMs, limit) : limit.burst;
  if (refilled >= 1) return { bucket: { tokens: refilled - 1, atMs: nowMs }, retryAfterMs: 0 };
  return { bucket: { tokens: refilled, atMs: nowMs }, retryAfterMs: Math.ceil(((1 - refilled) / limit.rps) * 1000) };
}

/** A bucket that has refilled to `burst` decides exactly as no bucket at all (`takeToken` starts one full), so dropping it never changes a decision. */
export function isFull(bucket: Bucket, nowMs: number, limit: RateLimit): boolean {
  return refill(bucket, nowMs, limit) >= limit.burst;
}

/** One client's bucket, linked into the recency list. */
interface Entry {
  readonly client: string;
  bucket: Bucket;
  older: Entry | undefined;
  newer: Entry | undefined;
}

/**
 * The buckets sit in a Map for lookup and in a doubly linked list from least to most recently used, so moving a
 * client to the newest end and dropping the oldest are O(1). (A Map alone, re-inserted to reorder, is not: V8 leaves
 * a hole per delete until it rehashes, and each fresh iteration from the front walks them all; measured ~45 µs per
 * evict-oldest at 100k clients.)
 *
 * Each `take` first drops up to PRUNE_PER_TAKE full buckets from the oldest end. When a new client arrives at the
 * cap and the oldest bucket is still partly drained, that bucket is evicted anyway, as nginx's limit_req does when
 * its zone is full: the oldest client then gets a fresh burst. A client that keeps sending stays at the newest end,
 * so it keeps its drained bucket unless `maxClients` other distinct clients arrive between two of its requests.
 * Refusing new clients at the cap instead would let a flood of distinct IPs lock out every new legitimate client;
 * a per-client limit cannot stop a distributed flood anyway, only bound what it costs here.
 */
export class RateLimiter {
  readonly limit: RateLimit;
  readonly maxClients: number;
  readonly #entries = new Map<string, Entry>();
  readonly #nowMs: () => number;
  #oldest: Entry | undefined; // pruned and evicted from here
  #newest: Entry | undefined; // each take moves its client here
  #examined = 0;
  #pruned = 0;
  #evicted = 0;

  constructor(limit: RateLimit, { nowMs = () => performance.now(), maxClients = DEFAULT_MAX_CLIENTS }: RateLimiterOptions = {}) {
    if (!(limit.rps > 0) || !Number.isFinite(limit.rps)) throw new RangeError(`rate limit must be a positive number of requests per second, got ${limit.rps}`);
    if (!Number.isInteger(limit.burst) || limit.burst < 1) throw new RangeError(`rate burst must be an integer ≥ 1, got ${limit.burst}`);
    if (!Number.isInteger(maxClients) || maxClients < 1) throw new RangeError(`rate limiter maxClients must be an integer ≥ 1, got ${maxClients}`);
    this.limit = Object.freeze({ ...limit });
    this.maxClients = maxClients;
    this.#nowMs = nowMs;
  }

  /** Takes a token for `client`: 0 when the request may go on, else the milliseconds until one is available. */
  take(client: string): number {
    const now = this.#nowMs();
    this.#pruneFull(now); // may drop `client`'s own bucket if full: no bucket decides the same
    let entry = this.#entries.get(client);
    const { bucket, retryAfterMs } = takeToken(entry?.bucket, now, this.limit);
    if (entry) {
      this.#unlink(entry);
      entry.bucket = bucket;
    } else {
      if (this.#entries.size >= this.maxClients) this.#evictOldest(now);
      entry = { client, bucket, older: undefined, newer: undefined };
      this.#entries.set(client, entry);
    }
    this.#append(entry);
    return retryAfterMs;
  }

  stats(): RateLimiterStats {
    return { clients: this.#entries.size, examined: this.#examined, pruned: this.#pruned, evicted: this.#evicted };
  }

  /** Drops full buckets from the oldest end, at most PRUNE_PER_TAKE, stopping at the first that is not full. */
  #pruneFull(now: number): void {
    for (let i = 0; i < PRUNE_PER_TAKE && this.#oldest; i++) {
      this.#examined++;
      if (!isFull(this.#oldest.bucket, now, this.limit)) return;
      this.#remove(this.#oldest);
      this.#pruned++;
    }
  }

  /** Makes room at the cap by dropping the oldest bucket; when it is partly drained, its client loses what it had spent. */
  #evictOldest(now: number): void {
    const oldest = this.#oldest!; // size ≥ maxClients ≥ 1
    this.#examined++;
    if (isFull(oldest.bucket, now, this.limit)) this.#pruned++; // pruning ran out of its budget before this one
    else this.#evicted++;
    this.#remove(oldest);
  }

  #remove(entry: Entry): void {
    this.#unlink(entry);
    this.#entries.delete(entry.client);
  }

  #unlink(entry: Entry): void {
    if (entry.older) entry.older.newer = entry.newer;
    else this.#oldest = entry.newer;
    if (entry.newer) entry.newer.older = entry.older;
    else this.#newest = entry.older;
    entry.older = entry.newer = undefined;
  }

  #append(entry: Entry): void {
    entry.older = this.#newest;
    if (this.#newest) this.#newest.newer = entry;
    else this.#oldest = entry;
    this.#newest = entry;
  }
}
