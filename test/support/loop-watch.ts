/**
 * Watches this thread's event loop while a test's work runs: the longest delay of a 10 ms timer
 * (monitorEventLoopDelay: our own blocking work and, on a loaded machine, the OS not scheduling us), and the longest
 * stretch the loop was busy between two ticks of that timer (eventLoopUtilization: time spent running code, which a
 * thread that waits idle in epoll does not accrue, so another process's load inflates it far less). Tests assert on
 * the busy stretch and report both.
 */
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';

export interface LoopWatch {
  stop(): { maxDelayMs: number; maxBusyMs: number; busyMs: number };
}

export function watchEventLoop(): LoopWatch {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  const first = performance.eventLoopUtilization();
  let last = first;
  let maxBusyMs = 0;
  const timer = setInterval(() => {
    const now = performance.eventLoopUtilization();
    maxBusyMs = Math.max(maxBusyMs, performance.eventLoopUtilization(now, last).active);
    last = now;
  }, 10);
  return {
    stop() {
      clearInterval(timer);
      h.disable();
      const now = performance.eventLoopUtilization();
      maxBusyMs = Math.max(maxBusyMs, performance.eventLoopUtilization(now, last).active);
      return { maxDelayMs: h.max / 1e6, maxBusyMs, busyMs: performance.eventLoopUtilization(now, first).active };
    },
  };
}
