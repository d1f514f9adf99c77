/**
 * npm run bench -- transport [--mb-per-message 4] [--gb 1] [--rounds 5] [--window 4] [--cpu-prof-dir DIR]
 *
 * Point-to-point throughput between two separate processes on 127.0.0.1: raw TCP (node:net) vs WebSocket (the `ws`
 * package with the product's own settings from protocol/ws-options.ts), measured in the same run and interleaved.
 * This process dials; the peer (bench/transport-peer.ts, a child process) listens on port 0 for both.
 *
 * Every measurement moves the same payload (--gb × 1e9 bytes) in writes of --mb-per-message × 2^20 bytes (one ws binary
 * message per write) with at most --window writes not yet handed to the kernel (write/send callback pending).
 * Timing is sender-side and the same for all three: from just before the first byte is handed over until the last
 * byte has arrived and been reported back on the same connection, so each includes exactly one small-message trip
 * (the receiver's ack, or the "go" request when the peer sends).
 *
 * Keys (GB/s = 1e9 payload bytes per second; headline figures are medians over the rounds):
 *   tcp_gbps               raw TCP, this process → peer, receiver acks with one byte when it has everything
 *   ws_client_send_gbps    ws, client (this process, zero mask) → server (peer), receiver acks with a small message
 *   ws_server_send_gbps    ws, server (peer, unmasked per RFC 6455) → client (this process), timed from the "go" request
 *   ws_gbps                = ws_client_send_gbps: on peer links the dialing agent is the one that sends
 *   ratio                  ws_gbps / tcp_gbps
 *   ratio_per_round        ws client-send / tcp within each round, and ratio_round_median their median: a
 *                          cross-check on `ratio` that is less exposed to load that changes between rounds
 *   *_rounds_gbps          every round's figure, in order, to show the spread
 *   cpu_ms_per_gb          per measurement kind, median CPU ms (user + system, whole process) per GB on the sending
 *                          and the receiving side: less sensitive than GB/s to other load on the machine, and it shows
 *                          which side a transport's extra work lands on
 *   message_bytes, gb_per_measurement, window_messages, rounds, seconds (wall time of the whole bench)
 *
 * For profiling: --cpu-prof-dir writes a V8 CPU profile of the peer process there (Chrome DevTools / speedscope);
 * --only tcp|ws-client-send|ws-server-send runs just that measurement (headline keys for the others are then null).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import { clientOptions } from '../protocol/ws-options.ts';

/** Messages between this process and the peer over the IPC channel; never used inside a timed window. */
export type PeerCommand =
  | { op: 'arm'; kind: 'tcp-recv' | 'ws-recv' | 'ws-send'; bytes: number; window: number }
  | { op: 'cpu' }
  | { op: 'exit' };
export type PeerReport =
  | { type: 'ready'; tcpPort: number; wsPort: number }
  | { type: 'armed'; cpuUs: number }
  | { type: 'cpu'; cpuUs: number }
  | { type: 'error'; message: string };

/**
 * Writes `total` bytes as repeated `payload` writes, keeping at most `window` writes whose callback has not fired.
 * Both transports go through this one function so their backpressure is identical: net's write callback and ws's
 * send callback both fire when the bytes have been handed to the kernel, so each side has at most
 * window × payload bytes queued in user space and never an unbounded queue.
 */
export function pump(
  write: (chunk: Buffer, cb: (err?: Error | null) => void) => void,
  payload: Buffer,
  total: number,
  window: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let sent = 0;
    let inFlight = 0;
    let failed = false;
    const onWritten = (err?: Error | null): void => {
      if (failed) return;
      if (err) {
        failed = true;
        reject(err);
        return;
      }
      inFlight--;
      fill();
    };
    const fill = (): void => {
      while (inFlight < window && sent < total) {
        const n = Math.min(payload.length, total - sent);
        sent += n;
        inFlight++;
        write(n === payload.length ? payload : payload.subarray(0, n), onWritten);
      }
      if (sent >= total && inFlight === 0) resolve();
    };
    fill();
  });
}

