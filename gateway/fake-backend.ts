/**
 * FakeBackend: a deterministic character-level toy model for tests and `gateway serve --fake`. NOT a language
 * model: its "logits" are a hash of the last three characters, so output is gibberish, but every knob behaves as it
 * would with a real model — greedy decoding is fixed, seeds reproduce, top_p and temperature change the
 * distribution, stop sequences cut, logprobs are true log-softmax values of those logits, echo scores the prompt.
 *
 * Vocabulary: '\n' (id 0) and the printable ASCII characters ' '…'~' (ids 1…95); other characters tokenize as '?'.
 * Its chat template (FAKE_CHAT_TEMPLATE, Jinja) writes "role: content" lines and ends a reply at a newline.
 * Counters (`generateCalls`, `tokensSampled`, `aborted`) let tests see what work was done.
 */
import { jinjaChatTemplate } from './chat-templates.ts';
import type { ChatTemplate, GenerateOptions, GenerateRequest, GenerateResult, GeneratedChoice, GeneratedToken, InferenceBackend, ModelInfo, TokenLogprob } from './inference-backend.ts';
import { logSoftmax, sampleToken, tokenLogprob } from './sampling.ts';
import { mix32, seededRandom } from '../common/random.ts';
import { StopSequenceCutter } from './stop-sequences.ts';

const VOCAB: readonly string[] = ['\n', ...Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i))];
const ID_OF = new Map(VOCAB.map((c, i) => [c, i]));
const UNKNOWN = ID_OF.get('?')!;

/**
 * The toy's chat template (Jinja, rendered as an imported model's would be): "role: content" lines, then
 * "assistant:"; a newline ends the assistant's turn.
 */
export const FAKE_CHAT_TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

export interface FakeBackendOptions {
  id?: string; // model name (default 'fake-char')
  contextLength?: number; // default 256
  delayMsPerToken?: number; // sleep between tokens, to make streams slow enough to abort (default 0)
  failWith?: Error; // generate() rejects with this (tests of the 500 path)
  createdS?: number; // default 0 (a fixed time keeps /v1/models deterministic)
  variant?: number; // another "version" of the toy: different logits, so different answers (default 0)
  chat?: ChatTemplate | null; // its chat template (default FAKE_CHAT_TEMPLATE; null: none)
}

export class FakeBackend implements InferenceBackend {
  readonly info: ModelInfo;
  readonly chat?: ChatTemplate;
  generateCalls = 0;
  tokensSampled = 0;
  aborted = 0;
  readonly #delayMs: number;
  readonly #failWith: Error | undefined;
  readonly #variant: number;

  constructor(opts: FakeBackendOptions = {}) {
    this.info = { id: opts.id ?? 'fake-char', contextLength: opts.contextLength ?? 256, vocabSize: VOCAB.length, createdS: opts.createdS ?? 0, ownedBy: 'meshtrain-fake' };
    this.#delayMs = opts.delayMsPerToken ?? 0;
    this.#failWith = opts.failWith;
    this.#variant = opts.variant ?? 0;
    const chat = opts.chat === undefined ? jinjaChatTemplate(FAKE_CHAT_TEMPLATE, (text) => this.tokenize(text), { specials: {}, endOfTurn: [ID_OF.get('\n')!], source: 'fake' }) : opts.chat;
    if (chat) this.chat = chat;
  }

  tokenize(text: string): number[] {
    return Array.from(text, (c) => ID_OF.get(c) ?? UNKNOWN);
  }

  detokenize(ids: readonly number[]): string {
    return ids.map((id) => VOCAB[id] ?? '').join('');
  }

  /** The toy model: logits for the next token depend only on the last three tokens. Peaked (cubed uniform) so top_p matters. */
  logits(context: readonly number[]): Float64Array {
    let h = 0x811c9dc5 ^ Math.imul(this.#variant, 0x27d4eb2d);
    for (let i = Math.max(0, context.length - 3); i < context.length; i++) h = mix32(h ^ (context[i]! + 1));
    const out = new Float64Array(VOCAB.length);
    for (let v = 0; v < VOCAB.length; v++) {
      const u = mix32(h ^ Math.imul(v + 1, 0x9e3779b1)) / 2 ** 32;
      out[v] = 8 * u * u * u;
    }
    return out;
  }

  async generate(req: GenerateRequest, opts: GenerateOptions = {}): Promise<GenerateResult> {
    this.generateCalls++;
    if (this.#failWith) throw this.#failWith;
    const tokenString = (id: number) => VOCAB[id] ?? '';
    const tokenBytes = (id: number) => new TextEncoder().encode(tokenString(id));
    const logprobOf = (context: readonly number[], id: number): TokenLogprob => tokenLogprob(logSoftmax(this.logits(context)), id, req.logprobs ?? 0, tokenString, tokenBytes);

    const promptLogprobs = req.echo && req.logprobs !== undefined
      ? req.promptIds.map((id, i) => (i === 0 ? null : logprobOf(req.promptIds.slice(0, i), id)))
      : null;
    if (promptLogprobs) opts.onPromptLogprobs?.(promptLogprobs);

    const choices: GeneratedChoice[] = [];
    for (let index = 0; index < req.n; index++) {
      const random = seededRandom(req.seed, index);
      const cutter = new StopSequenceCutter(req.stop);
      const context = [...req.promptIds];
      const tokens: GeneratedToken[] = [];
      const release = (released: GeneratedToken[]) => {
        if (released.length === 0) return;
        tokens.push(...released);
        opts.onToken?.({ choice: index, tokens: released });
      };
      let sampled = 0;
      let endOfTurn = false;
      while (sampled < req.maxTokens && !cutter.stopped && !endOfTurn) {
        // A real backend yields here too: between steps is where an abort is noticed and other requests run.
        await (this.#delayMs > 0 ? sleep(this.#delayMs) : new Promise((r) => setImmediate(r)));
        if (opts.signal?.aborted) {
          this.aborted++;
          throw opts.signal.reason ?? new Error('aborted');
        }
        const logits = this.logits(context);
        const id = sampleToken(logits, req.temperature, req.topP, random);
        sampled++;
        this.tokensSampled++;
        if (req.stopTokenIds?.includes(id)) {
          endOfTurn = true; // like a model's end-of-text: ends the choice, adds no text
          break;
        }
        context.push(id);
        const token: GeneratedToken = { id, text: tokenString(id) };
        if (req.logprobs !== undefined) token.logprob = tokenLogprob(logSoftmax(logits), id, req.logprobs, tokenString, tokenBytes);
        release(cutter.push(token).released);
      }
      if (!cutter.stopped) release(cutter.flush());
      choices.push({ index, tokens, text: tokens.map((t) => t.text).join(''), finishReason: cutter.stopped || endOfTurn ? 'stop' : 'length', sampledTokens: sampled });
    }
    return { choices, promptLogprobs };
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
