/**
 * Continuous (iteration-level) batching, as Orca and vLLM schedule generation, simplified: every choice of every
 * request is a sequence, and one loop per backend advances all running sequences together, one token per
 * iteration, through ONE decode forward pass for the whole batch.
 *
 * An iteration: (1) admit waiting sequences, first come first served, up to maxBatchSize running, and prefill the
 * prompts of newly admitted requests together (a request's choices share its prompt's cache); (2) sample one
 * token for every sequence with its own settings and random stream, releasing text to onToken; (3) retire
 * finished and aborted sequences and start rows for the new ones; (4) one decode forward for every remaining row;
 * then yield to the event loop, where new requests and aborts come in. A sequence's tokens depend only on its own
 * logits and random stream (seededRandom(seed, choice)), and the engine computes each row independently of the
 * others, so a request gets the same output alone or batched.
 *
 * maxWaitMs: an idle scheduler (nothing running) that has fewer waiting sequences than a full batch waits up to
 * maxWaitMs from the oldest arrival for company before starting. Once sequences run, newcomers join at the next
 * iteration without waiting: running sequences never stall for company.
 *
 * Priorities: a request is foreground (a client's) or background (a shadow mirror). Foreground sequences are
 * admitted first; background ones only when no foreground work is waiting or running here, and — through the
 * gateway's PriorityGate (priority-gate.ts) — on no other backend either: a scheduler with only background work
 * parks before each iteration while the gate is busy. Background rows already running when a client request arrives
 * on the same backend ride along in its forwards until they finish (a few extra rows cost little in one forward).
 *
 * The model side is a `BatchEngine` (batched-gpt.ts for the GPT): rows of a batched KV cache, advanced together.
 *
 * Long: one loop whose four steps (admit, sample, retire, decode) share the running batch's rows and their order;
 * the pure pieces (settings, the admission decision) sit at the top, the loop below them.
 */
import { GatewayError } from './errors.ts';
import type { PriorityGate } from './priority-gate.ts';
import type { GenerateOptions, GenerateRequest, GenerateResult, GeneratedChoice, GeneratedToken, TokenLogprob } from './inference-backend.ts';
import { logSoftmax, sampleToken, tokenLogprob } from './sampling.ts';
import { seededRandom } from '../common/random.ts';
import { StopSequenceCutter } from './stop-sequences.ts';

// ---------------------------------------------------------------------------------------------------- settings

export interface BatchSettings {
  /** Sequences (choices) in one forward pass at most; 1 turns batching off. */
  readonly maxBatchSize: number;
  /** How long an idle backend waits for more requests before starting a batch that is not full, in ms. */
  readonly maxWaitMs: number;
  /**
   * Sequences (choices) that may wait for a row at most. A request that would wait beyond it is refused at once
   * (GW_ERR_OVERLOADED, 503 with Retry-After) instead of waiting past any deadline its client has.
   */
  readonly maxQueue: number;
  /**
   * Prompt tokens run per iteration at most (chunked prefill, as vLLM and Sarathi-Serve do it): a longer prompt is
   * run in chunks of this many tokens, one chunk per iteration, between the running batch's decode steps, so a
   * long prompt delays the others' next tokens by one chunk's forward, not by its whole prefill.
   */
  readonly prefillChunk: number;
}

export const DEFAULT_BATCH_SETTINGS: BatchSettings = Object.freeze({
  maxBatchSize: 16, // the API's largest n: one request's choices always fit in one batch
  maxWaitMs: 2, // a few ms of latency for a chance to share the first forwards
  maxQueue: 256, // 16 full batches waiting: past that a client is better told to come back than kept waiting
  prefillChunk: 512, // vLLM's smallest max_num_batched_tokens; on GPT-2-small and wasm, a chunk's forward ~ 1–2 s
});

export const MAX_BATCH_SIZE = 1024;
export const MAX_BATCH_WAIT_MS = 10_000;
export const MAX_QUEUE = 1_000_000;
export const MAX_PREFILL_CHUNK = 1 << 20;
const RETRY_AFTER_MAX_S = 60;

