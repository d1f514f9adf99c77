// node /app/deploy/container/healthcheck.mjs — the image's HEALTHCHECK: exit 0 when the program answers 200 on GET /healthz.
//
// Every program has the route, on a port chosen at start: the coordinator on --port (7070), the gateway on --port
// (8080), an agent on its --peer-port (0 = any free port, as agents scaled on one host network need). Rather than
// repeat each CLI's defaults here, it asks the kernel which TCP ports the program's own process listens on
// (its socket inodes in /proc/PID/fd, matched against /proc/net/tcp and tcp6) and tries /healthz on each, over
// HTTP and then HTTPS (a --tls-cert program; its certificate is not checked: this is a liveness probe on
// loopback). MESHTRAIN_HEALTH_URL=http://… asks that URL instead.
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';

const TIMEOUT_MS = 3000;

/** GET url; resolves true on 200. */
function healthy(url) {
  return new Promise((resolve) => {
    const get = url.startsWith('https:') ? https.get : http.get;
    const req = get(url, { timeout: TIMEOUT_MS, rejectUnauthorized: false }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(false));
  });
}

/** The PIDs of the meshtrain program in this container: node running /app/bin/*.js (not this script). */
function programPids() {
  const pids = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (argv.some((arg) => /(^|\/)bin\/(coordinator|node-agent|gateway)\.js$/.test(arg))) pids.push(name);
    } catch { /* the process ended */ }
  }
  return pids;
}

/** host:port of every listening TCP socket the processes hold. */
function listeningAddresses(pids) {
  const inodes = new Set();
  for (const pid of pids) {
    let fds = [];
    try { fds = readdirSync(`/proc/${pid}/fd`); } catch { continue; }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.add(m[1]);
      } catch { /* closed meanwhile */ }
    }
  }
  const out = [];
  for (const [file, any, loopback] of [['/proc/net/tcp', '00000000', '127.0.0.1'], ['/proc/net/tcp6', '00000000000000000000000000000000', '[::1]']]) {
    let rows = [];
    try { rows = readFileSync(file, 'utf8').trim().split('\n').slice(1); } catch { continue; }
    for (const row of rows) {
      const cols = row.trim().split(/\s+/); // sl local_address rem_address st … inode
      if (cols[3] !== '0A' || !inodes.has(cols[9])) continue; // 0A: LISTEN
      const [hexHost, hexPort] = cols[1].split(':');
      out.push(`${hexHost === any ? loopback : hostOf(hexHost, loopback)}:${parseInt(hexPort, 16)}`);
    }
  }
  return [...new Set(out)];
}

/** /proc/net/tcp's little-endian IPv4 hex as a dotted quad; an IPv6 address bound to is asked on loopback. */
function hostOf(hex, loopback) {
  if (hex.length !== 8) return loopback;
  return [3, 2, 1, 0].map((i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16)).join('.');
}

async function main() {
  if (process.env.MESHTRAIN_HEALTH_URL) return healthy(process.env.MESHTRAIN_HEALTH_URL);
  const pids = programPids();
  if (pids.length === 0) {
    console.error('healthcheck: no coordinator, node-agent or gateway process in this container');
    return false;
  }
  const addresses = listeningAddresses(pids);
  for (const address of addresses) {
    if (await healthy(`http://${address}/healthz`) || await healthy(`https://${address}/healthz`)) return true;
  }
  console.error(`healthcheck: no 200 from /healthz on ${addresses.join(', ') || 'any port (not listening yet)'}`);
  return false;
}

process.exit((await main()) ? 0 : 1);
