/**
 * Stop sequences, cut so that streaming is safe: text is released to the client only once it can no longer turn
 * out to be the start of a stop sequence, so a streamed completion never shows text that the final one cuts off.
 * Works on whole tokens (a token's text is released together with its log-probability), and is shared by every
 * backend so that all of them cut the same way.
 *
 *   const cut = new StopSequenceCutter(request.stop);
 *   for each sampled token:  const { released, stopped } = cut.push(token); emit(released); if (stopped) break;
 *   at max_tokens:           emit(cut.flush());
 */
import type { GeneratedToken } from './inference-backend.ts';

export class StopSequenceCutter {
  readonly #stops: readonly string[];
  /** Tokens held back because their text might be the beginning of a stop sequence. */
  #pending: GeneratedToken[] = [];
  #pendingText = '';
  #stopped = false;

  constructor(stops: readonly string[]) {
    this.#stops = stops.filter((s) => s.length > 0);
  }

  get stopped(): boolean {
    return this.#stopped;
  }

  /**
   * Adds a sampled token. Returns the tokens now safe to show (possibly none) and whether a stop sequence was
   * completed; then `released` ends just before it, the last token's text truncated, and the cutter takes no more.
   */
  push(token: GeneratedToken): { released: GeneratedToken[]; stopped: boolean } {
    if (this.#stopped) throw new Error('StopSequenceCutter: push after a stop sequence matched');
    this.#pending.push(token);
    this.#pendingText += token.text;

    // Released text never holds a whole stop sequence nor the start of one, so any match starts in the pending text.
    let cutAt = -1;
    for (const stop of this.#stops) {
      const at = this.#pendingText.indexOf(stop);
      if (at >= 0 && (cutAt < 0 || at < cutAt)) cutAt = at;
    }
    if (cutAt >= 0) {
      this.#stopped = true;
      return { released: this.#take(cutAt, true), stopped: true };
    }

    let held = 0; // the longest suffix of the pending text that begins some stop sequence
    for (const stop of this.#stops) {
      for (let k = Math.min(stop.length - 1, this.#pendingText.length); k > held; k--) {
        if (this.#pendingText.endsWith(stop.slice(0, k))) {
          held = k;
          break;
        }
      }
    }
    return { released: this.#take(this.#pendingText.length - held, false), stopped: false };
  }

  /** Releases everything held back (generation ended for another reason: max_tokens, end of text). */
  flush(): GeneratedToken[] {
    return this.#take(this.#pendingText.length, false);
  }

  /**
   * Takes the pending tokens that lie before `end` in the pending text. With `truncate`, a token straddling `end`
   * is taken with its text cut at `end` (the stop sequence starts inside it) and everything after is dropped;
   * otherwise only whole tokens are taken.
   */
  #take(end: number, truncate: boolean): GeneratedToken[] {
    const out: GeneratedToken[] = [];
    let offset = 0;
    let i = 0;
    for (; i < this.#pending.length; i++) {
      const t = this.#pending[i]!;
      if (truncate ? offset >= end : offset + t.text.length > end) break;
      out.push(truncate && offset + t.text.length > end ? { ...t, text: t.text.slice(0, end - offset) } : t);
      offset += t.text.length;
    }
    if (truncate) {
      this.#pending = [];
      this.#pendingText = '';
    } else {
      this.#pending = this.#pending.slice(i);
      this.#pendingText = this.#pendingText.slice(offset);
    }
    return out;
  }
}