/** Validates settings (unknown keys refused, absent ones from `base`) and freezes a copy. */
export function batchSettings(raw: Partial<BatchSettings> = {}, base: BatchSettings = DEFAULT_BATCH_SETTINGS): BatchSettings {
  for (const key of Object.keys(raw)) {
    if (key !== 'maxBatchSize' && key !== 'maxWaitMs' && key !== 'maxQueue' && key !== 'prefillChunk') throw new GatewayError('GW_ERR_BAD_ARGS', `batch settings: unknown key '${key}'`);
  }
  const { maxBatchSize = base.maxBatchSize, maxWaitMs = base.maxWaitMs, maxQueue = base.maxQueue, prefillChunk = base.prefillChunk } = raw;
  if (!Number.isInteger(maxBatchSize) || maxBatchSize < 1 || maxBatchSize > MAX_BATCH_SIZE) {
    throw new GatewayError('GW_ERR_BAD_ARGS', `maxBatchSize must be an integer in [1, ${MAX_BATCH_SIZE}], got ${String(maxBatchSize)}`);
  }
  if (!Number.isFinite(maxWaitMs) || maxWaitMs < 0 || maxWaitMs > MAX_BATCH_WAIT_MS) {
    throw new GatewayError('GW_ERR_BAD_ARGS', `maxWaitMs must be a number of ms in [0, ${MAX_BATCH_WAIT_MS}], got ${String(maxWaitMs)}`);
  }
  if (!Number.isInteger(maxQueue) || maxQueue < 1 || maxQueue > MAX_QUEUE) {
    throw new GatewayError('GW_ERR_BAD_ARGS', `maxQueue must be an integer in [1, ${MAX_QUEUE}], got ${String(maxQueue)}`);
  }
  if (!Number.isInteger(prefillChunk) || prefillChunk < 1 || prefillChunk > MAX_PREFILL_CHUNK) {
    throw new GatewayError('GW_ERR_BAD_ARGS', `prefillChunk must be an integer in [1, ${MAX_PREFILL_CHUNK}], got ${String(prefillChunk)}`);
  }
  return Object.freeze({ maxBatchSize, maxWaitMs, maxQueue, prefillChunk });
}

// ---------------------------------------------------------------------------------------------------- the decision

export type Admission = { readonly kind: 'admit'; readonly count: number } | { readonly kind: 'wait'; readonly ms: number };

/**
 * How many waiting sequences to admit now, or how long to wait for more: pure, so it is tested with a table.
 * `oldestWaitMs` is how long the first waiting sequence has waited.
 */
export function admission(state: { running: number; waiting: number; oldestWaitMs: number }, settings: Pick<BatchSettings, 'maxBatchSize' | 'maxWaitMs'>): Admission {
  const free = settings.maxBatchSize - state.running;
  if (state.waiting === 0 || free <= 0) return { kind: 'admit', count: 0 };
  const count = Math.min(free, state.waiting);
  if (state.running > 0 || state.waiting >= free || state.oldestWaitMs >= settings.maxWaitMs) return { kind: 'admit', count };
  return { kind: 'wait', ms: settings.maxWaitMs - state.oldestWaitMs };
}

// ---------------------------------------------------------------------------------------------------- the engine

export interface PrefillInput<Prompt> {
  /** The chunk's token ids: the whole prompt, or its next part when `from` is given. */
  ids: readonly number[];
  /** Logits of every position of the chunk are wanted (echo with logprobs), not only of the last. */
  allPositions: boolean;
  /**
   * The prompt cached so far, which this chunk continues (chunked prefill). The engine takes it over: on success
   * the output's prompt replaces it (it may be the same object, extended); on failure it is still the caller's.
   */
  from?: Prompt;
}

export interface PrefillOutput<Prompt> {
  /** [rows, logitsWidth]: every position's logits when allPositions, else the last position's. */
  logits: Float32Array;
  /** The prompt's cache, to start rows from (arrange) until released. */
  prompt: Prompt;
}

