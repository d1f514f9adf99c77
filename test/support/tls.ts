/**
 * Throwaway TLS material for tests, made with the system's openssl (/usr/bin/openssl): a CA, and a server
 * certificate it signed for CN localhost with SAN DNS:localhost, IP:127.0.0.1 — good for the coordinator and every
 * agent's peer listener on loopback. `makeTestPki` writes them to a fresh temporary folder; `remove` deletes it.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestPki {
  dir: string;
  caCert: string; // PEM path: what clients pass as --ca
  cert: string; // PEM path: the server certificate (CN localhost), signed by the CA
  key: string; // PEM path: its private key
  /** A second, unrelated CA: a client trusting only it must fail the handshake. */
  otherCaCert: string;
  remove(): void;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

function makeCa(dir: string, name: string): { cert: string; key: string } {
  const key = join(dir, `${name}.key`), cert = join(dir, `${name}.crt`);
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  return { cert, key };
}

export function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'meshtrain-pki-'));
  const ca = makeCa(dir, 'meshtrain-test-ca');
  const other = makeCa(dir, 'unrelated-ca');
  const key = join(dir, 'server.key'), csr = join(dir, 'server.csr'), cert = join(dir, 'server.crt'), ext = join(dir, 'server.ext');
  writeFileSync(ext, 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n');
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr, '-subj', '/CN=localhost'], dir);
  openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext], dir);
  return { dir, caCert: ca.cert, cert, key, otherCaCert: other.cert, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
