/**
 * Throwaway TLS material for tests, made in process (no openssl binary needed on the machine): a CA, and a server
 * certificate it signed for CN localhost with SAN DNS:localhost, IP:127.0.0.1 — good for the coordinator and every
 * agent's peer listener on loopback. Keys come from Node's crypto (native RSA key generation: ~50 ms where
 * node-forge's pure-JS one takes seconds); node-forge builds and signs the certificates. `makeTestPki` writes them
 * to a fresh temporary folder; `remove` deletes it.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';

export interface TestPki {
  dir: string;
  caCert: string; // PEM path: what clients pass as --ca
  cert: string; // PEM path: the server certificate (CN localhost), signed by the CA
  key: string; // PEM path: its private key
  /** A second, unrelated CA: a client trusting only it must fail the handshake. */
  otherCaCert: string;
  remove(): void;
}

const DAY_MS = 24 * 60 * 60 * 1000;

interface Keys {
  privatePem: string;
  privateKey: forge.pki.rsa.PrivateKey;
  publicKey: forge.pki.rsa.PublicKey;
}

function rsaKeys(): Keys {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  return { privatePem: privateKey, privateKey: forge.pki.privateKeyFromPem(privateKey), publicKey: forge.pki.publicKeyFromPem(publicKey) };
}

/** A certificate for `subject`'s key, signed by `issuer` (itself when absent: a self-signed CA). */
function certificate(cn: string, keys: Keys, issuer: { cert: forge.pki.Certificate; keys: Keys } | undefined, extensions: object[]): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = `01${randomBytes(15).toString('hex')}`; // positive, unique
  cert.validity.notBefore = new Date(Date.now() - DAY_MS);
  cert.validity.notAfter = new Date(Date.now() + 2 * DAY_MS);
  cert.setSubject([{ name: 'commonName', value: cn }]);
  cert.setIssuer(issuer ? issuer.cert.subject.attributes : [{ name: 'commonName', value: cn }]);
  cert.setExtensions(extensions);
  cert.sign(issuer ? issuer.keys.privateKey : keys.privateKey, forge.md.sha256.create());
  return cert;
}

function makeCa(name: string): { cert: forge.pki.Certificate; keys: Keys } {
  const keys = rsaKeys();
  const cert = certificate(name, keys, undefined, [
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  return { cert, keys };
}

export function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'meshtrain-pki-'));
  const ca = makeCa('meshtrain-test-ca');
  const other = makeCa('unrelated-ca');
  const serverKeys = rsaKeys();
  const server = certificate('localhost', serverKeys, ca, [
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
    { name: 'subjectAltName', altNames: [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }] },
  ]);
  const write = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text, { mode: 0o600 });
    return p;
  };
  return {
    dir,
    caCert: write('meshtrain-test-ca.crt', forge.pki.certificateToPem(ca.cert)),
    cert: write('server.crt', forge.pki.certificateToPem(server)),
    key: write('server.key', serverKeys.privatePem),
    otherCaCert: write('unrelated-ca.crt', forge.pki.certificateToPem(other.cert)),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
