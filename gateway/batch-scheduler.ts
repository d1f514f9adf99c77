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
 * The model side is a `BatchEngine` (batched-gpt.ts for the GPT): rows of a batched KV cache, advanced together.
 */
import { GatewayError } from './errors.ts';
import type { GenerateOptions, GenerateRequest, GenerateResult, GeneratedChoice, GeneratedToken, TokenLogprob } from './inference-backend.ts';
import { logSoftmax, sampleToken, seededRandom, tokenLogprob } from './sampling.ts';
import { StopSequenceCutter } from './stop-sequences.ts';

// ---------------------------------------------------------------------------------------------------- settings

export interface BatchSettings {
  /** Sequences (choices) in one forward pass at most; 1 turns batching off. */
  readonly maxBatchSize: number;
  /** How long an idle backend waits for more requests before starting a batch that is not full, in ms. */
  readonly maxWaitMs: number;
}

export const DEFAULT_BATCH_SETTINGS: BatchSettings = Object.freeze({
  maxBatchSize: 16, // the API's largest n: one request's choices always fit in one batch
  maxWaitMs: 2, // a few ms of latency for a chance to share the first forwards
});

export const MAX_BATCH_SIZE = 1024;
export const MAX_BATCH_WAIT_MS = 10_000;

/** Validates settings (unknown keys refused, absent ones from `base`) and freezes a copy. */
export function batchSettings(raw: Partial<BatchSettings> = {}, base: BatchSettings = DEFAULT_BATCH_SETTINGS): BatchSettings {
  for (const key of Object.keys(raw)) {
    if (key !== 'maxBatchSize' && key !== 'maxWaitMs') throw new GatewayError('GW_ERR_BAD_ARGS', `batch settings: unknown key '${key}'`);
  }
  const { maxBatchSize = base.maxBatchSize, maxWaitMs = base.maxWaitMs } = raw;
  if (!Number.isInteger(maxBatchSize) || maxBatchSize < 1 || maxBatchSize > MAX_BATCH_SIZE) {
    throw new GatewayError('GW_ERR_BAD_ARGS', `maxBatchSize must be an integer in [1, ${MAX_BATCH_SIZE}], got ${String(maxBatchSize)}`);
  }
  if (!Number.isFinite(maxWaitMs) || maxWaitMs < 0 || maxWaitMs > MAX_BATCH_WAIT_MS) {
    throw new GatewayError('GW_ERR_BAD_ARGS', `maxWaitMs must be a number of ms in [0, ${MAX_BATCH_WAIT_MS}], got ${String(maxWaitMs)}`);
  }
  return Object.freeze({ maxBatchSize, maxWaitMs });
}

// ---------------------------------------------------------------------------------------------------- the decision

export type Admission = { readonly kind: 'admit'; readonly count: number } | { readonly kind: 'wait'; readonly ms: number };

/**
 * How many waiting sequences to admit now, or how long to wait for more: pure, so it is tested with a table.
 * `oldestWaitMs` is how long the first waiting sequence has waited.
 */
export function admission(state: { running: number; waiting: number; oldestWaitMs: number }, settings: BatchSettings): Admission {
  const free = settings.maxBatchSize - state.running;
  if (state.waiting === 0 || free <= 0) return { kind: 'admit', count: 0 };
  const count = Math.min(free, state.waiting);
  if (state.running > 0 || state.waiting >= free || state.oldestWaitMs >= settings.maxWaitMs) return { kind: 'admit', count };
  return { kind: 'wait', ms: settings.maxWaitMs - state.oldestWaitMs };
}

// ---------------------------------------------------------------------------------------------------- the engine

