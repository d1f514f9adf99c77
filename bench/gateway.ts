/**
 * npm run bench -- gateway [--seconds S] [--rounds R]
 *
 * The inference gateway as users run it: two `bin/gateway.js serve --registry DIR` child processes on loopback
 * (A: default batching; B: --max-batch-size 1), each with an admin key and a deployments file, loaded by the load
 * generator (bench/support/load-generator.ts) from this process. The registry holds model `bench` v1 (GPT seed 1)
 * and v2 (seed 2): BPE vocab 512 on three demo documents, d 128, 4 layers, 4 heads, context 128 (a size where
 * batching pays). Deployments: plain = bench@v1; shadowed = bench@v1 with bench@v2 mirrored at 100 %; switch =
 * bench@v1. Conditions compared with each other run interleaved in rounds, so machine noise hits both alike.
 *   overhead_p50_ms / _p99_ms  one sequential client, a ~16-token prompt, max_tokens 4, temperature 0, fixed seed:
 *                     quantile of HTTP calls to A `plain` − the same quantile of direct GptBackend.generate calls in
 *                     this process on the same version (same registry files, same compute backend choice as
 *                     bin/gateway.js), alternating blocks of R_o calls (one keep-alive connection, as a client keeps)
 *   max_throughput_rps closed loop, 16 clients, max_tokens 32, temperature 1, distinct seeds, varied prompts, A plain
 *   batching_speedup  that closed loop's throughput on A / on B (plain on each); details.batching also has each
 *                     gateway's mean decode batch size (its /metrics) and the same loop on the direct backend in this
 *                     process, interleaved with them (how much of the batched throughput the HTTP path keeps)
 *   details.overhead  also the same small request with the prompt as token ids, and GET /healthz (the bare HTTP round
 *                     trip), interleaved with the blocks above: where the overhead goes
 *   gateway_cpu_ms_per_ok  per condition: the serving gateway's CPU time (/proc) over its rounds per 200 response
 *   shadow_p99_increase  open loop at 0.25 × max_throughput_rps, A shadowed vs A plain: p99(shadowed)/p99(plain) − 1
 *                     (latency from the scheduled send time); shadow_compared / shadow_dropped from the comparison
 *   shadow_saturated_throughput  closed loop (16 clients) throughput on A shadowed / on A plain
 *   decode_step_ms_by_batch  in this process, the GPT batch engine the gateway serves with (same version, same compute
 *                     backend): median ms of one decode forward with 1, 2, 4, 8 and 16 rows, every row holding the
 *                     same positions (DECODE_CONTEXT prompt tokens and up, see decodeStepCost)
 *   decode_batch16_cost_ratio  the 16-row step ÷ the 1-row step (1: rows cost nothing; 16: no sharing at all)
 *   failed_requests   open loop at 0.5 × max_throughput_rps on A `switch` while the bench switches it every ~400 ms
 *                     (PUT primary bench@v2, then POST rollback, alternately): non-200 responses + network errors;
 *                     switches (admin calls that succeeded), switch_ms_max (slowest admin call)
 * Between rounds that follow shadowed traffic the bench waits for the shadow queue to drain, so left-over mirrors
 * never run inside the next condition's round. `details` has every phase's status counts and errors.
 * --seconds S (default 5) is the length of an open-loop round and of the switch phase; closed-loop rounds are
 * 0.6 S and the max-throughput run 0.8 S. --rounds R (default 3) rounds per comparison. Default run: ~2.5 minutes.
 */
import http from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { intOption, parseCli } from '../common/cli.ts';
import { gptBackendFactory, type GptBackend } from '../gateway/gpt-backend.ts';
import { servingEngine } from '../gateway/paged-gpt.ts';
import { GPT } from '../model/gpt.ts';
import { importHf } from '../model/hf-format.ts';
import type { GenerateRequest, InferenceBackend } from '../gateway/inference-backend.ts';
import type { BatchEngine } from '../gateway/batch-scheduler.ts';
import { DirRegistrySource } from '../gateway/registry-source.ts';
import { loadDemoCorpus } from '../model/corpus.ts';
import { trainBpe } from '../model/tokenizer.ts';
import { loadBackend, type BackendChoice } from '../model/compute/backend.ts';
import { makeRegistry, startGateway, type GatewayProcess } from './support/gateway-fixture.ts';
import { closedLoop, openLoop, quantile, sendRequest, type LoadRequest, type LoadResult } from './support/load-generator.ts';

const ADMIN_KEY = 'bench-admin-key';
const MODEL = 'bench';
const CLIENTS = 16;
const LOAD_MAX_TOKENS = 32;
const SMALL_MAX_TOKENS = 4;
const SMALL_SEED = 1234;
const OVERHEAD_ROUNDS = 20, OVERHEAD_BLOCK = 10;
const SWITCH_EVERY_MS = 400;

