/**
 * TLS for every link: the certificate and key a server presents (--tls-cert/--tls-key), and the CAs a client
 * trusts (--ca) when the coordinator's or a peer's certificate comes from a private CA or is self-signed.
 *
 * Without --ca a client trusts Node's bundled roots plus NODE_EXTRA_CA_CERTS, which Node reads at start-up: the
 * zero-config alternative. With --ca the bundle is added to both (a `ca` option replaces the default store, so
 * the defaults are passed along explicitly). fetch cannot take a `ca` in Node 20 without undici's Agent, so
 * `fetchTrusting` is a small fetch over node:https for the clients that need one (artifacts, registry, CLIs).
 */
import { X509Certificate } from 'node:crypto';
import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { createSecureContext, rootCertificates } from 'node:tls';

/** What a server presents: its certificate chain and private key, PEM. */
export interface ServerTls {
  cert: Buffer;
  key: Buffer;
}

/** Problems with a file a flag names (missing, a folder, unreadable); empty when it can be read. */
export function fileProblems(path: string, flag: string): string[] {
  try {
    if (!statSync(path).isFile()) return [`${flag} ${path} is not a file`];
    accessSync(path, constants.R_OK);
    return [];
  } catch (err) {
    return [`${flag} ${path} cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`];
  }
}

/** Problems with a --tls-cert/--tls-key pair as given: both or neither, and each readable. */
export function tlsPairProblems(certPath: string | undefined, keyPath: string | undefined, flags = ['--tls-cert', '--tls-key'] as const): string[] {
  if (certPath === undefined && keyPath === undefined) return [];
  if (certPath === undefined || keyPath === undefined) return [`${flags[0]} and ${flags[1]} go together: give both or neither`];
  return [...fileProblems(certPath, flags[0]), ...fileProblems(keyPath, flags[1])];
}

/**
 * Reads a server's certificate and key and checks that they are PEM and belong together, so a wrong file fails at
 * start-up with its name rather than at the first handshake. Throws an Error whose message names the flag.
 */
export function loadServerTls(certPath: string, keyPath: string, flags = ['--tls-cert', '--tls-key'] as const): ServerTls {
  const problems = tlsPairProblems(certPath, keyPath, flags);
  if (problems.length) throw new Error(problems.join('; '));
  const cert = readFileSync(certPath);
  const key = readFileSync(keyPath);
  try {
    new X509Certificate(cert);
  } catch (err) {
    throw new Error(`${flags[0]} ${certPath} is not a PEM certificate: ${(err as Error).message}`);
  }
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    throw new Error(`${flags[1]} ${keyPath} is not the private key of ${flags[0]} ${certPath} (or not a PEM key): ${(err as Error).message}`);
  }
  return { cert, key };
}

/**
 * The CAs a client trusts given --ca PATH (a PEM bundle of one or more certificates): Node's roots, the file
 * NODE_EXTRA_CA_CERTS names, and the bundle. Throws an Error naming the flag when the file is unusable.
 */
export function loadTrust(caPath: string, flag = '--ca'): string[] {
  const problems = fileProblems(caPath, flag);
  if (problems.length) throw new Error(problems.join('; '));
  const pem = readFileSync(caPath, 'utf8');
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new Error(`${flag} ${caPath} holds no PEM certificate`);
  try {
    new X509Certificate(pem); // the first certificate of the bundle parses
  } catch (err) {
    throw new Error(`${flag} ${caPath} is not a PEM certificate: ${(err as Error).message}`);
  }
  const extra = process.env.NODE_EXTRA_CA_CERTS;
  const extraPem = extra ? (() => { try { return [readFileSync(extra, 'utf8')]; } catch { return []; } })() : [];
  return [...rootCertificates, ...extraPem, pem];
}

const NULL_BODY_STATUS = new Set([101, 204, 205, 304]);

/**
 * `fetch` trusting `ca` for https URLs; plain `fetch` when `ca` is undefined. Supports what our clients send:
 * a method, headers, and a string, byte or ReadableStream body (an upload, written with backpressure; the caller
 * sets content-length); the response body is buffered. It never follows redirects. Fails like fetch does: a
 * TypeError('fetch failed') whose `cause` carries the socket or TLS error code.
 */
export function fetchTrusting(ca: readonly string[] | undefined): typeof fetch {
  if (!ca) return fetch;
  const agents = { 'https:': new https.Agent({ keepAlive: true, ca: [...ca] }), 'http:': new http.Agent({ keepAlive: true }) };
  const trustingFetch = (input: string | URL | Request, init: RequestInit = {}): Promise<Response> =>
    new Promise((resolve, reject) => {
      const url = new URL(input instanceof Request ? input.url : input);
      if (url.protocol !== 'https:' && url.protocol !== 'http:') return reject(new TypeError(`fetch: unsupported scheme ${url.protocol}`));
      const body = init.body;
      const stream = body instanceof ReadableStream ? (body as ReadableStream<Uint8Array>) : null;
      if (body != null && !stream && typeof body !== 'string' && !(body instanceof Uint8Array)) return reject(new TypeError('fetch: only string, byte and stream bodies are supported'));
      const payload = body == null || stream ? undefined : typeof body === 'string' ? Buffer.from(body) : (body as Uint8Array);
      const headers: Record<string, string> = {};
      new Headers(init.headers).forEach((value, name) => (headers[name] = value));
      if (payload) headers['content-length'] = String(payload.byteLength);
      const method = (init.method ?? 'GET').toUpperCase();
      const mod = url.protocol === 'https:' ? https : http;
      const req = mod.request(url, { method, headers, agent: agents[url.protocol], ...(init.signal ? { signal: init.signal } : {}) }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (err) => reject(new TypeError('fetch failed', { cause: err })));
        res.on('end', () => {
          const status = res.statusCode ?? 500;
          const out = new Headers();
          for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) out.append(res.rawHeaders[i]!, res.rawHeaders[i + 1]!);
          const bytes = method === 'HEAD' || NULL_BODY_STATUS.has(status) ? null : Buffer.concat(chunks);
          resolve(new Response(bytes, { status, statusText: res.statusMessage ?? '', headers: out }));
        });
      });
      req.on('error', (err) => reject(new TypeError('fetch failed', { cause: err })));
      if (!stream) return void req.end(payload);
      // A stream body (an upload): piece by piece, each after the socket took the previous one.
      void (async () => {
        const reader = stream.getReader();
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            if (req.destroyed) throw new Error('the request ended before its body was sent');
            if (!req.write(value)) await new Promise<void>((ok, fail) => {
              const onError = (err: Error) => fail(err);
              req.once('drain', () => (req.off('error', onError), ok()));
              req.once('error', onError);
            });
          }
          req.end();
        } catch (err) {
          req.destroy(err as Error);
          void reader.cancel(err).catch(() => {});
        }
      })();
    });
  return trustingFetch as typeof fetch;
}