type Kind = 'tcp' | 'ws-client-send' | 'ws-server-send';
const LABEL: Record<Kind, string> = {
  tcp: 'tcp  client→server',
  'ws-client-send': 'ws   client→server (zero mask)',
  'ws-server-send': 'ws   server→client (unmasked)',
};

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Three decimals; null for a measurement that was not run (--only), since JSON has no NaN. */
const round3 = (x: number): number | null => (Number.isFinite(x) ? Math.round(x * 1000) / 1000 : null);
const round0 = (x: number): number | null => (Number.isFinite(x) ? Math.round(x) : null);

/** One measurement: payload throughput, and CPU time (user + system, all threads) per 1e9 payload bytes on each side. */
type Sample = { gbps: number; senderCpu: number; receiverCpu: number };

export default async function main(argv: string[]): Promise<object> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'mb-per-message': { type: 'string', default: '4' },
      gb: { type: 'string', default: '1' },
      rounds: { type: 'string', default: '5' },
      window: { type: 'string', default: '4' },
      'cpu-prof-dir': { type: 'string' },
      only: { type: 'string' },
    },
    strict: true,
  });
  const messageBytes = Math.round(Number(values['mb-per-message']) * 2 ** 20);
  const total = Math.round(Number(values.gb) * 1e9);
  const rounds = Number(values.rounds);
  const window = Number(values.window);
  if (values.only && !(values.only in LABEL)) throw new Error(`--only: one of ${Object.keys(LABEL).join(', ')}`);
  if (!(messageBytes > 0) || !(total >= messageBytes) || !(rounds >= 1) || !(window >= 1)) {
    throw new Error(`bad options: ${JSON.stringify(values)}`);
  }
  const started = performance.now();

  const here = dirname(fileURLToPath(import.meta.url));
  const execArgv = ['--import', 'tsx'];
  const profDir = values['cpu-prof-dir'];
  if (profDir) execArgv.push('--cpu-prof', `--cpu-prof-dir=${profDir}`);
  // The peer's stdout goes to our stderr: our stdout carries only the result line.
  const child = spawn(process.execPath, [...execArgv, join(here, 'transport-peer.ts'), String(messageBytes)], {
    cwd: join(here, '..'),
    stdio: ['ignore', 2, 2, 'ipc'],
  });
  // Last resort if we die without reaching `finally` (e.g. an uncaught exception elsewhere).
  const killOnExit = (): void => void child.kill('SIGKILL');
  process.once('exit', killOnExit);

  let tcp: net.Socket | undefined;
  let ws: WebSocket | undefined;
  try {
    const peer = new Peer(child);
    const ready = await peer.next();
    if (ready.type !== 'ready') throw new Error(`peer: unexpected ${JSON.stringify(ready)}`);

    tcp = net.connect({ host: '127.0.0.1', port: ready.tcpPort });
    // Socket errors (e.g. the peer vanished) end the bench with that error rather than an unhandled 'error' event.
    tcp.on('error', (err) => peer.fail(new Error(`tcp: ${err.message}`)));
    await peer.race(once(tcp, 'connect'));
    // ws calls setNoDelay on its sockets; do the same so TCP differs from ws only by framing.
    tcp.setNoDelay(true);
    ws = new WebSocket(`ws://127.0.0.1:${ready.wsPort}/`, clientOptions(messageBytes));
    ws.on('error', (err) => peer.fail(new Error(`ws: ${err.message}`)));
    await peer.race(once(ws, 'open'));

    // Even 50 MB/s would be far below anything plausible on loopback.
    const limitS = Math.max(30, total / 50e6);
    const payload = Buffer.allocUnsafe(messageBytes);
    randomFillSync(payload);

    const measure = async (kind: Kind, bytes: number): Promise<Sample> => {
      const role = kind === 'tcp' ? 'tcp-recv' : kind === 'ws-client-send' ? 'ws-recv' : 'ws-send';
      const peerCpu0 = await peer.arm(role, bytes, window);
      // A stalled transfer (neither an error nor the peer dying) should fail the bench, not hang it.
      const stalled = setTimeout(() => peer.fail(new Error(`${kind}: no completion within ${limitS} s`)), limitS * 1000);
      const cpu0 = process.cpuUsage();
      let t0: number;
      if (kind === 'tcp') {
        const sock = tcp!;
        const acked = once(sock, 'data');
        t0 = performance.now();
        await peer.race(pump((c, cb) => sock.write(c, cb), payload, bytes, window));
        await peer.race(acked);
      } else if (kind === 'ws-client-send') {
        const sock = ws!;
        const acked = new Promise<void>((resolve) => {
          const onMessage = (_data: unknown, isBinary: boolean): void => {
            if (isBinary) return;
            sock.off('message', onMessage);
            resolve();
          };
          sock.on('message', onMessage);
        });
        t0 = performance.now();
        await peer.race(pump((c, cb) => sock.send(c, { binary: true }, cb), payload, bytes, window));
        await peer.race(acked);
      } else {
        const sock = ws!;
        const received = new Promise<void>((resolve, reject) => {
          let got = 0;
          const onMessage = (data: Buffer, isBinary: boolean): void => {
            if (!isBinary) return;
            got += data.length;
            if (got < bytes) return;
            sock.off('message', onMessage);
            if (got > bytes) reject(new Error(`received ${got} bytes, expected ${bytes}`));
            else resolve();
          };
          sock.on('message', onMessage);
        });
        t0 = performance.now();
        sock.send('go');
        await peer.race(received);
      }
      const seconds = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      clearTimeout(stalled);
      const dialerCpu = ((cpu.user + cpu.system) / 1000 / bytes) * 1e9;
      const peerCpu = (((await peer.cpuUs()) - peerCpu0) / 1000 / bytes) * 1e9;
      const peerSends = kind === 'ws-server-send';
      return {
        gbps: bytes / seconds / 1e9,
        senderCpu: peerSends ? peerCpu : dialerCpu,
        receiverCpu: peerSends ? dialerCpu : peerCpu,
      };
    };
    const show = (x: Sample): string =>
      `${x.gbps.toFixed(3)} GB/s, CPU ms/GB sender ${x.senderCpu.toFixed(0)} receiver ${x.receiverCpu.toFixed(0)}`;

    const kinds = values.only ? [values.only as Kind] : (['tcp', 'ws-client-send', 'ws-server-send'] as Kind[]);
    // Warm-up: JIT, TCP windows, allocator; not reported.
    const warm = Math.max(messageBytes, Math.min(total, 256e6));
    for (const k of kinds) {
      const x = await measure(k, warm);
      console.error(`warm-up  ${LABEL[k]}: ${(warm / 1e9).toFixed(2)} GB, ${show(x)}`);
    }
    const results: Record<Kind, Sample[]> = { tcp: [], 'ws-client-send': [], 'ws-server-send': [] };
    for (let r = 0; r < rounds; r++) {
      // Rotate the order each round so none of the three always runs first (or right after another) after a pause.
      for (let i = 0; i < kinds.length; i++) {
        const k = kinds[(i + r) % kinds.length]!;
        const x = await measure(k, total);
        results[k].push(x);
        console.error(`round ${r + 1}/${rounds} ${LABEL[k]}: ${(total / 1e9).toFixed(2)} GB, ${show(x)}`);
      }
    }

    const gbps = (k: Kind): number[] => results[k].map((x) => x.gbps);
    const tcpGbps = median(gbps('tcp'));
    const wsClient = median(gbps('ws-client-send'));
    const wsServer = median(gbps('ws-server-send'));
    // ws and TCP measured a few seconds apart in the same round share whatever else the machine was doing then.
    const perRound = results.tcp.flatMap((t, i) => {
      const w = results['ws-client-send'][i];
      return w ? [w.gbps / t.gbps] : [];
    });
    const cpu = (k: Kind): { sender: number | null; receiver: number | null } => ({
      sender: round0(median(results[k].map((x) => x.senderCpu))),
      receiver: round0(median(results[k].map((x) => x.receiverCpu))),
    });
    return {
      bench: 'transport',
      tcp_gbps: round3(tcpGbps),
      ws_gbps: round3(wsClient),
      ratio: round3(wsClient / tcpGbps),
      ratio_per_round: perRound.map(round3),
      ratio_round_median: round3(median(perRound)),
      ws_direction: 'client-send',
      ws_client_send_gbps: round3(wsClient),
      ws_server_send_gbps: round3(wsServer),
      tcp_rounds_gbps: gbps('tcp').map(round3),
      ws_client_send_rounds_gbps: gbps('ws-client-send').map(round3),
      ws_server_send_rounds_gbps: gbps('ws-server-send').map(round3),
      cpu_ms_per_gb: { tcp: cpu('tcp'), ws_client_send: cpu('ws-client-send'), ws_server_send: cpu('ws-server-send') },
      message_bytes: messageBytes,
      gb_per_measurement: total / 1e9,
      window_messages: window,
      rounds,
      timing: 'sender-side: first write → last byte received and reported back (one small-message trip included)',
      seconds: round3((performance.now() - started) / 1000),
    };
  } finally {
    tcp?.destroy();
    ws?.terminate();
    await stopPeer(child);
    process.off('exit', killOnExit);
  }
}

