/**
 * The gateways that serve this cluster's models. A gateway started with `--registry http://COORDINATOR` and an
 * admin key announces itself (POST /api/gateways, cluster token) every GATEWAY_ANNOUNCE_MS; the coordinator keeps
 * the latest announcement in memory and relays the dashboard's deployment calls to the gateway's /admin API
 * with that key, so the key never reaches a browser. A gateway silent for GATEWAY_SILENT_MS shows as not alive;
 * one silent for GATEWAY_FORGET_MS is forgotten.
 */
import { CoordinatorError } from '../errors.ts';
import { GATEWAY_ANNOUNCE_MS, type GatewayAnnouncement } from '../../protocol/gateway-announce.ts';

export const GATEWAY_SILENT_MS = 3 * GATEWAY_ANNOUNCE_MS;
export const GATEWAY_FORGET_MS = 24 * 60 * 60 * 1000;
/** Most gateways remembered (a cluster has a handful; the bound keeps a token holder from filling memory). */
export const MAX_GATEWAYS = 64;
/** How long a relayed call may take before the dashboard is told the gateway did not answer. */
export const RELAY_TIMEOUT_MS = 10_000;

export interface GatewayView {
  name: string;
  url: string;
  lastSeenMs: number;
  alive: boolean;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** What is wrong with an announcement body, one line per field; empty when it is fine. */
export function announcementProblems(body: unknown): string[] {
  if (!body || typeof body !== 'object' || Array.isArray(body)) return ['/ must be an object {name, url, adminKey}'];
  const b = body as Record<string, unknown>;
  const problems: string[] = [];
  if (typeof b.name !== 'string' || !NAME.test(b.name)) problems.push('/name must be 1–64 characters of A–Z a–z 0–9 . _ -, starting with a letter or digit');
  let url: URL | null = null;
  try {
    url = typeof b.url === 'string' && b.url.length <= 512 ? new URL(b.url) : null;
  } catch {
    url = null;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || url.pathname !== '/' || url.search || url.username) {
    problems.push('/url must be http(s)://host:port with no path, query or credentials');
  }
  if (typeof b.adminKey !== 'string' || b.adminKey.length < 1 || b.adminKey.length > 512) problems.push('/adminKey must be the gateway\'s admin key (1–512 characters)');
  for (const key of Object.keys(b)) if (!['name', 'url', 'adminKey'].includes(key)) problems.push(`/${key.slice(0, 40)} is not a field of an announcement`);
  return problems;
}

export class GatewayDirectory {
  readonly #gateways = new Map<string, GatewayAnnouncement & { lastSeenMs: number }>();
  readonly #now: () => number;
  readonly #fetch: typeof fetch;

  constructor(opts: { now?: () => number; fetch?: typeof fetch } = {}) {
    this.#now = opts.now ?? Date.now;
    this.#fetch = opts.fetch ?? fetch;
  }

  /** Records an announcement; true when the gateway is new or changed address (worth telling watchers). */
  announce(a: GatewayAnnouncement): boolean {
    this.#forgetOld();
    const before = this.#gateways.get(a.name);
    if (!before && this.#gateways.size >= MAX_GATEWAYS) {
      throw new CoordinatorError('CRD_ERR_CONFLICT', `already ${MAX_GATEWAYS} gateways; a silent one is forgotten after ${GATEWAY_FORGET_MS / 3_600_000} h`);
    }
    this.#gateways.set(a.name, { name: a.name, url: a.url.replace(/\/$/, ''), adminKey: a.adminKey, lastSeenMs: this.#now() });
    return !before || before.url !== a.url.replace(/\/$/, '');
  }

  list(): GatewayView[] {
    this.#forgetOld();
    const now = this.#now();
    return [...this.#gateways.values()]
      .map((g) => ({ name: g.name, url: g.url, lastSeenMs: g.lastSeenMs, alive: now - g.lastSeenMs < GATEWAY_SILENT_MS }))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * Relays `method path` (under the gateway's /admin) with the admin key and answers the gateway's status and
   * JSON body as they are; an unreachable or silent gateway is a 502 naming it.
   */
  async relay(name: string, method: 'GET' | 'POST', adminPath: string, body?: unknown): Promise<{ status: number; body: unknown }> {
    const g = this.#gateways.get(name);
    if (!g) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no gateway ${name}: a gateway appears once it announces itself (gateway serve --registry <this coordinator> --admin-key …)`);
    let res: Response;
    try {
      res = await this.#fetch(`${g.url}/admin${adminPath}`, {
        method,
        headers: { authorization: `Bearer ${g.adminKey}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(RELAY_TIMEOUT_MS),
      });
    } catch (err) {
      throw new CoordinatorError('CRD_ERR_GATEWAY_UNREACHABLE', `gateway ${name} at ${g.url} did not answer: ${(err as Error).message}`, { cause: err });
    }
    // Passed on as they are, a 401 would read as "your dashboard session expired"; it means the key is stale.
    if (res.status === 401 || res.status === 403) {
      throw new CoordinatorError('CRD_ERR_GATEWAY_UNREACHABLE', `gateway ${name} refused the admin key it announced (${res.status}); restart it or let it announce again`);
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      throw new CoordinatorError('CRD_ERR_GATEWAY_UNREACHABLE', `gateway ${name} answered ${res.status} with a body that is not JSON`);
    }
    return { status: res.status, body: parsed };
  }

  #forgetOld(): void {
    const now = this.#now();
    for (const [name, g] of this.#gateways) if (now - g.lastSeenMs > GATEWAY_FORGET_MS) this.#gateways.delete(name);
  }
}
