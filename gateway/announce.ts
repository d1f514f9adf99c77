/**
 * A gateway that reads its models from a coordinator's API tells that coordinator where it is, so the dashboard
 * can show its deployments and promote or roll back through it (coordinator/cluster/gateways.ts relays those calls with
 * the admin key sent here, over the cluster-token-authenticated API). Re-announced every GATEWAY_ANNOUNCE_MS: a
 * restarted coordinator learns about the gateway again within one period, and one that stops hearing from it
 * shows it as not alive. Failures are logged once per outage and retried; serving never depends on them.
 */
import { connect } from 'node:net';
import type { Logger } from '../common/log.ts';
import { GATEWAY_ANNOUNCE_MS, type GatewayAnnouncement } from '../protocol/gateway-announce.ts';

export interface AnnounceOptions {
  coordinatorUrl: string; // http(s)://host:port
  token: string;
  name: string;
  url: string; // where the coordinator reaches this gateway
  adminKey: string;
  log: Logger;
  everyMs?: number;
  fetch?: typeof fetch; // e.g. one trusting --ca for an https:// coordinator (common/tls.ts fetchTrusting)
}

/** Starts announcing; returns the function that stops. */
export function startAnnouncing(o: AnnounceOptions): () => void {
  let failing = false, announced = false;
  const announce = async () => {
    try {
      const res = await (o.fetch ?? fetch)(`${o.coordinatorUrl.replace(/\/$/, '')}/api/gateways`, {
        method: 'POST',
        headers: { authorization: `Bearer ${o.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: o.name, url: o.url, adminKey: o.adminKey } satisfies GatewayAnnouncement),
        signal: AbortSignal.timeout(5000),
      });
      if (!res.ok) throw new Error(`${res.status} ${((await res.json().catch(() => ({}))) as { error?: { message?: string } }).error?.message ?? ''}`);
      if (failing) o.log.info(`announced to the coordinator again as ${o.name} (${o.url})`);
      else if (!announced) o.log.info(`announced to the coordinator as ${o.name} (${o.url}); its dashboard shows this gateway's deployments`);
      announced = true;
      failing = false;
    } catch (err) {
      if (!failing) o.log.warn(`cannot announce this gateway to the coordinator (${(err as Error).message}); retrying every ${(o.everyMs ?? GATEWAY_ANNOUNCE_MS) / 1000} s`);
      failing = true;
    }
  };
  void announce();
  const timer = setInterval(() => void announce(), o.everyMs ?? GATEWAY_ANNOUNCE_MS);
  timer.unref();
  return () => clearInterval(timer);
}

/** This machine's address on the route to `url`'s host (what the coordinator can dial back), or undefined. */
export function localAddressToward(url: string, timeoutMs = 2000): Promise<string | undefined> {
  return new Promise((resolve) => {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      return resolve(undefined);
    }
    const socket = connect({ host: u.hostname, port: Number(u.port) || (u.protocol === 'https:' ? 443 : 80) });
    const done = (addr: string | undefined) => {
      socket.destroy();
      resolve(addr);
    };
    socket.setTimeout(timeoutMs, () => done(undefined));
    socket.once('connect', () => done(socket.localAddress?.replace(/^::ffff:/, '')));
    socket.once('error', () => done(undefined));
  });
}