const TARGETS = {
  decode_batch16_cost_ratio: 2,
  overhead_p50_ms: 0.5,
  overhead_p99_ms: 2,
  shadow_p99_increase: 0.05,
  shadow_saturated_throughput: 0.9,
  batching_speedup: 3,
  failed_requests: 0,
} as const;
const AT_MOST = new Set(['decode_batch16_cost_ratio', 'overhead_p50_ms', 'overhead_p99_ms', 'shadow_p99_increase', 'failed_requests']);

const DECODE_BATCHES = [1, 2, 4, 8, 16];
const DECODE_CONTEXT = 64; // prompt positions every row holds before its timed steps (half the bench model's context)
const DECODE_WARMUP = 3, DECODE_STEPS = 15;

const r3 = (x: number) => Math.round(x * 1000) / 1000;
const r2 = (x: number) => Math.round(x * 100) / 100;
const log = (line: string) => process.stderr.write(`[gateway] ${line}\n`);
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** One request over a keep-alive agent: status, body and the time to the end of the body. Rejects on network errors. */
async function call(agent: http.Agent, base: string, method: 'GET' | 'POST' | 'PUT', path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: string; ms: number }> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const t0 = performance.now();
  const outcome = await sendRequest(agent, new URL(base), { method, path, headers: { ...(payload === undefined ? {} : { 'content-type': 'application/json' }), ...headers }, ...(payload === undefined ? {} : { body: payload }) }, 60_000, true);
  if ('error' in outcome) throw new Error(`${method} ${path}: ${outcome.error}`);
  return { status: outcome.status, body: outcome.body ?? '', ms: performance.now() - t0 };
}

const admin = { authorization: `Bearer ${ADMIN_KEY}` };

/** Pools several rounds of one condition. */
class Pool {
  ok = 0; sent = 0; errors = 0; seconds = 0;
  /** CPU seconds the serving gateway process used during this condition's rounds (shadow work included). */
  gatewayCpuS = 0;
  /** Wall seconds over which gatewayCpuS was taken (the rounds, plus the shadow's drain after shadowed ones). */
  cpuWallS = 0;
  latencies: number[] = [];
  statuses: Record<string, number> = {};
  errorMessages = new Set<string>();
  /** Adds a round; `cpu`: the gateway's CPU seconds and the wall seconds they were taken over. */
  add(r: LoadResult, cpu?: { cpuS: number; wallS: number }): void {
    if (cpu && Number.isFinite(cpu.cpuS)) { this.gatewayCpuS += cpu.cpuS; this.cpuWallS += cpu.wallS; }
    this.ok += r.ok; this.sent += r.sent; this.errors += r.errors; this.seconds += r.durationS;
    for (const l of r.latenciesMs) this.latencies.push(l);
    for (const [s, n] of Object.entries(r.statuses)) this.statuses[s] = (this.statuses[s] ?? 0) + n;
    for (const m of r.errorMessages) if (this.errorMessages.size < 5) this.errorMessages.add(m);
  }
  get rps(): number { return this.seconds > 0 ? this.ok / this.seconds : 0; }
  get failed(): number { return this.sent - this.ok; }
  summary(): object {
    return {
      sent: this.sent, ok: this.ok, rps: r2(this.rps), seconds: r2(this.seconds),
      p50_ms: r2(quantile(this.latencies, 0.5)), p99_ms: r2(quantile(this.latencies, 0.99)),
      statuses: this.statuses, non_200: Object.entries(this.statuses).filter(([s]) => s !== '200').reduce((a, [, n]) => a + n, 0),
      network_errors: this.errors, error_messages: [...this.errorMessages],
      ...(this.gatewayCpuS > 0 ? { gateway_cpu_ms_per_ok: r2((this.gatewayCpuS * 1000) / this.ok), gateway_cores_busy: r2(this.gatewayCpuS / this.cpuWallS) } : {}),
    };
  }
  line(): string {
    return `${this.rps.toFixed(1)} rps, p50 ${quantile(this.latencies, 0.5).toFixed(1)} ms, p99 ${quantile(this.latencies, 0.99).toFixed(1)} ms, ok ${this.ok}/${this.sent}`;
  }
}

