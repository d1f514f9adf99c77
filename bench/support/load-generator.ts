/**
 * HTTP load generator for the gateway benchmark (node:http only, keep-alive agent, performance.now()).
 *
 * Two ways to load a server:
 *  - closedLoop: N clients, each sends its next request as soon as the previous one answered. This measures the
 *    throughput the server sustains at a fixed concurrency, but its latencies flatter a server that stalls: while
 *    the server is stuck the clients wait too and send nothing, so the stall shows up in one sample instead of many.
 *  - openLoop: requests are sent on a fixed schedule (request k at start + k/rate), whether or not earlier ones have
 *    answered. Latency is taken from the SCHEDULED send time, not from when the event loop actually got to send it,
 *    so time spent queued behind a stalled server (or a late event loop) is charged to the requests that suffered it
 *    ("coordinated omission" avoided). This is the figure that matches what users arriving at that rate would see.
 *
 * A request counts as completed once its whole response body has been read (which also frees the keep-alive socket),
 * with any status; as an error when no full response came (socket destroyed, timeout, open loop over maxInFlight).
 */
import http from 'node:http';
import { performance } from 'node:perf_hooks';

export interface LoadRequest { method: 'POST' | 'GET' | 'PUT'; path: string; headers?: Record<string, string>; body?: string }
export interface LoadResult {
  sent: number; completed: number; // completed = got a full response (any status)
  ok: number; // 2xx
  statuses: Record<string, number>; // e.g. {"200": 98, "503": 2}
  errors: number; // network errors / timeouts (no response)
  errorMessages: string[]; // first 5 distinct messages
  latenciesMs: number[]; // one per completed request, in completion order
  durationS: number; // wall time of the run
  throughputRps: number; // ok / durationS
}

/** A full response (its body when asked for), or why there was none. */
export type Outcome = { status: number; body?: string } | { error: string };
const DEFAULT_TIMEOUT_MS = 30_000, DEFAULT_MAX_IN_FLIGHT = 1000, MAX_ERROR_MESSAGES = 5;

