/**
 * Watches this thread's event loop while a test's work runs, three ways, between ticks of a 10 ms timer:
 * - cpu: the CPU time this thread used between two ticks (Linux's /proc/thread-self/schedstat): how long one turn
 *   of the loop computed. Another process's load does not inflate it, so tests assert on it.
 * - busy: the wall time the loop was busy between two ticks (eventLoopUtilization), which includes waiting for a
 *   core while busy;
 * - delay: how late the timer fired (monitorEventLoopDelay): what a heartbeat timer sees, scheduling included.
 * On a 2-core machine shared with other test runs (load average 10–20), a thread that computes a few milliseconds
 * per turn still shows busy stretches and delays of several hundred: reported, not asserted.
 */
import { readFileSync } from 'node:fs';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';

export interface LoopReport {
  /** The most CPU this thread used between two ticks (NaN where schedstat is missing). */
  maxCpuMs: number;
  maxBusyMs: number;
  maxDelayMs: number;
  /** Wall time the loop was busy in all. */
  busyMs: number;
}

export interface LoopWatch {
  stop(): LoopReport;
}

/** This thread's CPU time so far in ms (the first field of schedstat, in ns), or NaN. */
function threadCpuMs(): number {
  try {
    return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]) / 1e6;
  } catch {
    return NaN;
  }
}

export function watchEventLoop(): LoopWatch {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  const first = performance.eventLoopUtilization();
  let last = first, lastCpu = threadCpuMs();
  let maxBusyMs = 0, maxCpuMs = 0;
  const tick = () => {
    const now = performance.eventLoopUtilization(), cpu = threadCpuMs();
    maxBusyMs = Math.max(maxBusyMs, performance.eventLoopUtilization(now, last).active);
    maxCpuMs = Math.max(maxCpuMs, cpu - lastCpu);
    last = now;
    lastCpu = cpu;
  };
  const timer = setInterval(tick, 10);
  return {
    stop() {
      clearInterval(timer);
      h.disable();
      tick();
      return { maxCpuMs, maxBusyMs, maxDelayMs: h.max / 1e6, busyMs: performance.eventLoopUtilization(last, first).active };
    },
  };
}

/**
 * This process's peak resident memory so far (Linux's VmHWM), in bytes; NaN where /proc is missing. Read once at the
 * end rather than sampling RSS on a timer: reading a busy process's memory map can itself block the event loop.
 */
export function peakRss(): number {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}
