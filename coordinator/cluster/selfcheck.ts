/**
 * The cluster self-check (`coordinator selfcheck`, POST /api/selfcheck, the demo): forms a ring of the connected
 * agents and runs every collective on awkward sizes — empty, one element, fewer elements than ranks, a length
 * not divisible by the ring, and a multi-segment buffer. Each rank's result digest is compared with a digest
 * the coordinator computes itself from the serial sum, so the agents do not grade their own work.
 */
import { chunkRange } from '../../protocol/partition.ts';
import { expectedResult } from '../../common/collective-test-data.ts';
import type { CollectiveOp } from '../../protocol/control.ts';
import { digestOf, type GroupManager } from './groups.ts';

export interface SelfcheckOptions {
  agents?: number; // ring size; default: every connected agent
  elements?: number[]; // buffer lengths to check
  segmentBytes: number;
}

export interface SelfcheckCase {
  op: CollectiveOp;
  elements: number;
  ok: boolean;
  ms: number;
  busbwGbps: number | null; // NCCL bus bandwidth of the run; null for tiny buffers where it means nothing
  detail: string;
}

export interface SelfcheckReport {
  ok: boolean;
  groupId: string;
  ring: Array<{ rank: number; nodeId: string; name: string }>;
  cases: SelfcheckCase[];
}

const OPS: CollectiveOp[] = ['allreduce', 'reducescatter', 'allgather', 'broadcast'];

export async function runSelfcheck(groups: GroupManager, opts: SelfcheckOptions, progress: (line: string) => void = () => {}): Promise<SelfcheckReport> {
  const group = await groups.form({ ...(opts.agents ? { size: opts.agents } : {}), segmentBytes: opts.segmentBytes });
  const n = group.size;
  progress(`ring of ${n}: ${group.members.map((m) => `${m.rank}:${m.name}`).join(' → ')} → 0`);
  const lengths = opts.elements ?? [0, 1, Math.max(1, n - 1), 1_000_003, 4 * 1024 * 1024];
  const cases: SelfcheckCase[] = [];
  try {
    for (const op of OPS) {
      for (const elements of lengths) {
        const root = op === 'broadcast' ? n - 1 : undefined;
        const seed = cases.length + 1;
        const report = await groups.run(group.id, { op, elements, seed, ...(root !== undefined ? { root } : {}), repeats: 1, verify: false, returnResult: false });
        const expected = expectedResult({ op, elements, seed, root }, n)!;
        const wrong = report.ranks.filter((r) => {
          const region = op === 'reducescatter' ? chunkRange(elements, n, r.rank) : { start: 0, end: elements };
          return !r.ok || r.digest !== digestOf(expected.subarray(region.start, region.end));
        });
        const ms = report.msPerRepeat[0] ?? 0;
        const c: SelfcheckCase = {
          op,
          elements,
          ok: wrong.length === 0,
          ms: Math.round(ms * 100) / 100,
          busbwGbps: elements * 4 >= 1 << 20 && ms > 0 ? Math.round((busFactor(op, n) * elements * 4) / (ms * 1e6) * 1000) / 1000 : null,
          detail:
            wrong.length === 0
              ? `${n} ranks match the serial result`
              : `ranks ${wrong.map((r) => r.rank).join(', ')} differ from the serial result${wrong[0]?.error ? `: ${wrong[0].error}` : ''}`,
        };
        cases.push(c);
        progress(`${c.ok ? 'ok  ' : 'FAIL'} ${op.padEnd(13)} ${String(elements).padStart(9)} floats  ${c.ms.toFixed(2).padStart(9)} ms` + (c.busbwGbps !== null ? `  busbw ${c.busbwGbps} GB/s` : '') + `  ${c.detail}`);
      }
    }
  } finally {
    groups.release(group.id);
  }
  return {
    ok: cases.every((c) => c.ok),
    groupId: group.id,
    ring: group.members.map(({ rank, nodeId, name }) => ({ rank, nodeId, name })),
    cases,
  };
}

/** NCCL's bus-bandwidth factor: the share of the buffer each link carries for this collective. */
export function busFactor(op: CollectiveOp, n: number): number {
  switch (op) {
    case 'allreduce':
      return (2 * (n - 1)) / n;
    case 'reducescatter':
    case 'allgather':
      return (n - 1) / n;
    default:
      return 1;
  }
}

/** The self-check as lines of text (CLI and demo). */
export function printSelfcheck(report: SelfcheckReport, out: (line: string) => void): void {
  out(`ring: ${report.ring.map((m) => `${m.rank}:${m.name}`).join(' → ')} → 0`);
  for (const c of report.cases) {
    out(
      `${c.ok ? 'ok  ' : 'FAIL'} ${c.op.padEnd(13)} ${String(c.elements).padStart(9)} floats ${c.ms.toFixed(2).padStart(9)} ms` +
        `${c.busbwGbps !== null ? `  busbw ${c.busbwGbps.toFixed(3)} GB/s` : ''}  ${c.detail}`,
    );
  }
  out(report.ok ? `self-check passed: ${report.cases.length} collectives match the serial results` : 'self-check FAILED');
}
