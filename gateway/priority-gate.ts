/**
 * Foreground before background, across every backend of one gateway. Client requests are foreground; shadow
 * mirrors are background and must never slow a client down: on one machine the models share the same cores, and
 * a shadow forward pass running while a client's request waits is exactly the delay shadow mode promises not to add.
 *
 * Each batch scheduler holds the gate (`enter`) while it has foreground sequences waiting or running and lets go
 * (`leave`) when it has none. A scheduler with only background work checks `busy` before every iteration and, while
 * it is busy, parks on `idle()`: so a client request waits at most for the one background iteration (one decode
 * forward, or one prefill) already under way when it arrived.
 *
 * Background work resumes only after the gate has been free for `graceMs`: under load the gaps between one client
 * request ending and the next arriving are a millisecond or two (a client's next request, an HTTP round trip), and
 * a shadow step started in such a gap would delay that next request by a whole forward pass. So under sustained
 * client load background work does not run at all; its bounded queue fills and further mirrors are dropped and
 * counted (shadow.ts). When clients leave real gaps, it runs in them.
 */
export const DEFAULT_GRACE_MS = 5;

export class PriorityGate {
  readonly graceMs: number;
  #holders = new Set<object>();
  #freeSince = -Infinity; // performance.now() when the last holder left
  #waiters: Array<() => void> = [];
  #timer: NodeJS.Timeout | undefined;

  constructor(graceMs = DEFAULT_GRACE_MS) {
    if (!(graceMs >= 0 && Number.isFinite(graceMs))) throw new RangeError(`graceMs must be a finite number ≥ 0, got ${graceMs}`);
    this.graceMs = graceMs;
  }

  /** Some scheduler has foreground work, or had some less than graceMs ago. */
  get busy(): boolean {
    return this.#holders.size > 0 || performance.now() - this.#freeSince < this.graceMs;
  }

  /** `holder` has foreground work (idempotent). */
  enter(holder: object): void {
    this.#holders.add(holder);
  }

  /** `holder` has no foreground work any more (idempotent); background work resumes graceMs after no holder is left. */
  leave(holder: object): void {
    if (!this.#holders.delete(holder) || this.#holders.size > 0) return;
    this.#freeSince = performance.now();
    this.#schedule();
  }

  /** Resolves when no scheduler has had foreground work for graceMs (at once when that is so already). */
  idle(): Promise<void> {
    if (!this.busy) return Promise.resolve();
    return new Promise((resolve) => {
      this.#waiters.push(resolve);
      this.#schedule();
    });
  }

  /** Wakes the waiters once the gate has been free for graceMs; a holder entering meanwhile defers it to its leave. */
  #schedule(): void {
    if (this.#timer || this.#waiters.length === 0 || this.#holders.size > 0) return;
    const wait = Math.max(0, this.graceMs - (performance.now() - this.#freeSince));
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#holders.size > 0) return; // taken again: its leave schedules the next look
      if (this.busy) return this.#schedule(); // left again within the grace: wait the rest
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const wake of waiters) wake();
    }, wait);
  }
}