/** What the scheduler needs from a model: a batch of rows, each a sequence's KV cache, advanced together. */
export interface BatchEngine<Prompt> {
  /** Width of a logits row (the model's vocabulary, which may have spare ids beyond the tokenizer's). */
  readonly logitsWidth: number;
  /** Runs prompt chunks through the model, fresh ones together (a GPU backend's logits come back asynchronously). */
  prefill(prompts: ReadonlyArray<PrefillInput<Prompt>>): Array<PrefillOutput<Prompt>> | Promise<Array<PrefillOutput<Prompt>>>;
  /** The batch becomes: current rows `keep` (indices, in that order), then one new row per entry of `add`. */
  arrange(keep: readonly number[], add: readonly Prompt[]): void;
  /** Feeds tokens[b] to row b, all rows in one forward; returns the next logits of every row, [rows, logitsWidth]. */
  decode(tokens: readonly number[]): Float32Array | Promise<Float32Array>;
  /**
   * Optional: one forward for a whole iteration, the rows' next tokens and prompt chunks together (vLLM's mixed
   * batches): decode's logits, and each chunk's output as prefill gives it. An engine with it runs one forward an
   * iteration instead of two.
   */
  step?(tokens: readonly number[], chunks: ReadonlyArray<PrefillInput<Prompt>>): Promise<{ logits: Float32Array; outputs: Array<PrefillOutput<Prompt>> }>;
  /** Frees a prompt's cache (rows started from it hold their own copy). */
  release(prompt: Prompt): void;
  /** Drops every row. */
  clear(): void;
}

/** What the scheduler needs from a tokenizer to release text. */
export interface TokenText {
  /** Ids at or beyond this are never sampled (spare rows of the model). */
  readonly vocabSize: number;
  readonly endOfText: number | undefined;
  tokenBytes(id: number): Uint8Array;
  tokenString(id: number): string;
}

// ---------------------------------------------------------------------------------------------------- the scheduler

const FINISH_WINDOW = 64; // finished sequences the drain rate (Retry-After) is measured over
const BACKGROUND_CHUNK = 32; // background prompt tokens per step, all requests together: a step's cost stays near a decode's

/** A request in flight. */
class Job<Prompt> {
  readonly choices: GeneratedChoice[] = [];
  unfinished: number;
  admitted = 0; // choices given a row (or finished at admission)
  prefilled = 0; // prompt tokens cached so far
  cached: Prompt | undefined; // the engine's cache of the prompt (whole or in part) until released
  promptRows: Float32Array[] = []; // every position's logits, chunk by chunk (echo with logprobs)
  prompt: PrefillOutput<Prompt> | undefined; // the whole prompt's: held until every choice is admitted
  promptLogprobs: Array<TokenLogprob | null> | null = null;
  settled = false;
  startedMs = -1; // first admission
  parkedMs = 0; // time parked behind foreground work since
  readonly wantsPromptLogprobs: boolean;
  constructor(
    readonly req: GenerateRequest,
    readonly opts: GenerateOptions,
    readonly resolve: (r: GenerateResult) => void,
    readonly reject: (e: unknown) => void,
  ) {
    this.unfinished = req.n;
    this.wantsPromptLogprobs = req.echo && req.logprobs !== undefined;
  }
}

/** One choice of a request: its random stream, stop-sequence cutter and what it has released. */
class Sequence<Prompt> {
  readonly random: () => number;
  readonly cutter: StopSequenceCutter;
  readonly utf8 = new TextDecoder('utf-8', { ignoreBOM: true });
  readonly tokens: GeneratedToken[] = [];
  readonly enqueuedMs = performance.now();
  readonly foreground: boolean;
  sampled = 0;
  endOfText = false;
  done = false;
  logits: Float32Array = new Float32Array(0); // next-token logits, tokenizer vocabulary wide
  next = -1; // the token to feed in this iteration's decode
  constructor(
    readonly job: Job<Prompt>,
    readonly index: number,
  ) {
    this.random = seededRandom(job.req.seed, index);
    this.cutter = new StopSequenceCutter(job.req.stop);
    this.foreground = job.opts.priority !== 'background';
  }
}

export class BatchScheduler<Prompt> {
  readonly #engine: BatchEngine<Prompt>;
  readonly #text: TokenText;
  #settings: BatchSettings;
  #onBatch: ((size: number) => void) | undefined;
  #onQueue: ((waiting: number) => void) | undefined;
  #onAdmit: ((waitMs: number) => void) | undefined;
  #gate: PriorityGate | undefined;
  readonly #finishedMs: number[] = []; // when the last sequences finished (a ring of FINISH_WINDOW): the drain rate
  #waiting: Array<Sequence<Prompt>> = []; // foreground first, each class in arrival order
  #running: Array<Sequence<Prompt>> = []; // row b of the engine is #running[b]
  #prefilling: Array<Sequence<Prompt>> = []; // admitted, holding a place in the batch, their prompt not yet all run
  readonly #prompted = new Set<Job<Prompt>>(); // jobs holding a prompt cache
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #parked = false; // waiting for the gate: only background work here, foreground work elsewhere
  #closed = false;