export interface PrefillInput {
  ids: readonly number[];
  /** Logits of every position are wanted (echo with logprobs), not only of the last. */
  allPositions: boolean;
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
  /** Runs the prompts through the model in one forward. */
  prefill(prompts: readonly PrefillInput[]): Array<PrefillOutput<Prompt>>;
  /** The batch becomes: current rows `keep` (indices, in that order), then one new row per entry of `add`. */
  arrange(keep: readonly number[], add: readonly Prompt[]): void;
  /** Feeds tokens[b] to row b, all rows in one forward; returns the next logits of every row, [rows, logitsWidth]. */
  decode(tokens: readonly number[]): Float32Array;
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

/** A request in flight. */
class Job<Prompt> {
  readonly choices: GeneratedChoice[] = [];
  unfinished: number;
  admitted = 0; // choices given a row (or finished at admission)
  prompt: PrefillOutput<Prompt> | undefined; // held until every choice is admitted
  promptLogprobs: Array<TokenLogprob | null> | null = null;
  settled = false;
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
  }
}

export class BatchScheduler<Prompt> {
  readonly #engine: BatchEngine<Prompt>;
  readonly #text: TokenText;
  #settings: BatchSettings;
  #onBatch: ((size: number) => void) | undefined;
  #waiting: Array<Sequence<Prompt>> = [];
  #running: Array<Sequence<Prompt>> = []; // row b of the engine is #running[b]
  readonly #prompted = new Set<Job<Prompt>>(); // jobs holding a prompt cache
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #closed = false;

  constructor(engine: BatchEngine<Prompt>, text: TokenText, settings: BatchSettings = DEFAULT_BATCH_SETTINGS, onBatch?: (size: number) => void) {
    this.#engine = engine;
    this.#text = text;
    this.#settings = settings;
    this.#onBatch = onBatch;
  }

  get settings(): BatchSettings {
    return this.#settings;
  }

  /** New settings apply from the next iteration; `onBatch` is called with the rows of every decode forward. */
  configure(settings: BatchSettings, onBatch?: (size: number) => void): void {
    this.#settings = settings;
    if (onBatch) this.#onBatch = onBatch;
  }

  submit(req: GenerateRequest, opts: GenerateOptions = {}): Promise<GenerateResult> {
    if (this.#closed) return Promise.reject(new Error('the backend is closed'));
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(signal.reason ?? new Error('aborted'));
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
      for (let i = 0; i < req.n; i++) this.#waiting.push(new Sequence(job, i));
      if (this.#waiting.length >= this.#settings.maxBatchSize) this.#wake?.();
      this.#loop ??= this.#run();
    });
  }

