/**
 * Executes a `collective.run` from the coordinator on this agent's world ring: builds the deterministic input for this
 * rank, runs the collective `repeats` times (each timed between two barriers' worth of synchronisation), and
 * checks the last result against the serial sum when asked. Used by `coordinator selfcheck` and the benchmarks.
 */
import { createHash } from 'node:crypto';
import type { CollectiveResult, CollectiveRun } from '../protocol/control.ts';
import { MAX_CONTROL_ATTACHMENT } from '../protocol/control.ts';
import type { Range } from '../protocol/partition.ts';
import { bytesOf } from './collectives/reduce.ts';
import { collectiveInput, expectedResult } from '../common/collective-test-data.ts';
import type { Group } from './group.ts';

export interface RunOutcome {
  result: CollectiveResult;
  attachment?: Uint8Array;
}

export async function runCollective(group: Group, run: CollectiveRun): Promise<RunOutcome> {
  const ring = group.ring;
  const { rank, size } = ring; // our place in the world ring, which the test data is generated for
  const n = run.elements;
  const root = run.root ?? 0;
  const ms: number[] = [];
  let buf: Float32Array = new Float32Array(0);
  let region: Range = { start: 0, end: 0 }; // the part of buf that holds this rank's result

  for (let i = 0; i < run.repeats; i++) {
    buf = collectiveInput(run, rank, size);
    await ring.barrier(); // so the clock starts when every rank is ready, not when the message reached it
    const start = performance.now();
    switch (run.op) {
      case 'allreduce':
        await ring.allReduce(buf);
        region = { start: 0, end: n };
        break;
      case 'reducescatter':
        region = await ring.reduceScatter(buf);
        break;
      case 'allgather':
        await ring.allGather(buf);
        region = { start: 0, end: n };
        break;
      case 'broadcast':
        await ring.broadcast(buf, root);
        region = { start: 0, end: n };
        break;
      case 'stream':
        await ring.stream(n * 4, n * 4);
        break;
      case 'p2p': // one stream from rank 0 to rank 1; the others idle
        await ring.stream(rank === 0 ? n * 4 : 0, rank === 1 ? n * 4 : 0);
        break;
      case 'barrier':
        await ring.barrier();
        break;
    }
    ms.push(performance.now() - start);
  }

  const bytes = bytesOf(buf, region.start, region.end);
  const result: CollectiveResult = {
    type: 'collective.result',
    groupId: group.id,
    runId: run.runId,
    rank: group.rank,
    ok: true,
    ms,
    bytes: buf.byteLength,
    digest: createHash('sha256').update(bytes).digest('hex'),
  };
  if (run.verify) {
    const expected = expectedResult(run, size);
    if (expected) {
      let maxAbsErr = 0;
      for (let i = region.start; i < region.end; i++) maxAbsErr = Math.max(maxAbsErr, Math.abs(buf[i]! - expected[i]!));
      result.maxAbsErr = maxAbsErr;
      if (maxAbsErr !== 0) {
        result.ok = false;
        result.error = `result differs from the serial computation by up to ${maxAbsErr}`;
      }
    }
  }
  if (run.returnResult && bytes.byteLength <= MAX_CONTROL_ATTACHMENT) return { result, attachment: bytes };
  return { result };
}