  constructor(engine: BatchEngine<Prompt>, text: TokenText, settings: BatchSettings = DEFAULT_BATCH_SETTINGS, onBatch?: (size: number) => void) {
    this.#engine = engine;
    this.#text = text;
    this.#settings = settings;
    this.#onBatch = onBatch;
  }

  /** Sequences waiting for a row now. */
  get waiting(): number {
    return this.#waiting.length;
  }

  get settings(): BatchSettings {
    return this.#settings;
  }

  /**
   * New settings apply from the next iteration; `onBatch` is called with the rows of every decode forward, `onQueue`
   * with the waiting sequences after each admission; `gate` is shared with the gateway's other backends.
   */
  configure(settings: BatchSettings, hooks: { onBatch?: (size: number) => void; onQueue?: (waiting: number) => void; onAdmit?: (waitMs: number) => void; gate?: PriorityGate } = {}): void {
    this.#settings = settings;
    if (hooks.onBatch) this.#onBatch = hooks.onBatch;
    if (hooks.onQueue) this.#onQueue = hooks.onQueue;
    if (hooks.onAdmit) this.#onAdmit = hooks.onAdmit;
    if (hooks.gate) this.#gate = hooks.gate;
  }

  /**
   * Whether a request of `n` choices can be taken now (what free rows do not hold waits, up to maxQueue): undefined,
   * or the GW_ERR_OVERLOADED error it gets (with `retryAfterS` from how fast this backend has been finishing sequences). Foreground requests count the foreground
   * sequences ahead of them, background ones every waiting sequence. Checked again by submit.
   */
  refusal(n: number, priority: GenerateOptions['priority'] = 'foreground'): GatewayError | undefined {
    const ahead = priority === 'background' ? this.#waiting.length : this.#foregroundWaiting();
    const freeRows = Math.max(0, this.#settings.maxBatchSize - this.#admittedCount());
    const excess = ahead + n - freeRows - this.#settings.maxQueue; // sequences that would wait beyond the bound
    if (excess <= 0) return undefined;
    const retryAfterS = this.#retryAfterS(excess);
    return new GatewayError('GW_ERR_OVERLOADED', `The model is overloaded: ${ahead} sequences are waiting (the queue holds ${this.#settings.maxQueue}). Retry after ${retryAfterS} s.`, { retryAfterS });
  }

  submit(req: GenerateRequest, opts: GenerateOptions = {}): Promise<GenerateResult> {
    if (this.#closed) return Promise.reject(new Error('the backend is closed'));
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(signal.reason ?? new Error('aborted'));
    const refused = this.refusal(req.n, opts.priority);
    if (refused) return Promise.reject(refused);
    return new Promise<GenerateResult>((resolve, reject) => {
      const onAbort = () => this.#fail(job, signal!.reason ?? new Error('aborted'));
      const job: Job<Prompt> = new Job(
        req,
        opts,
        (r) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(r);
        },
        (e) => {
          signal?.removeEventListener('abort', onAbort);
          reject(e);
        },
      );
      signal?.addEventListener('abort', onAbort, { once: true });
      const sequences = Array.from({ length: req.n }, (_, i) => new Sequence(job, i));
      if (opts.priority === 'background') this.#waiting.push(...sequences);
      else {
        this.#waiting.splice(this.#foregroundWaiting(), 0, ...sequences); // after the foreground ones, before the background
        this.#gate?.enter(this);
        if (this.#parked) this.#wake?.();
      }
      if (this.#waiting.length >= this.#settings.maxBatchSize) this.#wake?.();
      this.#loop ??= this.#run();
    });
  }

  /** Rejects everything in flight and stops the loop. */
  async close(): Promise<void> {
    this.#closed = true;
    const error = new Error('the backend is closed');
    for (const s of [...this.#running, ...this.#prefilling, ...this.#waiting]) this.#fail(s.job, error);
    this.#running = [];
    this.#prefilling = [];
    this.#waiting = [];
    this.#engine.clear();
    this.#releasePrompts();
    this.#gate?.leave(this);
    this.#wake?.();
    await this.#loop;
  }

  async #run(): Promise<void> {
    for (;;) {
      await new Promise((r) => setImmediate(r)); // new requests and aborts come in between iterations
      if (this.#closed) break;
      if (this.#admittedCount() === 0 && this.#waiting.length === 0) break;
      const foreground = this.#holdGate();
      if (!foreground && this.#gate?.busy) {
        await this.#park(this.#gate);
        continue;
      }
      // Background sequences join only when nothing here is foreground (and, checked above, nothing elsewhere).
      const admissible = foreground ? this.#foregroundWaiting() : this.#waiting.length;
      const oldest = this.#waiting[0];
      const decision = admission(
        { running: this.#admittedCount(), waiting: admissible, oldestWaitMs: oldest ? performance.now() - oldest.enqueuedMs : 0 },
        this.#settings,
      );
      if (decision.kind === 'wait') {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, decision.ms);
          this.#wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.#wake = undefined;
        continue;
      }
      const admitted = this.#waiting.splice(0, decision.count);
      try {
        await this.#iterate(admitted);
      } catch (err) {
        // The engine failed (out of memory, say): the sequences of this iteration fail; waiting ones go on.
        for (const s of [...this.#running, ...admitted]) this.#fail(s.job, err);
        this.#running = [];
        this.#engine.clear();
      }
      this.#releasePrompts();
      this.#onQueue?.(this.#waiting.length);
    }
    this.#gate?.leave(this);
    this.#loop = undefined; // synchronously after the emptiness check: a submit from now on starts a new loop
  }

  /** Sequences holding a place in the batch: running, or admitted while their prompt runs. */
  #admittedCount(): number {
    return this.#running.length + this.#prefilling.length;
  }

  /** Waiting foreground sequences: they come first in #waiting. */
  #foregroundWaiting(): number {
    const i = this.#waiting.findIndex((s) => !s.foreground);
    return i === -1 ? this.#waiting.length : i;
  }

  /** Holds the gate while foreground work is waiting or running here, lets go otherwise; true when there is some. */
  #holdGate(): boolean {
    const busy = (s: Sequence<Prompt>) => s.foreground && !s.done && !s.job.settled;
    const foreground = this.#waiting[0]?.foreground === true || this.#running.some(busy) || this.#prefilling.some(busy);
    if (foreground) this.#gate?.enter(this);
    else this.#gate?.leave(this);
    return foreground;
  }

  /** Only background work here and foreground work elsewhere: wait until the gate is idle or a client request comes. */
  async #park(gate: PriorityGate): Promise<void> {
    this.#parked = true;
    const since = performance.now();
    await Promise.race([gate.idle(), new Promise<void>((resolve) => (this.#wake = resolve))]);
    this.#parked = false;
    this.#wake = undefined;
    const parked = performance.now() - since;
    for (const job of new Set([...this.#running, ...this.#prefilling].map((s) => s.job))) job.parkedMs += parked;
  }

  async #iterate(admitted: ReadonlyArray<Sequence<Prompt>>): Promise<void> {
    for (const s of admitted) {
      if (s.job.admitted++ === 0) {
        s.job.startedMs = performance.now();
        this.#onAdmit?.(s.job.startedMs - s.enqueuedMs);
      }
    }
    this.#prefilling.push(...admitted);
    // 1. Run up to prefillChunk prompt tokens, oldest request first: fresh prompts together (grouped by length,
    //    usually one forward), a prompt too long for what is left of the budget in chunks, one per iteration. An
    //    engine with `step` runs them in step 4's forward instead, and their requests join at the next iteration.
    const fused = this.#engine.step !== undefined;
    if (!fused) await this.#runChunks(this.#nextChunks());
    const ready = this.#prefilling.filter((s) => s.job.prompt !== undefined && !s.job.settled);
    this.#prefilling = this.#prefilling.filter((s) => s.job.prompt === undefined && !s.job.settled);
    const width = this.#engine.logitsWidth;
    for (const s of ready) {
      const { logits } = s.job.prompt!;
      const last = logits.length / width - 1;
      s.logits = logits.subarray(last * width, last * width + this.#text.vocabSize);
    }

    // 2. One token for every sequence, each with its own settings and random stream.
    for (const s of [...this.#running, ...ready]) if (!s.job.settled && !s.done) this.#sample(s);

    // 3. Retire finished and aborted sequences; start rows for the new ones from their prompt's cache.
    const alive = (s: Sequence<Prompt>) => !s.done && !s.job.settled;
    const keep = this.#running.flatMap((s, b) => (alive(s) ? [b] : []));
    const added = ready.filter(alive);
    this.#engine.arrange(keep, added.map((s) => s.job.prompt!.prompt));
    this.#running = [...keep.map((b) => this.#running[b]!), ...added];

    // 4. One decode forward for the whole batch (with the prompt chunks, on an engine with `step`).
    const chunks = fused ? this.#nextChunks() : [];
    if (this.#running.length === 0 && chunks.length === 0) return;
    if (this.#running.length > 0) this.#onBatch?.(this.#running.length);
    const tokens = this.#running.map((s) => s.next);
    let logits: Float32Array;
    if (fused) logits = (await this.#runChunks(chunks, (inputs) => this.#engine.step!(tokens, inputs)))!; // a failure: to #run, for the rows
    else logits = await this.#engine.decode(tokens);
    this.#running.forEach((s, b) => (s.logits = logits.subarray(b * width, b * width + this.#text.vocabSize)));
  }

  /**
   * The prompt chunks to run this iteration: up to prefillChunk tokens of the admitted requests', oldest first; of
   * background requests' (shadows') at most BACKGROUND_CHUNK a step all together, so that a step with shadow work in
   * it ends soon and a client request that comes meanwhile waits little (shadow work is preempted between steps: the
   * gate). With a cap per request instead, shadows' prompt-only steps took 7 ms at the median and up to 18 ms on the
   * gateway bench's model, where a 1-row decode step takes 1.4 ms.
   */
  #nextChunks(): Array<{ job: Job<Prompt>; take: number }> {
    let budget = this.#settings.prefillChunk;
    let background = BACKGROUND_CHUNK;
    const chunks: Array<{ job: Job<Prompt>; take: number }> = [];
    for (const job of new Set(this.#prefilling.map((s) => s.job))) {
      if (budget === 0) break;
      if (job.settled || job.prompt !== undefined) continue;
      const shadow = job.opts.priority === 'background';
      if (shadow && background === 0) continue;
      const take = Math.min(job.req.promptIds.length - job.prefilled, shadow ? Math.min(budget, background) : budget);
      chunks.push({ job, take });
      budget -= take;
      if (shadow) background -= take;
    }
    return chunks;
  }

  /**
   * Runs prompt chunks, through prefill or, given `forward`, in the iteration's one forward (whose decode logits it
   * returns); a request whose prompt is all run gets job.prompt. When the forward fails, the chunks' requests fail
   * (and, with `forward`, the error goes on to the caller, for the rows).
   */
  async #runChunks(chunks: Array<{ job: Job<Prompt>; take: number }>, forward?: (inputs: Array<PrefillInput<Prompt>>) => Promise<{ logits: Float32Array; outputs: Array<PrefillOutput<Prompt>> }>): Promise<Float32Array | undefined> {
    if (chunks.length === 0 && !forward) return undefined;
    const inputs = chunks.map(({ job, take }) => ({
      ids: job.req.promptIds.slice(job.prefilled, job.prefilled + take),
      allPositions: job.wantsPromptLogprobs,
      ...(job.cached === undefined ? {} : { from: job.cached }),
    }));
    let outputs: Array<PrefillOutput<Prompt>>;
    let logits: Float32Array | undefined;
    try {
      if (forward) ({ logits, outputs } = await forward(inputs));
      else outputs = await this.#engine.prefill(inputs);
    } catch (err) {
      for (const { job } of chunks) this.#fail(job, err); // without `forward` the batch itself is untouched: rows go on
      if (forward) throw err;
      return undefined;
    }
    outputs.forEach((out, i) => {
      const { job, take } = chunks[i]!;
      job.cached = out.prompt;
      this.#prompted.add(job);
      job.prefilled += take;
      if (job.wantsPromptLogprobs) job.promptRows.push(out.logits);
      if (job.prefilled < job.req.promptIds.length) return;
      job.prompt = { logits: job.wantsPromptLogprobs ? joinRows(job.promptRows) : out.logits, prompt: out.prompt };
      job.promptRows = [];
      if (job.wantsPromptLogprobs) this.#scorePrompt(job);
    });
    return logits;
  }

  /** Samples, releases text, and finishes the sequence at end-of-text, a stop sequence or max_tokens. */
  #sample(s: Sequence<Prompt>): void {
    const { req } = s.job;
    if (s.sampled === req.maxTokens) return this.#finish(s); // max_tokens 0 (echo only): nothing to sample
    const id = sampleToken(s.logits, req.temperature, req.topP, s.random);
    s.sampled++;
    if (id === this.#text.endOfText || req.stopTokenIds?.includes(id)) { // a chat template's end of turn too
      s.endOfText = true;
      return this.#finish(s);
    }
    const token: GeneratedToken = { id, text: s.utf8.decode(this.#text.tokenBytes(id), { stream: true }) };
    if (req.logprobs !== undefined) token.logprob = tokenLogprob(logSoftmax(s.logits), id, req.logprobs, (t) => this.#text.tokenString(t), (t) => this.#text.tokenBytes(t));
    this.#release(s, s.cutter.push(token).released);
    if (s.job.settled) return; // aborted from its own onToken
    if (s.cutter.stopped || s.sampled === req.maxTokens) return this.#finish(s);
    s.next = id;
  }

  #release(s: Sequence<Prompt>, released: GeneratedToken[]): void {
    if (released.length === 0) return;
    s.tokens.push(...released);
    this.#callback(s.job, () => s.job.opts.onToken?.({ choice: s.index, tokens: released }));
  }

  #finish(s: Sequence<Prompt>): void {
    s.done = true;
    this.#finishedMs.push(performance.now());
    if (this.#finishedMs.length > FINISH_WINDOW) this.#finishedMs.shift();
    if (!s.cutter.stopped) this.#release(s, s.cutter.flush());
    const { job } = s;
    if (job.settled) return;
    job.choices[s.index] = {
      index: s.index,
      tokens: s.tokens,
      text: s.tokens.map((t) => t.text).join(''),
      finishReason: s.cutter.stopped || s.endOfText ? 'stop' : 'length',
      sampledTokens: s.sampled,
    };
    if (--job.unfinished === 0) {
      job.settled = true;
      job.resolve({ choices: job.choices, promptLogprobs: job.promptLogprobs, serviceMs: performance.now() - job.startedMs - job.parkedMs });
    }
  }

  /** Echo with logprobs: position i's log-probability comes from the logits at i − 1. */
  #scorePrompt(job: Job<Prompt>): void {
    const { promptIds, logprobs } = job.req;
    const width = this.#engine.logitsWidth;
    const logits = job.prompt!.logits;
    job.promptLogprobs = promptIds.map((id, i) =>
      i === 0 ? null : tokenLogprob(logSoftmax(logits.subarray((i - 1) * width, (i - 1) * width + this.#text.vocabSize)), id, logprobs!, (t) => this.#text.tokenString(t), (t) => this.#text.tokenBytes(t)),
    );
    this.#callback(job, () => job.opts.onPromptLogprobs?.(job.promptLogprobs!));
  }

  /** Runs a client callback; one that throws fails its own request only. */
  #callback(job: Job<Prompt>, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#fail(job, err);
    }
  }

  /**
   * Seconds until `excess` more sequences are likely to have left the queue, at the rate the last FINISH_WINDOW
   * finished up to now (a stall since lowers it), 1 s when too few have finished to tell, at most RETRY_AFTER_MAX_S.
   */
  #retryAfterS(excess: number): number {
    const times = this.#finishedMs;
    if (times.length < 2) return 1;
    const perSecond = ((times.length - 1) * 1000) / Math.max(1, performance.now() - times[0]!);
    return Math.min(RETRY_AFTER_MAX_S, Math.max(1, Math.ceil(excess / perSecond)));
  }

  /** Rejects a request; its running rows are retired at the next arrange, its waiting sequences dropped now. */
  #fail(job: Job<Prompt>, error: unknown): void {
    if (job.settled) return;
    job.settled = true;
    this.#waiting = this.#waiting.filter((s) => s.job !== job);
    job.reject(error);
  }

  /** Frees the prompt caches no sequence will start from any more (a prompt half run included, once its request ended). */
  #releasePrompts(): void {
    const joining = new Set(this.#prefilling.map((s) => s.job)); // sequences still to start rows from their prompt
    for (const job of this.#prompted) {
      if (!job.settled && !this.#closed && (job.prompt === undefined || job.admitted < job.req.n || joining.has(job))) continue;
      this.#engine.release(job.cached!);
      job.cached = undefined;
      this.#prompted.delete(job);
    }
  }
}

/** Chunks' logits rows, one after another. */
function joinRows(parts: readonly Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
