/**
 * Browser sessions for the dashboard. A person logs in once with the cluster token (POST /api/login); the
 * coordinator answers with a random session id in an HttpOnly, SameSite=Strict cookie, so the token itself never
 * sits in the page, in local storage or in a URL. API clients keep using `Authorization: Bearer <token>`.
 *
 * Sessions live in memory: a coordinator restart logs everyone out, which is the safe direction. Ids are 32 random
 * bytes compared as map keys (an unguessable id cannot be found by timing a lookup).
 */
import { randomBytes } from 'node:crypto';

export const SESSION_COOKIE = 'meshtrain_session';
/** How long a session lasts without being used. */
export const SESSION_IDLE_MS = 12 * 60 * 60 * 1000;
/** Most sessions held at once; the least recently used goes first. */
export const MAX_SESSIONS = 1000;

export class SessionStore {
  readonly #sessions = new Map<string, number>(); // id → expiry (ms), in least-recently-used order
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  create(): string {
    const id = randomBytes(32).toString('base64url');
    this.#sessions.set(id, this.#now() + SESSION_IDLE_MS);
    if (this.#sessions.size > MAX_SESSIONS) this.#sessions.delete(this.#sessions.keys().next().value!);
    return id;
  }

  /** True for a live session, whose idle clock restarts. */
  touch(id: string | undefined): boolean {
    if (!id) return false;
    const expiry = this.#sessions.get(id);
    if (expiry === undefined) return false;
    this.#sessions.delete(id);
    if (expiry <= this.#now()) return false;
    this.#sessions.set(id, this.#now() + SESSION_IDLE_MS);
    return true;
  }

  end(id: string | undefined): void {
    if (id) this.#sessions.delete(id);
  }
}

/** The session id in a Cookie header, if any. */
export function sessionIdOf(cookieHeader: string | undefined): string | undefined {
  for (const part of (cookieHeader ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === SESSION_COOKIE) return part.slice(eq + 1).trim() || undefined;
  }
  return undefined;
}

/** Set-Cookie for a new session (`secure` when the coordinator serves HTTPS). */
export function sessionCookie(id: string, secure: boolean): string {
  return `${SESSION_COOKIE}=${id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${SESSION_IDLE_MS / 1000}${secure ? '; Secure' : ''}`;
}

export const clearedSessionCookie = `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0`;
