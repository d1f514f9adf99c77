/**
 * npm run bench -- allreduce [--peers 4] [--mb 64] [--segment-mb 4] [--rounds 3] [--wires f32,bf16,f16]
 *
 * Ring all-reduce among real agent processes (a coordinator and --peers agents on loopback), judged against what
 * the same ring's links carry. In one run, with the same processes, alternating so noise hits all alike:
 *   link     every agent streams --mb to its successor at once, no reduction: per-link ceiling (link_gbps)
 *   allreduce --mb float32 per agent: algbw = bytes / time, busbw = algbw · 2(n−1)/n (NCCL's definition)
 *   p2p      one stream from rank 0 to rank 1 while the others idle (p2p_gbps, for reference)
 * Times are the slowest rank's, each run started after a barrier. Medians over --rounds.
 * ratio = busbw / link; target ≥ 0.85 at 4 peers, 64 MB. On a 2-core machine several agents share the cores, so
 * the link figure (not a lone stream) is the ceiling the algorithm can reach.
 *
 * Then, once the cluster is stopped, the gradient wire formats side by side (training.gradientWire; `--wires none`
 * skips this): --peers ranks in worker threads of this process (bench/support/ring-peer.ts), each linked to the
 * next over loopback sockets by the agents' own Group code, all-reduce --mb of float32 with every segment on the
 * wire in each format, alternating formats each round. Per format: the bytes each rank sent its successor
 * (wire_bytes), the time, and busbw of the float32 data reduced (f32-equivalent bytes · 2(n−1)/n / time), so a
 * format that halves the bytes but costs more in conversion than it saves on the link shows as slower.
 * (Worker threads, not the agents: the coordinator's collective runs carry no wire option.)
 */
import { parseCli, intOption } from '../common/cli.ts';
import { Worker } from 'node:worker_threads';
import { startCluster } from '../scripts/local-cluster.ts';
import type { RunReport } from '../coordinator/cluster/groups.ts';
import { ringAllReduceSentBytes } from '../common/step-report.ts';
import { GRADIENT_WIRES, type GradientWire } from '../protocol/job-spec.ts';
import { bytesPerElement } from '../node-agent/collectives/wire.ts';
import type { PeerCommand, PeerReply } from './support/ring-peer.ts';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const round3 = (x: number) => Math.round(x * 1000) / 1000;

