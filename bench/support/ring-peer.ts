/**
 * One rank of `npm run bench -- allreduce`'s wire-format comparison (bench/allreduce.ts starts it in a worker thread
 * through common/worker-boot.mjs; not meant to be run by hand). It listens for peer links on loopback like an agent
 * (PeerServer), reports its port, joins the group the parent describes (Group: the agents' own hello/welcome and
 * ring code over real sockets), and then runs each all-reduce it is asked for, timing it after a barrier.
 *
 *   parent → {type: 'peers', ports}        ← {type: 'linked'}
 *   parent → {type: 'run', wire, elements} ← {type: 'ran', ms}
 *   parent → {type: 'stop'}                (closes its links and listener, then the thread ends)
 */
import { parentPort, workerData } from 'node:worker_threads';
import { silentLogger } from '../../common/log.ts';
import type { GradientWire } from '../../protocol/job-spec.ts';
import { Group } from '../../node-agent/group.ts';
import { PeerServer } from '../../node-agent/peer-server.ts';

export type PeerCommand =
  | { type: 'peers'; ports: number[] }
  | { type: 'run'; wire: GradientWire; elements: number }
  | { type: 'stop' };
export type PeerReply = { type: 'port'; port: number } | { type: 'linked' } | { type: 'ran'; ms: number } | { type: 'error'; message: string };

const { rank, size, segmentBytes } = workerData as { rank: number; size: number; segmentBytes: number; entry: string };
const port = parentPort!;
const reply = (m: PeerReply) => port.postMessage(m);

let group: Group | undefined;
const server = await PeerServer.listen({
  host: '127.0.0.1', port: 0, log: silentLogger, helloTimeoutMs: 10_000,
  findGroup: async (id) => (group?.id === id ? group : undefined),
});
reply({ type: 'port', port: server.port });

let template = new Float32Array(0);
let buf = new Float32Array(0);

port.on('message', (m: PeerCommand) => {
  void handle(m).catch((err: Error) => reply({ type: 'error', message: `rank ${rank}: ${err.message}` }));
});

async function handle(m: PeerCommand): Promise<void> {
  if (m.type === 'peers') {
    group = new Group({
      type: 'group.assign', groupId: 'bench-wire', token: 'bench-wire-token-0123', rank, size, segmentBytes,
      peers: m.ports.map((p, r) => ({ rank: r, nodeId: `w${r}`, address: `ws://127.0.0.1:${p}` })),
    }, { log: silentLogger, connectTimeoutMs: 30_000, collectiveIdleTimeoutMs: 120_000 });
    await group.link();
    reply({ type: 'linked' });
  } else if (m.type === 'run') {
    if (template.length !== m.elements) {
      // Gradient-like values: random sign, magnitudes 1e-6 … 1 (the same draw on every run of this size).
      template = new Float32Array(m.elements);
      let x = (rank * 2654435761 + 1) >>> 0;
      for (let i = 0; i < m.elements; i++) {
        x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
        template[i] = (x & 1 ? -1 : 1) * 10 ** (-6 * ((x >>> 8) / 2 ** 24));
      }
      buf = new Float32Array(m.elements);
    }
    buf.set(template);
    const ring = group!.ring;
    await ring.barrier(); // the clock starts when every rank is ready
    const t0 = performance.now();
    await ring.allReduce(buf, { wire: m.wire });
    reply({ type: 'ran', ms: performance.now() - t0 });
  } else {
    group?.release();
    await server.close();
    port.close();
  }
}