/** Accumulates outcomes; one per run. Only this class mutates the tallies, so `sent = completed + errors` at the end. */
class Tally {
  #sent = 0; #completed = 0; #ok = 0; #errors = 0;
  #statuses: Record<string, number> = {};
  #messages = new Set<string>();
  #latencies: number[] = [];
  sent(): void { this.#sent++; }
  record(outcome: Outcome, latencyMs: number): void {
    if ('error' in outcome) {
      this.#errors++;
      if (this.#messages.size < MAX_ERROR_MESSAGES) this.#messages.add(outcome.error);
      return;
    }
    this.#completed++;
    if (outcome.status >= 200 && outcome.status < 300) this.#ok++;
    this.#statuses[outcome.status] = (this.#statuses[outcome.status] ?? 0) + 1;
    this.#latencies.push(latencyMs);
  }
  result(durationS: number): LoadResult {
    return {
      sent: this.#sent, completed: this.#completed, ok: this.#ok, statuses: { ...this.#statuses }, errors: this.#errors,
      errorMessages: [...this.#messages], latenciesMs: [...this.#latencies], durationS,
      throughputRps: durationS > 0 ? this.#ok / durationS : 0,
    };
  }
}

function requirePositive(name: string, value: number | undefined, integer: boolean): void {
  if (value === undefined) return;
  if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw new RangeError(`${name} must be a positive ${integer ? 'integer' : 'number'}, got ${value}`);
  }
}

function parseTarget(url: string): URL {
  let target: URL;
  try { target = new URL(url); } catch { throw new RangeError(`url must be an absolute http:// URL, got ${JSON.stringify(url)}`); }
  if (target.protocol !== 'http:') throw new RangeError(`url must use http:, got ${target.protocol}`);
  return target;
}

function errorMessage(err: unknown): string {
  const e = err as { message?: string; code?: string };
  return e?.message || e?.code || String(err);
}

/**
 * One request; resolves (never rejects) once the body is fully read, or with the error that prevented it. The body
 * is drained unread unless `keepBody` (the load loops only count; a caller checking answers keeps it).
 */
export function sendRequest(agent: http.Agent, target: URL, req: LoadRequest, timeoutMs: number, keepBody = false): Promise<Outcome> {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (outcome: Outcome): void => { if (!settled) { settled = true; clearTimeout(timer); resolve(outcome); } };
    const headers = req.body === undefined ? { ...req.headers } : { 'content-length': String(Buffer.byteLength(req.body)), ...req.headers };
    const r = http.request({ hostname: target.hostname, port: target.port, method: req.method, path: req.path, headers, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('end', () => settle({ status: res.statusCode ?? 0, ...(keepBody ? { body: Buffer.concat(chunks).toString('utf8') } : {}) }));
      res.on('error', (err) => settle({ error: errorMessage(err) }));
      // 'close' without 'end': the socket went away mid-body, so this is not a full response.
      res.on('close', () => { if (!res.complete) settle({ error: 'response aborted' }); });
      if (keepBody) res.on('data', (c: Buffer) => chunks.push(c));
      else res.resume(); // drain the body so the keep-alive socket can be reused
    });
    // A deadline for the whole exchange (socket idle timeouts would let a slowly dribbling response run forever).
    const timer = setTimeout(() => r.destroy(new Error(`timeout after ${timeoutMs} ms`)), timeoutMs);
    r.on('error', (err) => settle({ error: errorMessage(err) }));
    r.end(req.body);
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

/** `clients` concurrent clients, each sending its next request when the previous one answered; stops after durationMs
 * (requests in flight finish and count) or after `requests` in all, whichever comes first. Throws RangeError on bad options. */
export function closedLoop(opts: { url: string; clients: number; durationMs?: number; requests?: number; request: (i: number) => LoadRequest; timeoutMs?: number }): Promise<LoadResult> {
  if (opts.clients === undefined) throw new RangeError('closedLoop needs clients');
  requirePositive('clients', opts.clients, true);
  requirePositive('durationMs', opts.durationMs, false);
  requirePositive('requests', opts.requests, true);
  requirePositive('timeoutMs', opts.timeoutMs, false);
  if (opts.durationMs === undefined && opts.requests === undefined) throw new RangeError('closedLoop needs durationMs or requests (or both)');
  const target = parseTarget(opts.url);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const agent = new http.Agent({ keepAlive: true, maxSockets: opts.clients });
  const tally = new Tally(), start = performance.now();
  const deadline = opts.durationMs === undefined ? Infinity : start + opts.durationMs;
  let next = 0; // running index shared by all clients
  const more = (): boolean => (opts.requests === undefined || next < opts.requests) && performance.now() < deadline;
  const client = async (): Promise<void> => {
    while (more()) {
      const req = opts.request(next++);
      tally.sent();
      const t0 = performance.now();
      const outcome = await sendRequest(agent, target, req, timeoutMs);
      tally.record(outcome, performance.now() - t0);
    }
  };
  return Promise.all(Array.from({ length: opts.clients }, client))
    .then(() => tally.result((performance.now() - start) / 1000))
    .finally(() => agent.destroy());
}

type OpenLoopOptions = { url: string; ratePerS: number; durationMs: number; request: (i: number) => LoadRequest; timeoutMs?: number; maxInFlight?: number };

/** Validates synchronously (throws RangeError, like closedLoop), then runs. */
export function openLoop(opts: OpenLoopOptions): Promise<LoadResult> {
  if (opts.ratePerS === undefined || opts.durationMs === undefined) throw new RangeError('openLoop needs ratePerS and durationMs');
  requirePositive('ratePerS', opts.ratePerS, false);
  requirePositive('durationMs', opts.durationMs, false);
  requirePositive('timeoutMs', opts.timeoutMs, false);
  requirePositive('maxInFlight', opts.maxInFlight, true);
  return runOpenLoop(opts, parseTarget(opts.url));
}

async function runOpenLoop(opts: OpenLoopOptions, target: URL): Promise<LoadResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const maxInFlight = opts.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
  // One socket per possible in-flight request: the agent must not queue requests behind a cap of its own.
  const agent = new http.Agent({ keepAlive: true, maxSockets: maxInFlight });
  const tally = new Tally();
  const intervalMs = 1000 / opts.ratePerS;
  const total = Math.ceil(opts.durationMs / intervalMs - 1e-9); // k with k·interval < durationMs
  const pending: Promise<void>[] = [], start = performance.now();
  let inFlight = 0;
  const fire = (k: number, scheduledAt: number): void => {
    tally.sent();
    if (inFlight >= maxInFlight) { tally.record({ error: 'max in flight' }, 0); return; }
    inFlight++;
    pending.push(sendRequest(agent, target, opts.request(k), timeoutMs).then((outcome) => {
      inFlight--;
      tally.record(outcome, performance.now() - scheduledAt); // from the schedule, not the actual send
    }));
  };
  try {
    for (let k = 0; k < total;) {
      await sleep(start + k * intervalMs - performance.now());
      // Timers fire late; send everything that is already due at once rather than drifting behind the schedule.
      const now = performance.now();
      for (; k < total && start + k * intervalMs <= now; k++) fire(k, start + k * intervalMs);
    }
    await Promise.all(pending);
    return tally.result((performance.now() - start) / 1000);
  } finally {
    agent.destroy();
  }
}

/** Quantile p in [0,1] of values by linear interpolation between order statistics; NaN for empty. */
export function quantile(values: readonly number[], p: number): number {
  if (!(p >= 0 && p <= 1)) throw new RangeError(`p must be in [0, 1], got ${p}`);
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const h = (sorted.length - 1) * p, lo = Math.floor(h), hi = Math.ceil(h);
  return sorted[lo]! + (h - lo) * (sorted[hi]! - sorted[lo]!);
}