const CLK_TCK = 100; // Linux USER_HZ
/** Starts a CPU measurement of `pid`; call the result to get {cpuS, wallS} since. */
function cpuMeter(pid: number | undefined): () => { cpuS: number; wallS: number } {
  const c0 = cpuSample(pid);
  return () => { const c1 = cpuSample(pid); return { cpuS: c1.cpuS - c0.cpuS, wallS: (c1.at - c0.at) / 1000 }; };
}
/** CPU seconds (user + system) a process has used so far, from /proc (NaN where /proc is not there), and when. */
function cpuSample(pid: number | undefined): { cpuS: number; at: number } {
  const at = performance.now();
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ');
    return { cpuS: (Number(fields[11]) + Number(fields[12])) / CLK_TCK, at }; // utime, stime (fields 14, 15 of stat)
  } catch {
    return { cpuS: NaN, at };
  }
}
/** Resident memory of a process in MiB, from /proc; NaN where /proc is not there. */
function rssMiB(pid: number | undefined): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : NaN;
  } catch {
    return NaN;
  }
}

/** The gateway's meshtrain_gateway_batch_size histogram, summed over its labels: decode forwards and their sequences. */
async function batchMetric(agent: http.Agent, base: string, model?: string): Promise<{ sum: number; count: number }> {
  const r = await call(agent, base, 'GET', '/metrics', undefined, admin);
  if (r.status !== 200) throw new Error(`GET /metrics: ${r.status} ${r.body.slice(0, 200)}`);
  let sum = 0, count = 0;
  for (const line of r.body.split('\n')) {
    const m = /^meshtrain_gateway_batch_size_(sum|count)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (m && (model === undefined || m[2]?.includes(`model="${model}"`))) { if (m[1] === 'sum') sum += Number(m[3]); else count += Number(m[3]); }
  }
  return { sum, count };
}

/**
 * Median ms of one decode forward of the batch engine at each batch size. Each size gets its own engine: B prompts of
 * DECODE_CONTEXT tokens prefilled and started as rows, DECODE_WARMUP untimed steps, then timed steps taken in turn
 * across the sizes (so machine noise hits every size alike, and every size is timed at the same positions: a row's
 * context grows by one per step).
 */
async function decodeStepCost(model: GPT, promptIds: number[], rounds: number): Promise<Record<number, number>> {
  const engines: Array<{ B: number; engine: BatchEngine<unknown> & { dispose(): void }; ms: number[] }> = [];
  /** B rows of the prompt, started and warmed up. */
  const startRows = async <P>(engine: BatchEngine<P>, B: number): Promise<void> => {
    const prompts = await engine.prefill(Array.from({ length: B }, () => ({ ids: promptIds.slice(0, DECODE_CONTEXT), allPositions: false })));
    try {
      engine.arrange([], prompts.map((p) => p.prompt));
    } finally {
      for (const p of prompts) engine.release(p.prompt);
    }
    for (let i = 0; i < DECODE_WARMUP; i++) await engine.decode(new Array<number>(B).fill(promptIds[i]!));
  };
  try {
    for (const B of DECODE_BATCHES) {
      const engine = servingEngine(model) as BatchEngine<unknown> & { dispose(): void };
      engines.push({ B, engine, ms: [] });
      await startRows(engine, B);
    }
    // every row stays inside the context
    const steps = Math.min(DECODE_STEPS * rounds, model.config.nCtx - DECODE_CONTEXT - DECODE_WARMUP);
    for (let s = 0; s < steps; s++) {
      for (const e of engines) {
        const t0 = performance.now();
        await e.engine.decode(new Array<number>(e.B).fill(promptIds[s % promptIds.length]!));
        e.ms.push(performance.now() - t0);
      }
    }
    return Object.fromEntries(engines.map((e) => [e.B, r3(quantile(e.ms, 0.5))]));
  } finally {
    for (const e of engines) e.engine.dispose();
  }
}

/** closedLoop's shape on a backend in this process: `clients` loops calling generate; a LoadResult with status 200 for a result, an error otherwise. */
async function directClosedLoop(backend: InferenceBackend, clients: number, durationMs: number, request: (i: number) => GenerateRequest): Promise<LoadResult> {
  const latenciesMs: number[] = [], messages = new Set<string>();
  let sent = 0, ok = 0, errors = 0, next = 0;
  const start = performance.now();
  await Promise.all(Array.from({ length: clients }, async () => {
    while (performance.now() - start < durationMs) {
      const req = request(next++);
      sent++;
      const t0 = performance.now();
      try {
        await backend.generate(req);
        ok++;
        latenciesMs.push(performance.now() - t0);
      } catch (err) {
        errors++;
        if (messages.size < 5) messages.add((err as Error).message);
      }
    }
  }));
  const durationS = (performance.now() - start) / 1000;
  return { sent, completed: ok, ok, statuses: ok ? { 200: ok } : {}, errors, errorMessages: [...messages], latenciesMs, durationS, throughputRps: ok / durationS };
}

