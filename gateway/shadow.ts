/**
 * Shadow mode. A deployment's primary is wrapped in a `MirroringBackend` (the way undici's RetryAgent wraps a
 * dispatcher): it serves the client from the primary exactly as before and, for a configured percentage of the
 * requests, hands a copy of the request and the primary's answer to one `ShadowMirror` per shadow version.
 *
 * A mirror never delays or changes the primary's answer: it is offered after the primary has answered, into a
 * bounded queue (full → the mirror is dropped and counted, never queued without limit), run at background priority
 * (priority-gate.ts: a shadow forward pass only runs while no client request is waiting or running), at most
 * `concurrency` at a time, and a mirror that waited longer than `maxAgeMs` is dropped as stale. So under load the
 * shadow sheds work instead of taking capacity from clients.
 *
 * Per mirrored request the shadow generates the same request (same seed: an identical model gives an identical
 * answer) and scores the primary's tokens teacher-forced (one echo forward of prompt + primary tokens), and the
 * two answers are compared (comparison.ts): identical text, token agreement, mean log-prob difference on the
 * primary's tokens, latency difference. The comparisons feed the version's ComparisonStats and its SPRT
 * (sprt.ts, rollout.ts), whose decision — promote, keep watching, reject — is reported once it is reached.
 *
 * Token-level measures assume the shadow shares the primary's tokenizer (versions of one model do); with a
 * different vocabulary size the log-prob measure is left out.
 */
import { compareOutputs, ComparisonStats, outputFromChoice, type ComparisonResult, type ComparisonSnapshot } from './comparison.ts';
import type { GenerateOptions, GenerateRequest, GenerateResult, GeneratedChoice, GeneratedToken, InferenceBackend } from './inference-backend.ts';
import { isSuccess, type RolloutConfig } from './rollout.ts';
import { sprt, type Sprt, type SprtState } from './sprt.ts';
import type { SpanContext } from '@opentelemetry/api';
import { activeSpanContext, annotateComparison, inMirrorSpan } from './tracing.ts';

export interface ShadowSettings {
  /** Mirrors waiting to run, per shadow version; beyond it new mirrors are dropped ('queue-full'). */
  readonly queueCapacity: number;
  /** Mirrors of one shadow version generating at once (they batch together in the shadow's backend). */
  readonly concurrency: number;
  /** A mirror that waited longer than this is dropped ('stale'): it would compare against old traffic. */
  readonly maxAgeMs: number;
}

export const DEFAULT_SHADOW_SETTINGS: ShadowSettings = Object.freeze({ queueCapacity: 64, concurrency: 4, maxAgeMs: 30_000 });

export type DropReason = 'queue-full' | 'stale' | 'closed';

/** Where a mirror reports (metrics, the rollout executor). */
export interface MirrorEvents {
  onCompared?(result: ComparisonResult, snapshot: Readonly<ComparisonSnapshot>): void;
  onDropped?(reason: DropReason): void;
  onQueue?(depth: number): void;
  /** Once, when the SPRT leaves 'continue'. */
  onDecision?(state: SprtState): void;
}

/** The request a client made and what the primary answered. */
export interface MirrorJob {
  request: GenerateRequest;
  primary: GenerateResult;
  primaryLatencyMs: number;
  /** performance.now() when it was offered. */
  offeredMs: number;
  /** The client request's span when tracing is on: the mirror's own span links to it (gateway/tracing.ts). */
  requestSpan?: SpanContext | undefined;
}

export interface ShadowMirrorSnapshot {
  version: string;
  queue: { depth: number; capacity: number; running: number };
  offered: number;
  dropped: Record<DropReason, number>;
  comparison: Readonly<ComparisonSnapshot>;
  decision: SprtState & { verdict: 'promote' | 'reject' | 'keep-watching'; skipped: number };
}

/** Mirrors requests to one shadow version and compares its answers with the primary's. */
export class ShadowMirror {
  readonly version: string;
  readonly backend: InferenceBackend;
  readonly #settings: ShadowSettings;
  readonly #rollout: RolloutConfig;
  readonly #events: MirrorEvents;
  readonly #stats: ComparisonStats;
  readonly #sprt: Sprt;
  readonly #abort = new AbortController();
  #queue: MirrorJob[] = [];
  #running = 0;
  #offered = 0;
  #skipped = 0; // comparisons the success rule could not judge (no log-probs)
  #decided = false;
  #idle: Array<() => void> = [];
  readonly #dropped: Record<DropReason, number> = { 'queue-full': 0, stale: 0, closed: 0 };

  constructor(version: string, backend: InferenceBackend, opts: { settings?: ShadowSettings; rollout: RolloutConfig; events?: MirrorEvents }) {
    this.version = version;
    this.backend = backend;
    this.#settings = opts.settings ?? DEFAULT_SHADOW_SETTINGS;
    this.#rollout = opts.rollout;
    this.#events = opts.events ?? {};
    this.#stats = new ComparisonStats(version);
    this.#sprt = sprt(opts.rollout.sprt);
  }