/** The IPC side of the peer, plus a way to fail fast (instead of hanging) if the peer dies mid-measurement. */
class Peer {
  private readonly queue: PeerReport[] = [];
  private waiter: ((m: PeerReport) => void) | undefined;
  private readonly died: Promise<never>;
  /** Makes every pending and future race() reject. */
  readonly fail: (e: Error) => void;

  constructor(private readonly child: ChildProcess) {
    let fail!: (e: Error) => void;
    this.died = new Promise<never>((_, reject) => (fail = reject));
    this.died.catch(() => {});
    this.fail = fail;
    child.once('exit', (code, signal) => fail(new Error(`peer exited (code ${code}, signal ${signal})`)));
    child.on('error', fail);
    child.on('message', (m: PeerReport) => {
      // The peer reports a problem it sees mid-measurement here, while we wait on the data connection.
      if (m.type === 'error') fail(new Error(`peer: ${m.message}`));
      else if (this.waiter) {
        const w = this.waiter;
        this.waiter = undefined;
        w(m);
      } else this.queue.push(m);
    });
  }

  race<T>(p: Promise<T>): Promise<T> {
    // When the peer's failure wins, `p` may still reject later (e.g. events.once on a reset socket); that is expected.
    p.catch(() => {});
    return Promise.race([p, this.died]);
  }