export default async function main(argv: string[]): Promise<object> {
  const { values } = parseCli(argv, { seconds: { type: 'string' }, rounds: { type: 'string' } });
  const seconds = values.seconds === undefined ? 5 : Number(values.seconds);
  if (!(seconds > 0)) throw new Error(`--seconds must be a positive number, got ${values.seconds}`);
  const rounds = intOption(values.rounds, 'rounds', 3, 1, 100);
  const openMs = seconds * 1000, closedMs = 0.6 * seconds * 1000, maxMs = 0.8 * seconds * 1000;
  const started = performance.now();

  const data = mkdtempSync(join(tmpdir(), 'meshtrain-bench-gateway-'));
  const gateways: GatewayProcess[] = [];
  let direct: InferenceBackend | undefined;
  const cleanup = (): void => {
    for (const g of gateways) g.kill();
    rmSync(data, { recursive: true, force: true });
  };
  const onSignal = (): void => { cleanup(); process.exit(130); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    // ---- set-up -----------------------------------------------------------------------------------------------
    const choice = (process.env.MESHTRAIN_BACKEND ?? 'auto') as BackendChoice; // what bin/gateway.js does
    const compute = await loadBackend(choice);
    const corpus = loadDemoCorpus();
    const tokenizer = await trainBpe(corpus.documents.slice(0, 3), { vocabSize: 512 });
    const config = { vocabSize: tokenizer.vocabSize, nCtx: 128, nLayer: 4, nHead: 4, nEmbd: 128 };
    const { registry, versions } = await makeRegistry(data, MODEL, config, tokenizer, [1, 2]);
    if (versions[0] !== 1 || versions[1] !== 2) throw new Error(`expected versions 1 and 2 in a fresh registry, got ${versions.join(', ')}`);
    const deploymentsFile = join(data, 'deployments.json');
    writeFileSync(deploymentsFile, JSON.stringify([
      { name: 'plain', primary: { model: MODEL, version: 1 } },
      { name: 'shadowed', primary: { model: MODEL, version: 1 }, shadows: [{ model: MODEL, version: 2, percent: 100 }] },
      { name: 'switch', primary: { model: MODEL, version: 1 } },
    ]));
    log(`compute backend ${compute.name}; vocab ${tokenizer.vocabSize}, d 128, 4 layers, ctx 128; starting gateways A (default batching) and B (--max-batch-size 1)`);
    const common = ['--registry', registry, '--admin-key', ADMIN_KEY, '--deployments', deploymentsFile];
    const startA = startGateway(common), startB = startGateway([...common, '--max-batch-size', '1']);
    const [a, b] = await Promise.allSettled([startA, startB]);
    for (const s of [a, b]) if (s.status === 'fulfilled') gateways.push(s.value);
    if (a.status === 'rejected') throw a.reason;
    if (b.status === 'rejected') throw b.reason;
    const A = a.value.url, B = b.value.url, pidA = a.value.child.pid, pidB = b.value.child.pid;
    const rss: Array<{ at: string; A: number; B: number }> = [];
    const noteRss = (at: string) => rss.push({ at, A: rssMiB(pidA), B: rssMiB(pidB) });

    // The direct baseline: the same version, loaded the way the gateway loads it, in this process.
    const v1 = await new DirRegistrySource(registry).load(MODEL, 1);
    direct = await gptBackendFactory(v1.files, v1.meta, { backend: choice });
    log(`A ${A}, B ${B}; set-up ${((performance.now() - started) / 1000).toFixed(1)} s`);

    // ---- 0. decode step cost by batch size, in process (the engine the gateway serves with) --------------------
    const loaded = importHf(Object.fromEntries(v1.files));
    const decodeModel = new GPT(loaded.config, { flat: loaded.params });
    const decodeIds = direct.tokenize(corpus.documents[5]!).slice(0, DECODE_CONTEXT);
    if (decodeIds.length < DECODE_CONTEXT) throw new Error(`the decode prompt has ${decodeIds.length} tokens, fewer than ${DECODE_CONTEXT}`);
    let decodeMs: Record<number, number>;
    try {
      decodeMs = await decodeStepCost(decodeModel, decodeIds, rounds);
    } finally {
      decodeModel.dispose();
    }
    log(`decode step ms by batch size: ${DECODE_BATCHES.map((b) => `${b}: ${decodeMs[b]}`).join(', ')}`);

    // ---- requests ---------------------------------------------------------------------------------------------
    const text = corpus.documents[5]!;
    const words = text.split(/\s+/).filter(Boolean);
    let small = '';
    for (const w of words) { small = small ? `${small} ${w}` : w; if (direct.tokenize(small).length >= 16) break; }
    const smallIds = direct.tokenize(small);
    const smallReq: GenerateRequest = { promptIds: smallIds, maxTokens: SMALL_MAX_TOKENS, temperature: 0, topP: 1, stop: [], seed: SMALL_SEED, n: 1, logprobs: undefined, echo: false };
    const smallBody = (model: string) => ({ model, prompt: small, max_tokens: SMALL_MAX_TOKENS, temperature: 0, seed: SMALL_SEED });
    const prompts = Array.from({ length: CLIENTS }, (_, i) => {
      const ids = direct!.tokenize(text.slice(i * 100, i * 100 + 40 + 7 * i)).slice(0, 60);
      return direct!.detokenize(ids);
    });
    const promptIds = prompts.map((p) => direct!.tokenize(p));
    const promptLens = promptIds.map((ids) => ids.length);
    let seedCounter = 1;
    const loadRequest = (model: string) => (i: number): LoadRequest => ({
      method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, prompt: prompts[i % prompts.length], max_tokens: LOAD_MAX_TOKENS, temperature: 1, seed: seedCounter++ }),
    });
    const completions = (base: string) => `${base}/v1/completions`;
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 }); // one connection: the sequential client's, reused

    const comparison = async (): Promise<{ shadows: Array<{ queue: { depth: number; running: number }; dropped: Record<string, number>; offered: number; comparison: { count: number; errors?: number } }> }> => {
      const r = await call(agent, A, 'GET', '/admin/deployments/shadowed/comparison', undefined, admin);
      if (r.status !== 200) throw new Error(`GET comparison: ${r.status} ${r.body.slice(0, 300)}`);
      return JSON.parse(r.body);
    };
    /** Waits until A's shadow has nothing queued or running, so its work stays out of the next round. */
    const drainShadow = async (): Promise<number> => {
      const t0 = performance.now();
      for (;;) {
        const c = await comparison();
        const q = c.shadows[0]!.queue;
        if (q.depth === 0 && q.running === 0) return performance.now() - t0;
        if (performance.now() - t0 > 120_000) throw new Error('the shadow queue did not drain within 120 s');
        await sleep(50);
      }
    };

    // ---- warm-up and a correctness check ---------------------------------------------------------------------
    const directResult = await direct.generate(smallReq);
    for (const [name, base, model] of [['A plain', A, 'plain'], ['A shadowed', A, 'shadowed'], ['A switch', A, 'switch'], ['B plain', B, 'plain']] as const) {
      const r = await call(agent, base, 'POST', '/v1/completions', smallBody(model));
      if (r.status !== 200) throw new Error(`${name}: ${r.status} ${r.body.slice(0, 300)}`);
      const got = (JSON.parse(r.body) as { choices: Array<{ text: string }> }).choices[0]!.text;
      if (got !== directResult.choices[0]!.text) throw new Error(`${name} answered ${JSON.stringify(got)}, the direct call ${JSON.stringify(directResult.choices[0]!.text)}: not the same model`);
    }
    for (let i = 0; i < 20; i++) { await direct.generate(smallReq); await call(agent, A, 'POST', '/v1/completions', smallBody('plain')); }
    const warm: Record<string, object> = {};
    for (const [name, base, model] of [['A_plain', A, 'plain'], ['B_plain', B, 'plain'], ['A_shadowed', A, 'shadowed']] as const) {
      // Long enough for V8 to tier up the gateway's hot code (wasm and JS): the first seconds of load run slower.
      const r = await closedLoop({ url: completions(base), clients: CLIENTS, durationMs: closedMs, request: loadRequest(model) });
      warm[name] = { ok: r.ok, sent: r.sent, statuses: r.statuses, errors: r.errors };
    }
    await directClosedLoop(direct, CLIENTS, closedMs, (i) => ({ ...smallReq, promptIds: promptIds[i % promptIds.length]!, maxTokens: LOAD_MAX_TOKENS, temperature: 1, seed: seedCounter++ }));
    await drainShadow();
    noteRss('after warm-up');
    log(`warm-up done (${((performance.now() - started) / 1000).toFixed(1)} s); small prompt ${smallIds.length} tokens; load prompts ${Math.min(...promptLens)}–${Math.max(...promptLens)} tokens`);

    // ---- 1. overhead ------------------------------------------------------------------------------------------
    const directMs: number[] = [], gatewayMs: number[] = [];
    const overheadStatuses: Record<string, number> = {};
    let overheadMismatch = 0;
    const idsMs: number[] = [], healthMs: number[] = [];
    for (let k = 0; k < OVERHEAD_ROUNDS; k++) {
      const blocks = [
        async () => { for (let i = 0; i < OVERHEAD_BLOCK; i++) { const t0 = performance.now(); await direct!.generate(smallReq); directMs.push(performance.now() - t0); } },
        async () => {
          for (let i = 0; i < OVERHEAD_BLOCK; i++) {
            const r = await call(agent, A, 'POST', '/v1/completions', smallBody('plain'));
            overheadStatuses[r.status] = (overheadStatuses[r.status] ?? 0) + 1;
            if (r.status === 200) {
              gatewayMs.push(r.ms);
              if ((JSON.parse(r.body) as { choices: Array<{ text: string }> }).choices[0]!.text !== directResult.choices[0]!.text) overheadMismatch++;
            }
          }
        },
        // Diagnostics (not the target): the same request with the prompt as token ids (no tokenizing in the
        // gateway), and GET /healthz (the HTTP round trip alone, on the same kind of connection).
        async () => {
          for (let i = 0; i < OVERHEAD_BLOCK; i++) {
            const r = await call(agent, A, 'POST', '/v1/completions', { ...smallBody('plain'), prompt: smallIds });
            overheadStatuses[r.status] = (overheadStatuses[r.status] ?? 0) + 1;
            if (r.status === 200) idsMs.push(r.ms);
          }
        },
        async () => {
          for (let i = 0; i < OVERHEAD_BLOCK; i++) {
            const r = await call(agent, A, 'GET', '/healthz');
            if (r.status === 200) healthMs.push(r.ms);
            else overheadStatuses[`healthz ${r.status}`] = (overheadStatuses[`healthz ${r.status}`] ?? 0) + 1;
          }
        },
      ];
      for (let j = 0; j < blocks.length; j++) await blocks[(j + k) % blocks.length]!(); // each block in each position
      if (k % 5 === 4 || k === OVERHEAD_ROUNDS - 1) {
        log(`overhead round ${k + 1}/${OVERHEAD_ROUNDS}: direct p50 ${quantile(directMs, 0.5).toFixed(2)} p99 ${quantile(directMs, 0.99).toFixed(2)} ms; gateway p50 ${quantile(gatewayMs, 0.5).toFixed(2)} p99 ${quantile(gatewayMs, 0.99).toFixed(2)} ms`);
      }
    }
    const overhead = {
      direct_p50_ms: r3(quantile(directMs, 0.5)), gateway_p50_ms: r3(quantile(gatewayMs, 0.5)),
      direct_p99_ms: r3(quantile(directMs, 0.99)), gateway_p99_ms: r3(quantile(gatewayMs, 0.99)),
      samples: { direct: directMs.length, gateway: gatewayMs.length },
      gateway_token_ids_prompt_p50_ms: r3(quantile(idsMs, 0.5)), gateway_token_ids_prompt_p99_ms: r3(quantile(idsMs, 0.99)),
      healthz_p50_ms: r3(quantile(healthMs, 0.5)), healthz_p99_ms: r3(quantile(healthMs, 0.99)),
      statuses: overheadStatuses, text_mismatches: overheadMismatch,
    };

    // ---- 2. max throughput ------------------------------------------------------------------------------------
    const maxPool = new Pool();
    let cpu = cpuMeter(pidA);
    maxPool.add(await closedLoop({ url: completions(A), clients: CLIENTS, durationMs: maxMs, request: loadRequest('plain') }), cpu());
    log(`max throughput (A plain, ${CLIENTS} clients, ${LOAD_MAX_TOKENS} tokens): ${maxPool.line()}`);
    const maxRps = maxPool.rps;
    noteRss('after max throughput');
    if (!(maxRps > 0)) throw new Error(`no successful request in the max-throughput run: ${JSON.stringify(maxPool.summary())}`);

    // ---- 3. batching: A vs B (and, for reference, the same closed loop on the direct backend in this process) ------
    const batchA = new Pool(), batchB = new Pool(), batchDirect = new Pool();
    const batchSizes: Record<string, { forwards: number; sequences: number }> = { A: { forwards: 0, sequences: 0 }, B: { forwards: 0, sequences: 0 } };
    for (let k = 0; k < rounds; k++) {
      const order: Array<[Pool, string | null, string]> = [[batchA, A, 'A'], [batchB, B, 'B'], [batchDirect, null, 'direct']];
      if (k % 2) order.reverse();
      for (const [pool, base, name] of order) {
        if (base === null) {
          pool.add(await directClosedLoop(direct, CLIENTS, closedMs, (i) => ({ ...smallReq, promptIds: promptIds[i % promptIds.length]!, maxTokens: LOAD_MAX_TOKENS, temperature: 1, seed: seedCounter++ })));
        } else {
          const pid = base === A ? pidA : pidB;
          const before = await batchMetric(agent, base);
          cpu = cpuMeter(pid);
          const result = await closedLoop({ url: completions(base), clients: CLIENTS, durationMs: closedMs, request: loadRequest('plain') });
          pool.add(result, cpu());
          const after = await batchMetric(agent, base);
          batchSizes[name]!.forwards += after.count - before.count;
          batchSizes[name]!.sequences += after.sum - before.sum;
        }
        log(`batching round ${k + 1}/${rounds} ${name}: ${pool.line()}`);
      }
    }

    // ---- 4. shadow at a fixed rate ----------------------------------------------------------------------------
    const openRate = 0.25 * maxRps;
    const shPlain = new Pool(), shShadowed = new Pool();
    const drainsMs: number[] = [];
    for (let k = 0; k < rounds; k++) {
      const order: Array<[Pool, string]> = [[shPlain, 'plain'], [shShadowed, 'shadowed']];
      if (k % 2) order.reverse();
      for (const [pool, model] of order) {
        cpu = cpuMeter(pidA);
        const result = await openLoop({ url: completions(A), ratePerS: openRate, durationMs: openMs, request: loadRequest(model) });
        if (model === 'shadowed') drainsMs.push(await drainShadow()); // the shadow's left-over work is this condition's CPU
        pool.add(result, cpu());
        log(`shadow open loop ${openRate.toFixed(2)} rps, round ${k + 1}/${rounds} ${model}: ${pool.line()}`);
      }
    }
    const afterOpen = (await comparison()).shadows[0]!;
    noteRss('after shadow open loop');

    // ---- 5. shadow at saturation ------------------------------------------------------------------------------
    const satPlain = new Pool(), satShadowed = new Pool();
    const satBatch = { plain: { forwards: 0, sequences: 0 }, shadowed: { forwards: 0, sequences: 0 } };
    for (let k = 0; k < rounds; k++) {
      const order: Array<[Pool, string]> = [[satPlain, 'plain'], [satShadowed, 'shadowed']];
      if (k % 2) order.reverse();
      for (const [pool, model] of order) {
        const before = await batchMetric(agent, A, `${MODEL}@v1`);
        cpu = cpuMeter(pidA);
        const result = await closedLoop({ url: completions(A), clients: CLIENTS, durationMs: closedMs, request: loadRequest(model) });
        const after = await batchMetric(agent, A, `${MODEL}@v1`); // the primary's decode forwards in the round
        if (model === 'shadowed') drainsMs.push(await drainShadow());
        pool.add(result, cpu());
        const fw = satBatch[model as 'plain' | 'shadowed'];
        fw.forwards += after.count - before.count;
        fw.sequences += after.sum - before.sum;
        log(`shadow saturated, round ${k + 1}/${rounds} ${model}: ${pool.line()}`);
      }
    }
    const shadowEnd = (await comparison()).shadows[0]!;
    noteRss('after shadow saturated');

    // ---- 6. switching under load ------------------------------------------------------------------------------
    const switchRate = 0.5 * maxRps;
    const adminCalls: Array<{ action: string; status: number | string; ms: number }> = [];
    let loadDone = false;
    const switcher = (async () => {
      let toV2 = true;
      while (!loadDone) {
        const t0 = performance.now();
        const action = toV2 ? 'put-v2' : 'rollback';
        try {
          const r = toV2
            ? await call(agent, A, 'PUT', '/admin/deployments/switch', { primary: { model: MODEL, version: 2 }, reason: 'bench' }, admin)
            : await call(agent, A, 'POST', '/admin/deployments/switch/rollback', { reason: 'bench' }, admin);
          adminCalls.push({ action, status: r.status, ms: r.ms });
          if (r.status !== 200) log(`admin ${action}: ${r.status} ${r.body.slice(0, 200)}`);
        } catch (err) {
          adminCalls.push({ action, status: (err as Error).message, ms: performance.now() - t0 });
        }
        toV2 = !toV2;
        await sleep(SWITCH_EVERY_MS - (performance.now() - t0));
      }
    })();
    const switchPool = new Pool();
    try {
      switchPool.add(await openLoop({ url: completions(A), ratePerS: switchRate, durationMs: openMs, request: loadRequest('switch') }));
    } finally {
      loadDone = true;
      await switcher;
    }
    const switches = adminCalls.filter((c) => c.status === 200).length;
    log(`switch open loop ${switchRate.toFixed(2)} rps with ${switches}/${adminCalls.length} switches: ${switchPool.line()}`);
    noteRss('after switching');
    const audit = await call(agent, A, 'GET', '/admin/deployments/switch/audit', undefined, admin);
    const auditEntries = audit.status === 200 ? (JSON.parse(audit.body) as { audit?: unknown[] }).audit : undefined;
    agent.destroy();

    // ---- results ----------------------------------------------------------------------------------------------
    const droppedSum = (d: Record<string, number>) => Object.values(d).reduce((x, y) => x + y, 0);
    const results = {
      decode_step_ms_by_batch: decodeMs,
      decode_batch16_cost_ratio: r2(decodeMs[16]! / decodeMs[1]!),
      overhead_p50_ms: r3(overhead.gateway_p50_ms - overhead.direct_p50_ms),
      overhead_p99_ms: r3(overhead.gateway_p99_ms - overhead.direct_p99_ms),
      max_throughput_rps: r2(maxRps),
      batching_speedup: r2(batchA.rps / batchB.rps),
      shadow_p99_increase: r3(quantile(shShadowed.latencies, 0.99) / quantile(shPlain.latencies, 0.99) - 1),
      shadow_saturated_throughput: r3(satShadowed.rps / satPlain.rps),
      failed_requests: switchPool.failed,
    };
    const met = Object.fromEntries(Object.entries(TARGETS).map(([key, target]) => {
      const value = results[key as keyof typeof results] as number;
      return [key, Number.isFinite(value) && (AT_MOST.has(key) ? value <= target : value >= target)];
    }));
    const elapsedS = r2((performance.now() - started) / 1000);
    log(`done in ${elapsedS} s`);
    return {
      ...results,
      direct_p50_ms: overhead.direct_p50_ms,
      gateway_p50_ms: overhead.gateway_p50_ms,
      direct_p99_ms: overhead.direct_p99_ms,
      gateway_p99_ms: overhead.gateway_p99_ms,
      shadow_compared: shadowEnd.comparison.count,
      shadow_dropped: droppedSum(shadowEnd.dropped),
      switches,
      switch_ms_max: r2(Math.max(...adminCalls.map((c) => c.ms))),
      targets: TARGETS,
      met,
      details: {
        compute_backend: compute.name,
        kv_cache: (direct as GptBackend).kvCache.engine, // paged (paged-gpt.ts) or tensor (batched-gpt.ts): what A, B and the direct calls serve with
        model: { ...config, versions },
        small_prompt_tokens: smallIds.length,
        load_prompt_tokens: promptLens,
        seconds, rounds, elapsed_s: elapsedS,
        warmup: warm,
        overhead,
        max_throughput: maxPool.summary(),
        batching: {
          A: { ...batchA.summary(), mean_batch_size: r2(batchSizes.A!.sequences / batchSizes.A!.forwards) },
          B: { ...batchB.summary(), mean_batch_size: r2(batchSizes.B!.sequences / batchSizes.B!.forwards) },
          direct_in_process: batchDirect.summary(),
          gateway_A_vs_direct_throughput: r3(batchA.rps / batchDirect.rps),
        },
        shadow_open_loop: {
          rate_rps: r2(openRate), plain: shPlain.summary(), shadowed: shShadowed.summary(),
          shadow_after: { offered: afterOpen.offered, compared: afterOpen.comparison.count, dropped: afterOpen.dropped },
        },
        shadow_saturated: {
          plain: { ...satPlain.summary(), primary_decode_forwards: satBatch.plain.forwards, primary_mean_batch_size: r2(satBatch.plain.sequences / satBatch.plain.forwards) },
          shadowed: { ...satShadowed.summary(), primary_decode_forwards: satBatch.shadowed.forwards, primary_mean_batch_size: r2(satBatch.shadowed.sequences / satBatch.shadowed.forwards) },
        },
        shadow_end: { offered: shadowEnd.offered, compared: shadowEnd.comparison.count, comparison_errors: shadowEnd.comparison.errors, dropped: shadowEnd.dropped },
        shadow_drain_ms: drainsMs.map(Math.round),
        gateway_rss_mib: rss,
        switch: {
          rate_rps: r2(switchRate), load: switchPool.summary(),
          admin_calls: adminCalls.length, admin_statuses: adminCalls.reduce<Record<string, number>>((acc, c) => { acc[String(c.status)] = (acc[String(c.status)] ?? 0) + 1; return acc; }, {}),
          admin_ms: adminCalls.map((c) => r2(c.ms)),
          audit_entries: auditEntries?.length ?? null,
        },
        gateway_stderr: Object.fromEntries(gateways.map((g, i) => [i === 0 ? 'A' : 'B', g.stderr().slice(-1500)])),
      },
    };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await Promise.resolve(direct?.close?.()).catch(() => {});
    cleanup();
  }
}
