/**
 * npm run bench -- allreduce [--peers 4] [--mb 64] [--segment-mb 4] [--rounds 3]
 *
 * Ring all-reduce among real agent processes (a coordinator and --peers agents on loopback), judged against what
 * the same ring's links carry. In one run, with the same processes, alternating so noise hits all alike:
 *   link     every agent streams --mb to its successor at once, no reduction: per-link ceiling (link_gbps)
 *   allreduce --mb float32 per agent: algbw = bytes / time, busbw = algbw · 2(n−1)/n (NCCL's definition)
 *   p2p      one stream from rank 0 to rank 1 while the others idle (p2p_gbps, for reference)
 * Times are the slowest rank's, each run started after a barrier. Medians over --rounds.
 * ratio = busbw / link; target ≥ 0.85 at 4 peers, 64 MB. On a 2-core machine several agents share the cores, so
 * the link figure (not a lone stream) is the ceiling the algorithm can reach.
 */
import { parseCli, intOption } from '../common/cli.ts';
import { startCluster } from '../scripts/local-cluster.ts';
import type { RunReport } from '../coordinator/cluster/groups.ts';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const round3 = (x: number) => Math.round(x * 1000) / 1000;

export default async function main(argv: string[]): Promise<object> {
  const { values } = parseCli(argv, {
    peers: { type: 'string' },
    mb: { type: 'string' },
    'segment-mb': { type: 'string' },
    rounds: { type: 'string' },
  });
  const peers = intOption(values.peers, 'peers', 4, 2, 64);
  const mb = intOption(values.mb, 'mb', 64, 1, 1024);
  const segmentBytes = Math.round(Number(values['segment-mb'] ?? 4) * 1024 * 1024);
  const rounds = intOption(values.rounds, 'rounds', 3, 1, 50);
  const bytes = mb * 1024 * 1024;
  const elements = bytes / 4;

  console.error(`starting a coordinator and ${peers} agents…`);
  const cluster = await startCluster({ agents: peers, stderr: 'ignore' });
  try {
    const group = await cluster.api<{ id: string }>('POST', '/api/groups', { size: peers, segmentBytes });
    const run = async (op: string) => {
      const r = await cluster.api<RunReport>('POST', `/api/groups/${group.id}/runs`, { op, elements, repeats: 1 });
      if (!r.ok) throw new Error(`${op} failed: ${JSON.stringify(r.ranks.filter((x) => !x.ok))}`);
      return r.msPerRepeat[0]!;
    };
    await run('allreduce'); // warm-up: JIT, socket buffers
    await run('stream');
    const ms = { link: [] as number[], allreduce: [] as number[], p2p: [] as number[] };
    for (let i = 0; i < rounds; i++) {
      for (const op of ['stream', 'allreduce', 'p2p'] as const) {
        const t = await run(op);
        ms[op === 'stream' ? 'link' : op].push(t);
        console.error(`round ${i + 1}/${rounds}: ${op.padEnd(9)} ${mb} MB in ${t.toFixed(1)} ms (${(bytes / t / 1e6).toFixed(3)} GB/s)`);
      }
    }
    const linkGbps = bytes / median(ms.link) / 1e6;
    const algbwGbps = bytes / median(ms.allreduce) / 1e6;
    const busbwGbps = (algbwGbps * 2 * (peers - 1)) / peers;
    const p2pGbps = bytes / median(ms.p2p) / 1e6;
    return {
      bench: 'allreduce',
      peers,
      bytes,
      segment_bytes: segmentBytes,
      rounds,
      allreduce_ms: round3(median(ms.allreduce)),
      algbw_gbps: round3(algbwGbps),
      busbw_gbps: round3(busbwGbps),
      link_gbps: round3(linkGbps),
      p2p_gbps: round3(p2pGbps),
      ratio: round3(busbwGbps / linkGbps),
      target_ratio: 0.85,
    };
  } finally {
    await cluster.stop();
  }
}
