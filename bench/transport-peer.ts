/**
 * The listening side of `npm run bench -- transport` (bench/transport.ts spawns it; not meant to be run by hand):
 *   node --import tsx bench/transport-peer.ts MESSAGE_BYTES    (with an IPC channel on fd 3)
 *
 * Listens on 127.0.0.1 port 0 for one raw TCP and one ws connection, reports both ports over IPC, then does what each
 * 'arm' command says: count an exact number of incoming bytes and ack on the same connection, or send that many bytes
 * when the dialer says "go". Everything timed happens on the data connections; IPC only sets up the next measurement.
 */
import { randomFillSync } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { serverOptions } from '../protocol/ws-options.ts';
import { pump, type PeerCommand, type PeerReport } from './transport.ts';

const messageBytes = Number(process.argv[2]);
if (!(messageBytes > 0) || !process.send) {
  console.error('transport-peer: spawned by bench/transport.ts only (needs MESSAGE_BYTES and an IPC channel)');
  process.exit(2);
}

function cpuUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

function report(m: PeerReport): void {
  process.send!(m);
}

const payload = Buffer.allocUnsafe(messageBytes);
randomFillSync(payload);

type Armed = { kind: 'tcp-recv' | 'ws-recv' | 'ws-send'; bytes: number; window: number; got: number };
let armed: Armed | undefined;

function received(kind: 'tcp-recv' | 'ws-recv', n: number, ack: () => void): void {
  if (armed?.kind !== kind) {
    report({ type: 'error', message: `${n} bytes arrived on ${kind} while armed for ${armed?.kind ?? 'nothing'}` });
    return;
  }
  armed.got += n;
  if (armed.got < armed.bytes) return;
  if (armed.got > armed.bytes) report({ type: 'error', message: `received ${armed.got} bytes, expected ${armed.bytes}` });
  armed = undefined;
  ack();
}

const tcpServer = net.createServer((sock) => {
  sock.setNoDelay(true);
  const ackByte = Buffer.from([0x41]);
  sock.on('data', (chunk: Buffer) => received('tcp-recv', chunk.length, () => sock.write(ackByte)));
  sock.on('error', (err) => report({ type: 'error', message: `tcp: ${err.message}` }));
});

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, ...serverOptions(messageBytes) });
wss.on('connection', (ws: WebSocket) => {
  ws.on('message', (data: Buffer, isBinary: boolean) => {
    if (isBinary) {
      received('ws-recv', data.length, () => ws.send('ack'));
      return;
    }
    // A text message is the dialer's "go" for the server→client measurement.
    const a = armed;
    if (!a || a.kind !== 'ws-send') {
      report({ type: 'error', message: 'ws "go" while not armed to send' });
      return;
    }
    armed = undefined;
    pump((c, cb) => ws.send(c, { binary: true }, cb), payload, a.bytes, a.window).catch((err: Error) =>
      report({ type: 'error', message: `ws send: ${err.message}` }),
    );
  });
  ws.on('error', (err) => report({ type: 'error', message: `ws: ${err.message}` }));
});

process.on('message', (cmd: PeerCommand) => {
  if (cmd.op === 'exit') {
    // A clean exit (rather than a kill) is what lets --cpu-prof write its profile.
    process.exit(0);
  }
  if (cmd.op === 'cpu') {
    report({ type: 'cpu', cpuUs: cpuUs() });
    return;
  }
  armed = { kind: cmd.kind, bytes: cmd.bytes, window: cmd.window, got: 0 };
  report({ type: 'armed', cpuUs: cpuUs() });
});
// If the dialer dies, the IPC channel closes: leave no orphan behind.
process.on('disconnect', () => process.exit(0));

tcpServer.listen(0, '127.0.0.1');
await Promise.all([once(tcpServer, 'listening'), once(wss, 'listening')]);
report({
  type: 'ready',
  tcpPort: (tcpServer.address() as net.AddressInfo).port,
  wsPort: (wss.address() as net.AddressInfo).port,
});