  next(): Promise<PeerReport> {
    const m = this.queue.shift();
    if (m) return Promise.resolve(m);
    return this.race(new Promise<PeerReport>((resolve) => (this.waiter = resolve)));
  }

  /** Returns the peer's CPU time so far (µs, user + system). */
  async arm(kind: 'tcp-recv' | 'ws-recv' | 'ws-send', bytes: number, window: number): Promise<number> {
    this.child.send({ op: 'arm', kind, bytes, window } satisfies PeerCommand);
    const r = await this.next();
    if (r.type !== 'armed') throw new Error(`peer: unexpected ${JSON.stringify(r)}`);
    return r.cpuUs;
  }

  async cpuUs(): Promise<number> {
    this.child.send({ op: 'cpu' } satisfies PeerCommand);
    const r = await this.next();
    if (r.type !== 'cpu') throw new Error(`peer: unexpected ${JSON.stringify(r)}`);
    return r.cpuUs;
  }
}

/** Asks the peer to exit (so a CPU profile gets written), and kills it if it has not within 3 s. */
async function stopPeer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  // The channel may already be closing (peer died); the kill below covers that, so a failed send is not an error.
  if (child.connected) child.send({ op: 'exit' } satisfies PeerCommand, () => {});
  const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
  try {
    await exited;
  } finally {
    clearTimeout(timer);
  }
}
