// The coordinator's API as the page sees it: JSON over fetch with the session cookie, and the live event stream.

/** An API error: the HTTP status and the coordinator's {error: {code, message, details}}. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = error?.code ?? 'HTTP_ERROR';
    this.details = Array.isArray(error?.details) ? error.details : [];
  }
}

/** Called when a request comes back 401: the session expired or was logged out elsewhere. */
let onUnauthorized = () => {};
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

/**
 * `method path [body]` → the parsed JSON answer, or throws ApiError. Every request carries X-Requested-With: the
 * coordinator refuses cookie-authenticated writes without it, and a cross-site form cannot set it (CSRF guard).
 */
export async function api(method, path, body) {
  const headers = { 'x-requested-with': 'meshtrain' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new ApiError(res.status, json?.error);
    if (res.status === 401 && path !== '/api/login') onUnauthorized(err);
    throw err;
  }
  return json;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body ?? {});

/** The events /api/events sends (coordinator contract); each is dispatched to `onEvent(name, data)`. */
const EVENT_NAMES = ['nodes', 'jobs', 'metrics', 'live', 'checkpoint', 'models', 'gateways'];

/**
 * Opens the live stream. EventSource reconnects by itself after a dropped connection; `onStatus` hears 'live' when
 * it is open, 'reconnecting' while it retries and 'offline' when the browser gave up (the server refused it, e.g.
 * the session ended). `onOpen` runs on every (re)connection: events sent while the stream was down are lost, so
 * whoever listens refetches what they show.
 */
export function connectEvents({ onEvent, onStatus, onOpen }) {
  const source = new EventSource('/api/events');
  source.addEventListener('open', () => {
    onStatus('live');
    onOpen();
  });
  source.addEventListener('error', () => onStatus(source.readyState === EventSource.CLOSED ? 'offline' : 'reconnecting'));
  for (const name of EVENT_NAMES) {
    source.addEventListener(name, (e) => {
      let data;
      try {
        data = JSON.parse(e.data);
      } catch {
        return; // a malformed event is the server's bug; the next one repairs the view
      }
      onEvent(name, data);
    });
  }
  return () => source.close();
}
