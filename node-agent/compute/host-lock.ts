/**
 * A lock shared by the agents of one machine: a directory in the temporary folder (mkdir is atomic), with the
 * holder's pid inside. Agents on one machine measure themselves one at a time (compute/worker.ts): agents started
 * together (a test cluster, a compose file) otherwise measure each other, and four agents joining a 2-core host at
 * once reported 9–12 GFLOP/s against 25 alone, and their compute probes 3–6× slow. A lock whose holder is gone
 * (killed mid-measurement) is broken at once; one older than staleMs is broken too (a holder that hangs, or a pid
 * from another machine's view of a shared folder); after waitMs the caller goes on without it (a measurement a
 * little off beats an agent that never joins).
 */
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** MESHTRAIN_MEASURE_LOCK names another: scripts/local-cluster.ts gives each cluster its own, so test files running
 * side by side do not queue behind each other's agents. */
export const MEASURE_LOCK = process.env.MESHTRAIN_MEASURE_LOCK ?? join(tmpdir(), 'meshtrain-measure.lock');

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // exists, not ours to signal
  }
}

export async function hostLock(path = MEASURE_LOCK, waitMs = 180_000, staleMs = 120_000): Promise<() => Promise<void>> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      await mkdir(path);
      await writeFile(join(path, 'pid'), String(process.pid)).catch(() => {});
      return () => rm(path, { recursive: true, force: true }).catch(() => {});
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return async () => {}; // no lock to be had here
      const age = await stat(path).then((s) => Date.now() - s.mtimeMs, () => 0);
      const pid = Number(await readFile(join(path, 'pid'), 'utf8').catch(() => ''));
      const orphaned = Number.isInteger(pid) && pid > 0 && !alive(pid);
      if (orphaned || age > staleMs) await rm(path, { recursive: true, force: true }).catch(() => {});
      else if (Date.now() > deadline) return async () => {};
      else await new Promise((r) => setTimeout(r, 20 + Math.random() * 30));
    }
  }
}
