/**
 * Can other agents dial this one? Learned at every join (agent-hub.ts): the coordinator dials the peer address the
 * agent's hello advertised and sends `peer.probe` with a fresh random challenge; only the agent that said that
 * hello knows its `reachKey`, so only it can answer HMAC-SHA256(reachKey, challenge). A wrong or stale address (one
 * that reaches nobody, or another agent, or a proxy to another) therefore counts as unreachable, as does silence
 * for PROBE_TIMEOUT_MS (an inbound SYN dropped by NAT or a firewall looks exactly like that).
 *
 * The coordinator dials from where it stands, so "reachable" means reachable from the coordinator's network; agents
 * that share a network the coordinator is outside of may reach each other where the coordinator cannot (they are
 * then relayed needlessly, which costs speed but not correctness). An agent that knows better says --relay-only.
 *
 * `decideReach` is the pure decision from the hello and the probe's outcome; `probePeer` does the I/O.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import WebSocket from 'ws';
import { MessageConnection } from '../../protocol/connection.ts';
import { MAX_PEER_ATTACHMENT, parsePeerMessage, type PeerMessage } from '../../protocol/peer.ts';
import { clientOptions } from '../../protocol/ws-options.ts';
import type { Logger } from '../../common/log.ts';
import type { NodeReach } from '../store/state-store.ts';

/** How long the coordinator waits for a peer port to answer its probe (connect, TLS, upgrade and proof). */
export const PROBE_TIMEOUT_MS = 3000;

export type ProbeOutcome = { ok: true; rttMs: number } | { ok: false; reason: string };

/** The proof an agent gives for `challenge`: HMAC-SHA256 under its hello's reachKey, hex. */
export function reachProof(reachKey: string, challenge: string): string {
  return createHmac('sha256', reachKey).update(challenge).digest('hex');
}

/** What the hello and the probe (undefined: none was run) say about an agent, as stored with its node record. */
export function decideReach(hello: { inbound?: boolean | undefined; reachKey?: string | undefined }, probe: ProbeOutcome | undefined, nowMs: number): NodeReach {
  if (hello.inbound === false) {
    return { state: 'relayed', reason: 'the agent takes no inbound connections (--relay-only)', checkedAtMs: nowMs, relay: 'coordinator' };
  }
  if (!hello.reachKey) return { state: 'direct', reason: 'not checked: the agent sent no reach key (an older agent)', checkedAtMs: nowMs };
  if (!probe) return { state: 'checking', reason: 'checking its peer address', checkedAtMs: nowMs };
  if (probe.ok) return { state: 'direct', reason: `its peer port answered the probe in ${probe.rttMs.toFixed(1)} ms`, checkedAtMs: nowMs, probeRttMs: round(probe.rttMs) };
  return { state: 'relayed', reason: probe.reason, checkedAtMs: nowMs, relay: 'coordinator' };
}

/**
 * Dials `address` and checks that the agent holding `reachKey` answers there. Never throws: every failure is an
 * outcome with its reason (no answer in time, refused, a wrong proof: another agent).
 */
export function probePeer(address: string, reachKey: string, opts: { timeoutMs?: number; ca?: readonly string[]; log: Logger }): Promise<ProbeOutcome> {
  const timeoutMs = opts.timeoutMs ?? PROBE_TIMEOUT_MS;
  const challenge = randomBytes(24).toString('base64url');
  const started = performance.now();
  return new Promise((resolve) => {
    let settled = false;
    const done = (outcome: ProbeOutcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(outcome);
      conn?.close(1000, 'probe done');
      if (ws && ws.readyState === WebSocket.CONNECTING) ws.terminate();
    };
    const timer = setTimeout(() => done({ ok: false, reason: `no answer from ${address} within ${timeoutMs} ms` }), timeoutMs);
    let ws: WebSocket | undefined;
    let conn: MessageConnection<PeerMessage, PeerMessage> | undefined;
    try {
      ws = new WebSocket(address, { ...clientOptions(64 * 1024), handshakeTimeout: timeoutMs, ...(opts.ca ? { ca: [...opts.ca] } : {}) });
    } catch (err) {
      return done({ ok: false, reason: `cannot dial ${address}: ${(err as Error).message}` });
    }
    let lastError = '';
    ws.on('error', (err) => (lastError = (err as NodeJS.ErrnoException).code ?? err.message));
    conn = new MessageConnection<PeerMessage, PeerMessage>(ws, {
      parse: parsePeerMessage,
      label: `reachability probe of ${address}`,
      log: opts.log,
      maxAttachmentBytes: MAX_PEER_ATTACHMENT,
      onMessage: (msg) => {
        if (msg.type !== 'peer.probed') return done({ ok: false, reason: `${address} answered the probe with ${msg.type}` });
        const want = Buffer.from(reachProof(reachKey, challenge), 'hex');
        const got = Buffer.from(msg.proof, 'hex');
        if (got.length !== want.length || !timingSafeEqual(got, want)) {
          return done({ ok: false, reason: `${address} is another agent (wrong proof): the address is stale or wrong` });
        }
        done({ ok: true, rttMs: performance.now() - started });
      },
      onClose: (code, reason) => done({ ok: false, reason: `${address} closed the probe (${lastError || code}${reason ? `: ${reason}` : ''})` }),
    });
    ws.once('open', () => conn!.send({ type: 'peer.probe', challenge }));
  });
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