  /** Queues a mirror; false when it was dropped (queue full, or closed). Never waits. */
  offer(job: MirrorJob): boolean {
    this.#offered++;
    if (this.#abort.signal.aborted) return this.#drop('closed');
    if (this.#queue.length >= this.#settings.queueCapacity) return this.#drop('queue-full');
    this.#queue.push(job);
    this.#events.onQueue?.(this.#queue.length);
    this.#pump();
    return true;
  }

  snapshot(): ShadowMirrorSnapshot {
    const state = this.#sprt.decision();
    const verdict = state.decision === 'accept-h1' ? 'promote' : state.decision === 'accept-h0' ? 'reject' : 'keep-watching';
    return {
      version: this.version,
      queue: { depth: this.#queue.length, capacity: this.#settings.queueCapacity, running: this.#running },
      offered: this.#offered,
      dropped: { ...this.#dropped },
      comparison: this.#stats.snapshot(),
      decision: { ...state, verdict, skipped: this.#skipped },
    };
  }

  /** Resolves when nothing is queued or running (tests; shutdown). */
  drained(): Promise<void> {
    if (this.#queue.length === 0 && this.#running === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Stops: queued mirrors are dropped ('closed'), running ones aborted. */
  close(): void {
    if (this.#abort.signal.aborted) return;
    this.#abort.abort(new Error('the shadow mirror was closed'));
    for (const _ of this.#queue) this.#drop('closed');
    this.#queue = [];
    this.#settle();
  }

  #drop(reason: DropReason): false {
    this.#dropped[reason]++;
    this.#events.onDropped?.(reason);
    return false;
  }

  #pump(): void {
    while (this.#running < this.#settings.concurrency && this.#queue.length > 0) {
      const job = this.#queue.shift()!;
      this.#events.onQueue?.(this.#queue.length);
      if (performance.now() - job.offeredMs > this.#settings.maxAgeMs) {
        this.#drop('stale');
        continue;
      }
      this.#running++;
      void inMirrorSpan(this.version, job, () => this.#run(job)).finally(() => {
        this.#running--;
        this.#pump();
        this.#settle();
      });
    }
  }

  #settle(): void {
    if (this.#queue.length > 0 || this.#running > 0) return;
    const idle = this.#idle;
    this.#idle = [];
    for (const wake of idle) wake();
  }

  async #run(job: MirrorJob): Promise<void> {
    const options: GenerateOptions = { priority: 'background', signal: this.#abort.signal };
    const started = performance.now();
    let answer: GenerateResult | undefined;
    let error: unknown;
    try {
      answer = await this.backend.generate(job.request, options);
    } catch (err) {
      error = err ?? new Error('the shadow failed');
    }
    if (this.#abort.signal.aborted) return; // closed meanwhile: a switch, not a shadow failure
    const latencyMs = answer?.serviceMs ?? performance.now() - started;
    let result: ComparisonResult;
    if (!answer) result = compareOutputs({ text: '', tokens: [], latencyMs: job.primaryLatencyMs }, { text: '', tokens: [], latencyMs, error });
    else {
      const scores = await Promise.all(job.primary.choices.map((c) => this.#score(job.request, c)));
      if (this.#abort.signal.aborted) return;
      result = combine(job.primary.choices.map((c, i) => {
        const shadow = answer!.choices[i];
        return compareOutputs(outputFromChoice(c, job.primaryLatencyMs), {
          text: shadow?.text ?? '',
          tokens: shadow?.tokens.map((t) => t.id) ?? [],
          latencyMs,
          ...(scores[i] ? { tokenLogprobsOfPrimaryTokens: scores[i] } : {}),
          ...(shadow ? {} : { error: new Error(`the shadow returned no choice ${i}`) }),
        });
      }));
    }
    this.#stats.add(result);
    const success = isSuccess(this.#rollout.success, result);
    if (success === null) this.#skipped++;
    else {
      const state = this.#sprt.observe(success);
      if (!this.#decided && state.decision !== 'continue') {
        this.#decided = true;
        this.#events.onDecision?.(state);
      }
    }
    annotateComparison(result);
    this.#events.onCompared?.(result, this.#stats.snapshot());
  }

  /**
   * The shadow's log-probability of each of the primary's tokens (teacher forcing: one forward over the prompt and
   * the primary's answer, echo-scored); undefined when it cannot be computed (too long, another vocabulary, a failure).
   */
  async #score(request: GenerateRequest, choice: GeneratedChoice): Promise<number[] | undefined> {
    const ids = choice.tokens.map((t) => t.id);
    if (ids.length === 0 || choice.tokens.some((t) => t.logprob === undefined)) return undefined;
    const { contextLength, vocabSize } = this.backend.info;
    if (request.promptIds.length + ids.length > contextLength || ids.some((id) => id >= vocabSize)) return undefined;
    try {
      const scored = await this.backend.generate(
        { promptIds: [...request.promptIds, ...ids], maxTokens: 0, temperature: 0, topP: 1, stop: [], seed: 0, n: 1, logprobs: 0, echo: true },
        { priority: 'background', signal: this.#abort.signal },
      );
      const lps = scored.promptLogprobs?.slice(request.promptIds.length).map((lp) => lp?.logprob);
      return lps && lps.length === ids.length && lps.every((x): x is number => typeof x === 'number') ? lps : undefined;
    } catch {
      return undefined;
    }
  }
}

/** One request's comparison from its choices' (n > 1): identical only if every choice is, means of the rest. */
function combine(results: ComparisonResult[]): ComparisonResult {
  if (results.length === 1) return results[0]!;
  const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
  const lps = results.map((r) => r.meanLogprobDiff).filter((x): x is number => x !== null);
  return {
    identical: results.every((r) => r.identical),
    tokenAgreement: mean(results.map((r) => r.tokenAgreement)),
    meanLogprobDiff: lps.length === 0 ? null : mean(lps),
    latencyDiffMs: results[0]!.latencyDiffMs, // one request, one latency
    error: results.some((r) => r.error),
  };
}

/** A shadow version of a deployment and the share of the primary's requests it gets. */
export interface ShadowRoute {
  readonly mirror: ShadowMirror;
  /** Percentage of requests mirrored, 0–100. */
  readonly percent: number;
}

export interface MirroringOptions {
  shadows: readonly ShadowRoute[];
  /** Called with every generation's outcome (the rollback guard): ok = the backend answered. Not for client aborts. */
  onOutcome?: (ok: boolean, latencyMs: number) => void;
  /** Uniform in [0, 1): decides which requests are mirrored. */
  random?: () => number;
}

/**
 * The primary of a deployment with shadows (or a guard): generates through the primary unchanged and offers
 * copies to the shadows afterwards. The client's answer is the primary's, token for token: when a mirror needs the
 * primary's log-probabilities and the client did not ask for them, they are computed (the same forward pass's
 * log-softmax; sampling does not read them) and removed before the answer is returned.
 */
export class MirroringBackend implements InferenceBackend {
  readonly #inner: InferenceBackend;
  readonly #opts: MirroringOptions;

  constructor(inner: InferenceBackend, opts: MirroringOptions) {
    this.#inner = inner;
    this.#opts = opts;
  }

  get info() {
    return this.#inner.info;
  }

  get chat() {
    return this.#inner.chat;
  }

  tokenize(text: string): number[] {
    return this.#inner.tokenize(text);
  }

  detokenize(ids: readonly number[]): string {
    return this.#inner.detokenize(ids);
  }

  refusal(request: GenerateRequest, options?: GenerateOptions): Error | undefined {
    return this.#inner.refusal?.(request, options);
  }

  async generate(request: GenerateRequest, options: GenerateOptions = {}): Promise<GenerateResult> {
    const random = this.#opts.random ?? Math.random;
    const targets = request.maxTokens === 0 ? [] : this.#opts.shadows.filter((s) => s.percent > 0 && random() * 100 < s.percent);
    const addLogprobs = targets.length > 0 && request.logprobs === undefined;
    const started = performance.now();
    let result: GenerateResult;
    try {
      if (!addLogprobs) result = await this.#inner.generate(request, options);
      else {
        const strip = options.onToken && ((e: Parameters<NonNullable<GenerateOptions['onToken']>>[0]) => options.onToken!({ ...e, tokens: e.tokens.map(withoutLogprob) }));
        result = await this.#inner.generate({ ...request, logprobs: 0 }, strip ? { ...options, onToken: strip } : options);
      }
    } catch (err) {
      if (!options.signal?.aborted) this.#opts.onOutcome?.(false, performance.now() - started);
      throw err;
    }
    const latencyMs = result.serviceMs ?? performance.now() - started;
    this.#opts.onOutcome?.(true, latencyMs);
    const offeredMs = performance.now();
    const requestSpan = activeSpanContext(); // the client request's span, captured while still in its context
    for (const { mirror } of targets) mirror.offer({ request, primary: result, primaryLatencyMs: latencyMs, offeredMs, requestSpan });
    if (!addLogprobs) return result;
    return { ...result, choices: result.choices.map((c) => ({ ...c, tokens: c.tokens.map(withoutLogprob) })) };
  }
}

const withoutLogprob = ({ logprob: _, ...token }: GeneratedToken): GeneratedToken => token;
