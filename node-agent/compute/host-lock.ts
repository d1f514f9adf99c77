/**
 * A lock shared by the agents of one machine: a directory in the temporary folder (mkdir is atomic). Agents on
 * one machine measure themselves one at a time (compute/worker.ts): agents started together (a test cluster, a
 * compose file) otherwise measure each other, and four agents joining a 2-core host at once reported 9–12
 * GFLOP/s against 25 alone, and their compute probes 3–6× slow. A lock older than staleMs is a crashed agent's;
 * after waitMs the caller goes on without it (a measurement a little off beats an agent that never joins).
 */
import { mkdir, rmdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MEASURE_LOCK = join(tmpdir(), 'meshtrain-measure.lock');

export async function hostLock(path = MEASURE_LOCK, waitMs = 180_000, staleMs = 120_000): Promise<() => Promise<void>> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      await mkdir(path);
      return () => rmdir(path).catch(() => {});
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return async () => {}; // no lock to be had here
      const age = await stat(path).then((s) => Date.now() - s.mtimeMs, () => 0);
      if (age > staleMs) await rmdir(path).catch(() => {});
      else if (Date.now() > deadline) return async () => {};
      else await new Promise((r) => setTimeout(r, 20 + Math.random() * 30));
    }
  }
}
