/**
 * Foreground before background, across every backend of one gateway. Client requests are foreground; shadow
 * mirrors are background and must never slow a client down: on one machine the models share the same cores, and
 * a shadow forward pass running while a client's request waits is exactly the delay shadow mode promises not to add.
 *
 * Each batch scheduler holds the gate (`enter`) while it has foreground sequences waiting or running and lets go
 * (`leave`) when it has none. A scheduler with only background work checks `busy` before every iteration and, while
 * it is busy, parks on `idle()`: so a client request waits at most for the one background iteration (one decode
 * forward, or one prefill) already under way when it arrived. Under sustained client load background work does not
 * run at all; its bounded queue fills and further mirrors are dropped and counted (shadow.ts).
 */
export class PriorityGate {
  #holders = new Set<object>();
  #waiters: Array<() => void> = [];

  /** Some scheduler has foreground work. */
  get busy(): boolean {
    return this.#holders.size > 0;
  }

  /** `holder` has foreground work (idempotent). */
  enter(holder: object): void {
    this.#holders.add(holder);
  }

  /** `holder` has no foreground work any more (idempotent); background work resumes when no holder is left. */
  leave(holder: object): void {
    if (!this.#holders.delete(holder) || this.#holders.size > 0) return;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }

  /** Resolves when no scheduler has foreground work (at once when none has). */
  idle(): Promise<void> {
    if (!this.busy) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
}