  /** Rejects everything in flight and stops the loop. */
  async close(): Promise<void> {
    this.#closed = true;
    const error = new Error('the backend is closed');
    for (const s of [...this.#running, ...this.#waiting]) this.#fail(s.job, error);
    this.#running = [];
    this.#waiting = [];
    this.#engine.clear();
    this.#releasePrompts();
    this.#wake?.();
    await this.#loop;
  }

  async #run(): Promise<void> {
    for (;;) {
      await new Promise((r) => setImmediate(r)); // new requests and aborts come in between iterations
      if (this.#closed) break;
      if (this.#running.length === 0 && this.#waiting.length === 0) break;
      const oldest = this.#waiting[0];
      const decision = admission(
        { running: this.#running.length, waiting: this.#waiting.length, oldestWaitMs: oldest ? performance.now() - oldest.enqueuedMs : 0 },
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
        this.#iterate(admitted);
      } catch (err) {
        // The engine failed (out of memory, say): the sequences of this iteration fail; waiting ones go on.
        for (const s of [...this.#running, ...admitted]) this.#fail(s.job, err);
        this.#running = [];
        this.#engine.clear();
      }
      this.#releasePrompts();
    }
    this.#loop = undefined; // synchronously after the emptiness check: a submit from now on starts a new loop
  }

  #iterate(admitted: ReadonlyArray<Sequence<Prompt>>): void {
    // 1. Prefill the prompts of requests admitted for the first time (grouped by length: usually one forward).
    const fresh = [...new Set(admitted.map((s) => s.job))].filter((job) => job.prompt === undefined);
    if (fresh.length > 0) {
      let outputs: Array<PrefillOutput<Prompt>>;
      try {
        outputs = this.#engine.prefill(fresh.map((job) => ({ ids: job.req.promptIds, allPositions: job.wantsPromptLogprobs })));
      } catch (err) {
        for (const job of fresh) this.#fail(job, err); // the batch itself is untouched: running sequences go on
        outputs = [];
      }
      outputs.forEach((out, i) => {
        const job = fresh[i]!;
        job.prompt = out;
        this.#prompted.add(job);
        if (job.wantsPromptLogprobs) this.#scorePrompt(job);
      });
    }
    const width = this.#engine.logitsWidth;
    for (const s of admitted) {
      const { prompt } = s.job;
      s.job.admitted++;
      if (!prompt) continue; // its job failed in prefill
      const last = prompt.logits.length / width - 1;
      s.logits = prompt.logits.subarray(last * width, last * width + this.#text.vocabSize);
    }

    // 2. One token for every sequence, each with its own settings and random stream.
    for (const s of [...this.#running, ...admitted]) if (!s.job.settled && !s.done) this.#sample(s);

    // 3. Retire finished and aborted sequences; start rows for the new ones from their prompt's cache.
    const alive = (s: Sequence<Prompt>) => !s.done && !s.job.settled;
    const keep = this.#running.flatMap((s, b) => (alive(s) ? [b] : []));
    const added = admitted.filter(alive);
    this.#engine.arrange(keep, added.map((s) => s.job.prompt!.prompt));
    this.#running = [...keep.map((b) => this.#running[b]!), ...added];

    // 4. One decode forward for the whole batch.
    if (this.#running.length === 0) return;
    this.#onBatch?.(this.#running.length);
    const logits = this.#engine.decode(this.#running.map((s) => s.next));
    this.#running.forEach((s, b) => (s.logits = logits.subarray(b * width, b * width + this.#text.vocabSize)));
  }

  /** Samples, releases text, and finishes the sequence at end-of-text, a stop sequence or max_tokens. */
  #sample(s: Sequence<Prompt>): void {
    const { req } = s.job;
    if (s.sampled === req.maxTokens) return this.#finish(s); // max_tokens 0 (echo only): nothing to sample
    const id = sampleToken(s.logits, req.temperature, req.topP, s.random);
    s.sampled++;
    if (id === this.#text.endOfText) {
      s.endOfText = true;
      return this.#finish(s);
    }
    const token: GeneratedToken = { id, text: s.utf8.decode(this.#text.tokenBytes(id), { stream: true }) };
    if (req.logprobs !== undefined) token.logprob = tokenLogprob(logSoftmax(s.logits), id, req.logprobs, (t) => this.#text.tokenString(t));
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
      job.resolve({ choices: job.choices, promptLogprobs: job.promptLogprobs });
    }
  }

  /** Echo with logprobs: position i's log-probability comes from the logits at i − 1. */
  #scorePrompt(job: Job<Prompt>): void {
    const { promptIds, logprobs } = job.req;
    const width = this.#engine.logitsWidth;
    const logits = job.prompt!.logits;
    job.promptLogprobs = promptIds.map((id, i) =>
      i === 0 ? null : tokenLogprob(logSoftmax(logits.subarray((i - 1) * width, (i - 1) * width + this.#text.vocabSize)), id, logprobs!, (t) => this.#text.tokenString(t)),
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

  /** Rejects a request; its running rows are retired at the next arrange, its waiting sequences dropped now. */
  #fail(job: Job<Prompt>, error: unknown): void {
    if (job.settled) return;
    job.settled = true;
    this.#waiting = this.#waiting.filter((s) => s.job !== job);
    job.reject(error);
  }

  /** Frees the prompt caches no sequence will start from any more. */
  #releasePrompts(): void {
    for (const job of this.#prompted) {
      if (!job.settled && job.admitted < job.req.n && !this.#closed) continue;
      this.#engine.release(job.prompt!.prompt);
      this.#prompted.delete(job);
    }
  }
}
