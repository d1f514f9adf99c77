/**
 * GET /api/events: the dashboard's live feed, as server-sent events (one HTTP response that stays open; the
 * browser's EventSource reconnects on its own). On connect the client gets a snapshot of everything it shows,
 * then changes as they happen:
 *
 *   nodes       {nodes}                  on connect, every NODES_EVERY_MS and soon after a node changes
 *   jobs        {jobs}                   on connect and soon after any job changes (state, step)
 *   metrics     {jobId, rows}            each step's metrics rows, as recorded (a replayed step repeats its step)
 *   live        JobLive                  per running job, at most once per FLUSH_MS
 *   checkpoint  {jobId, checkpoint}      each canonical checkpoint
 *   models      {models}                 on connect and after a registration
 *   gateways    {gateways}               on connect and when one appears or moves
 *
 * Changes that come in bursts (every rank's report of every step) are coalesced: a dirty flag per job, flushed
 * every FLUSH_MS. A client that stops reading is cut off once MAX_BUFFERED_BYTES wait for it; its EventSource
 * reconnects and starts again from a snapshot, so nothing it shows is ever silently stale.
 */
import type { ServerResponse } from 'node:http';
import type { EventBus } from '../events.ts';

export const FLUSH_MS = 500;
export const NODES_EVERY_MS = 2000;
export const KEEPALIVE_MS = 15_000;
export const MAX_BUFFERED_BYTES = 4 * 1024 * 1024;
/** Most live streams open at once (each costs a socket and a few timers). */
export const MAX_STREAMS = 200;

export interface LiveSources {
  nodes(): unknown[];
  jobs(): unknown[];
  live(jobId: string): unknown;
  models(): unknown[];
  gateways(): unknown[];
}

export class LiveStreams {
  readonly #bus: EventBus;
  readonly #src: LiveSources;
  readonly #open = new Set<ServerResponse>();

  constructor(bus: EventBus, sources: LiveSources) {
    this.#bus = bus;
    this.#src = sources;
  }

  get size(): number {
    return this.#open.size;
  }

  /** Takes over `res` (already hijacked from fastify) and streams until the client goes or `close()`. */
  serve(res: ServerResponse): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no', // proxies such as nginx would otherwise hold events back
    });
    this.#open.add(res);
    const send = (event: string, data: unknown): void => {
      if (res.writableEnded) return;
      if (res.writableLength > MAX_BUFFERED_BYTES) {
        res.end(); // a client this far behind reconnects and gets a fresh snapshot
        return;
      }
      res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    const dirtyJobs = new Set<string>(); // jobs whose live view changed
    let jobsDirty = false, nodesDirty = false, modelsDirty = false, gatewaysDirty = false;

    send('hello', { serverTimeMs: Date.now() });
    send('nodes', { nodes: this.#src.nodes() });
    send('jobs', { jobs: this.#src.jobs() });
    send('models', { models: this.#src.models() });
    send('gateways', { gateways: this.#src.gateways() });

    const off = [
      this.#bus.on('job', (e) => {
        jobsDirty = true;
        dirtyJobs.add(e.jobId);
      }),
      this.#bus.on('progress', (e) => {
        send('metrics', { jobId: e.jobId, rows: e.rows });
        jobsDirty = true;
        dirtyJobs.add(e.jobId);
      }),
      this.#bus.on('rank', (e) => void dirtyJobs.add(e.jobId)),
      this.#bus.on('checkpoint', (e) => send('checkpoint', { jobId: e.jobId, checkpoint: e.checkpoint })),
      this.#bus.on('attempt', (e) => {
        dirtyJobs.add(e.jobId);
        nodesDirty = true;
      }),
      this.#bus.on('node', () => void (nodesDirty = true)),
      this.#bus.on('model', () => void (modelsDirty = true)),
      this.#bus.on('gateway', () => void (gatewaysDirty = true)),
    ];
    const flush = setInterval(() => {
      if (jobsDirty) send('jobs', { jobs: this.#src.jobs() });
      if (nodesDirty) send('nodes', { nodes: this.#src.nodes() });
      if (modelsDirty) send('models', { models: this.#src.models() });
      if (gatewaysDirty) send('gateways', { gateways: this.#src.gateways() });
      for (const jobId of dirtyJobs) {
        const live = this.#src.live(jobId);
        if (live) send('live', live);
      }
      jobsDirty = nodesDirty = modelsDirty = gatewaysDirty = false;
      dirtyJobs.clear();
    }, FLUSH_MS);
    // Heartbeat ages move every second even when nothing else does.
    const nodes = setInterval(() => send('nodes', { nodes: this.#src.nodes() }), NODES_EVERY_MS);
    const keepalive = setInterval(() => !res.writableEnded && res.write(': keep-alive\n\n'), KEEPALIVE_MS);
    const cleanup = () => {
      clearInterval(flush);
      clearInterval(nodes);
      clearInterval(keepalive);
      for (const f of off) f();
      this.#open.delete(res);
    };
    res.once('close', cleanup);
  }

  /** Ends every stream (coordinator shutdown). */
  close(): void {
    for (const res of this.#open) res.end();
  }
}