export default async function main(argv: string[]): Promise<object> {
  const { values } = parseCli(argv, {
    peers: { type: 'string' },
    mb: { type: 'string' },
    'segment-mb': { type: 'string' },
    rounds: { type: 'string' },
    wires: { type: 'string' },
  });
  const peers = intOption(values.peers, 'peers', 4, 2, 64);
  const mb = intOption(values.mb, 'mb', 64, 1, 1024);
  const segmentBytes = Math.round(Number(values['segment-mb'] ?? 4) * 1024 * 1024);
  const rounds = intOption(values.rounds, 'rounds', 3, 1, 50);
  const bytes = mb * 1024 * 1024;
  const elements = bytes / 4;
  const wires = parseWires(values.wires ?? GRADIENT_WIRES.join(','));

  console.error(`starting a coordinator and ${peers} agents…`);
  const cluster = await startCluster({ agents: peers, stderr: 'ignore' });
  let agents: object;
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
    agents = {
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
  const wire = wires.length ? await compareWires({ peers, elements, segmentBytes, rounds, wires }) : undefined;
  return { bench: 'allreduce', ...agents, ...(wire ? { wire } : {}) };
}

function parseWires(list: string): GradientWire[] {
  if (list === 'none') return [];
  const wires = list.split(',');
  const bad = wires.filter((w) => !(GRADIENT_WIRES as readonly string[]).includes(w));
  if (bad.length) throw new Error(`--wires: ${bad.join(', ')} is not one of ${GRADIENT_WIRES.join(', ')} (or 'none')`);
  return wires as GradientWire[];
}

interface WireFigures {
  wire_bytes: number; // each rank to its successor, per all-reduce
  allreduce_ms: number;
  busbw_gbps: number; // of the float32 data: f32 bytes · 2(n−1)/n / time
  wire_gbps: number; // what the links carried: wire_bytes / time
}

/** The same all-reduce in each wire format over real loopback links between worker threads; medians over rounds. */
async function compareWires(o: { peers: number; elements: number; segmentBytes: number; rounds: number; wires: GradientWire[] }): Promise<Record<string, WireFigures>> {
  console.error(`wire formats: ${o.peers} ranks in worker threads, ${(o.elements * 4) / 2 ** 20} MB of float32 each…`);
  const ranks = Array.from({ length: o.peers }, (_, rank) => new RankThread(rank, o.peers, o.segmentBytes));
  try {
    const ports = await Promise.all(ranks.map((r) => r.next('port')));
    const peerPorts = ports.map((p) => (p as { port: number }).port);
    await Promise.all(ranks.map((r) => (r.send({ type: 'peers', ports: peerPorts }), r.next('linked'))));
    const runOnce = async (wire: GradientWire) => {
      const replies = await Promise.all(ranks.map((r) => (r.send({ type: 'run', wire, elements: o.elements }), r.next('ran'))));
      return Math.max(...replies.map((x) => (x as { ms: number }).ms)); // the slowest rank's
    };
    for (const wire of o.wires) await runOnce(wire); // warm-up: JIT, socket buffers
    const ms = new Map<GradientWire, number[]>(o.wires.map((w) => [w, []]));
    for (let i = 0; i < o.rounds; i++) {
      for (const wire of o.wires) {
        const t = await runOnce(wire);
        ms.get(wire)!.push(t);
        console.error(`round ${i + 1}/${o.rounds}: ${wire.padEnd(4)} all-reduce in ${t.toFixed(1)} ms`);
      }
    }
    const f32Bytes = o.elements * 4;
    return Object.fromEntries(o.wires.map((wire) => {
      const t = median(ms.get(wire)!);
      const wireBytes = ringAllReduceSentBytes(o.elements * bytesPerElement(wire), o.peers);
      return [wire, {
        wire_bytes: wireBytes,
        allreduce_ms: round3(t),
        busbw_gbps: round3((f32Bytes / t / 1e6) * (2 * (o.peers - 1)) / o.peers),
        wire_gbps: round3(wireBytes / t / 1e6),
      }];
    }));
  } finally {
    await Promise.all(ranks.map((r) => r.stop()));
  }
}

/** A rank of compareWires in a worker thread, answering one command at a time. */
class RankThread {
  readonly #worker: Worker;
  readonly #inbox: PeerReply[] = [];
  #waiting: ((m: PeerReply) => void) | null = null;

  constructor(rank: number, size: number, segmentBytes: number) {
    this.#worker = new Worker(new URL('../common/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./support/ring-peer.ts', import.meta.url).href, rank, size, segmentBytes },
    });
    this.#worker.on('message', (m: PeerReply) => this.#deliver(m));
    this.#worker.on('error', (err) => this.#deliver({ type: 'error', message: err.message }));
  }

  send(m: PeerCommand): void {
    this.#worker.postMessage(m);
  }

  /** The next reply, which must be of `type`. */
  async next(type: PeerReply['type']): Promise<PeerReply> {
    const m = this.#inbox.shift() ?? (await new Promise<PeerReply>((resolve) => (this.#waiting = resolve)));
    if (m.type === 'error') throw new Error(m.message);
    if (m.type !== type) throw new Error(`expected ${type} from a ring thread, got ${m.type}`);
    return m;
  }

  async stop(): Promise<void> {
    this.send({ type: 'stop' });
    const exited = new Promise((resolve) => this.#worker.once('exit', resolve));
    const timer = setTimeout(() => void this.#worker.terminate(), 5000);
    await exited;
    clearTimeout(timer);
  }

  #deliver(m: PeerReply): void {
    const waiting = this.#waiting;
    this.#waiting = null;
    if (waiting) waiting(m);
    else this.#inbox.push(m);
  }
}
