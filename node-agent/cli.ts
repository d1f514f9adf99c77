/**
 * node-agent join <coordinator-url> --token TOKEN [options]
 *
 * Entry point of the node agent (bin/node-agent.js). Exit codes: 0 after a clean leave (SIGINT/SIGTERM),
 * 2 for bad arguments, a refused token, a revoked credential or a protocol mismatch, 3 when the coordinator stayed unreachable for
 * --max-retries attempts, 1 for anything else.
 */
import { hostname } from 'node:os';
import { createLogger } from '../common/log.ts';
import { intOption, parseCli, UsageError, wsUrl } from '../common/cli.ts';
import { Agent, DEFAULT_BACKOFF } from './agent.ts';
import { measureCapabilities } from './capabilities.ts';
import { BACKENDS, type BackendChoice } from '../model/compute/backend.ts';
import { isBackendChoice } from '../protocol/backends.ts';
import { AgentError } from './errors.ts';
import { loadServerTls, loadTrust, tlsPairProblems, type ServerTls } from '../common/tls.ts';
import { createStepTracer, initTracing } from '../common/tracing.ts';
import { AgentMetrics } from './metrics.ts';
import { DEFAULT_CONNECTION_LIMITS } from '../common/conn-limits.ts';
import type { StepObserver } from '../common/step-report.ts';

const HELP = `Usage: node-agent join <coordinator-url> --token TOKEN [options]

Joins a meshtrain cluster: reports this machine's capabilities, heartbeats, and runs the work the coordinator
assigns (ring all-reduce with other agents over direct WebSocket links). Ctrl-C leaves the cluster cleanly.

Arguments:
  <coordinator-url>        ws://host:port or http://host:port of the coordinator

Options:
  --token TOKEN            the cluster's join token (printed by 'coordinator start'; or set MESHTRAIN_TOKEN)
  --name NAME              how this agent appears in the cluster (default: the host name and process id)
  --backend B              compute backend: ${BACKENDS.join('|')} (default: auto = a GPU through WebGPU, tfjs-node-gpu, tfjs-node, then wasm)
  --peer-port PORT         port for links from other agents, and for GET /metrics and /healthz (default: 0 = any free port)
  --peer-listen HOST       interface the peer listener binds (default: 0.0.0.0)
  --peer-host HOST         address other agents should dial (default: this machine's address toward the coordinator)
  --peer-advertise URL     the exact ws:// or wss:// URL other agents dial for this one, when it is not the peer listener
                           itself (a proxy or port mapping in front of it); overrides --peer-host
  --max-retries N          give up after N failed connection attempts in a row (default: never give up)
  --collective-timeout MS  fail a collective that makes no progress for this long (default: 30000)
  --peer-keepalive MS      drop a peer link that has been silent this long: no data, no answer to pings (default: 10000)
  --peer-hello-timeout MS  close a peer link that has not said peer.hello by then (default: 10000)
  --headers-timeout MS     peer port: cut an HTTP client that has not sent its request head by then (default: 10000)
  --max-connections N      peer port: open sockets beyond which new ones are dropped (default: 1024)
  --max-pending-hellos N   peer port: links still owing peer.hello beyond which new ones get 1013 (default: 64)
  --work-dir DIR           job data, checkpoints and the artifact cache (default: a folder in the system temp dir)
  --ca PATH                trust this PEM CA for a wss:// coordinator and wss:// peers (or set NODE_EXTRA_CA_CERTS)
  --tls-cert PATH          serve the peer listener over TLS with this PEM certificate: peers dial wss://; needs --tls-key
  --tls-key PATH           the PEM private key of --tls-cert
  -h, --help               show this help

Exit codes: 0 left cleanly, 1 error, 2 bad arguments / token refused / credential revoked / protocol mismatch,
3 coordinator unreachable.
Environment: LOG_LEVEL=debug|info|warn|error, MESHTRAIN_TOKEN.

Example:
  node-agent join ws://10.0.0.5:7070 --token 3f9c…
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseCli(argv, {
    token: { type: 'string' },
    name: { type: 'string' },
    backend: { type: 'string' },
    'peer-port': { type: 'string' },
    'peer-listen': { type: 'string' },
    'peer-host': { type: 'string' },
    'peer-advertise': { type: 'string' },
    'max-retries': { type: 'string' },
    'collective-timeout': { type: 'string' },
    'peer-keepalive': { type: 'string' },
    'peer-hello-timeout': { type: 'string' },
    'headers-timeout': { type: 'string' },
    'max-connections': { type: 'string' },
    'max-pending-hellos': { type: 'string' },
    'work-dir': { type: 'string' },
    ca: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help || positionals.length === 0) {
    process.stdout.write(HELP);
    return values.help ? 0 : 2;
  }
  const [command, url, ...extra] = positionals;
  if (command !== 'join') throw new UsageError(`unknown command '${command}'; the only command is 'join'`);
  if (!url) throw new UsageError('missing <coordinator-url>');
  if (extra.length) throw new UsageError(`unexpected argument '${extra[0]}'`);
  const token = values.token ?? process.env.MESHTRAIN_TOKEN;
  if (!token) throw new UsageError('missing --token (or MESHTRAIN_TOKEN); `coordinator start` prints the join token');
  const backend = (values.backend ?? 'auto') as BackendChoice;
  if (!isBackendChoice(backend)) throw new UsageError(`--backend must be one of ${BACKENDS.join(', ')}, got '${backend}'`);
  const name = values.name ?? `${hostname()}-${process.pid}`;
  if (!/^.{1,64}$/u.test(name)) throw new UsageError('--name must be 1 to 64 characters');

  const log = createLogger(`agent ${name}`);
  // Step and checkpoint observers: metrics (node-agent/metrics.ts) and traces (common/tracing.ts) push theirs here.
  const observers: StepObserver[] = [];
  // Off unless OTEL_* asks for traces (common/tracing.ts); the agent's name tells its spans apart.
  const tracing = await initTracing('node-agent', { 'service.instance.id': name });
  if (tracing.enabled) observers.push(createStepTracer());
  const metrics = new AgentMetrics(); // GET /metrics on the peer port
  observers.push(metrics);
  const agent = new Agent({
    url: wsUrl(url, '/ws/agent'),
    token,
    name,
    capabilities: () => measureCapabilities(backend, (line) => log.info(line)),
    peerHost: values['peer-host'],
    ...(values['peer-advertise'] !== undefined ? { peerAdvertise: peerAdvertise(values['peer-advertise']) } : {}),
    peerListenHost: values['peer-listen'] ?? '0.0.0.0',
    peerPort: intOption(values['peer-port'], 'peer-port', 0, 0, 65535),
    maxRetries: values['max-retries'] === undefined ? Infinity : intOption(values['max-retries'], 'max-retries', 0),
    backoff: DEFAULT_BACKOFF,
    collectiveIdleTimeoutMs: intOption(values['collective-timeout'], 'collective-timeout', 30_000, 1),
    peerKeepaliveMs: intOption(values['peer-keepalive'], 'peer-keepalive', 10_000, 100),
    peerHelloTimeoutMs: intOption(values['peer-hello-timeout'], 'peer-hello-timeout', 10_000, 1),
    peerLimits: {
      headersTimeoutMs: intOption(values['headers-timeout'], 'headers-timeout', DEFAULT_CONNECTION_LIMITS.headersTimeoutMs, 1),
      maxConnections: intOption(values['max-connections'], 'max-connections', DEFAULT_CONNECTION_LIMITS.maxConnections, 1),
      maxPendingHellos: intOption(values['max-pending-hellos'], 'max-pending-hellos', DEFAULT_CONNECTION_LIMITS.maxPendingHellos, 1),
    },
    backend,
    ...(values['work-dir'] ? { workDir: values['work-dir'] } : {}),
    ...tlsOptions(values.ca, values['tls-cert'], values['tls-key']),
    observers,
    metrics,
    log,
  });

  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (++signals > 1) process.exit(130); // a second Ctrl-C means "now"
    log.info(`${sig}: leaving the cluster`);
    void agent.stop(`agent received ${sig}`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  await agent.run().finally(() => tracing.shutdown()); // flush the last steps' spans before exit
  log.info('left the cluster');
  return 0;
}

/** --peer-advertise: a ws:// or wss:// URL with a host, sent to the coordinator as it is given. */
function peerAdvertise(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UsageError(`--peer-advertise must be a ws:// or wss:// URL, got '${value}'`);
  }
  if ((url.protocol !== 'ws:' && url.protocol !== 'wss:') || !url.hostname) throw new UsageError(`--peer-advertise must be a ws:// or wss:// URL, got '${value}'`);
  if (value.length > 256) throw new UsageError('--peer-advertise must be at most 256 characters'); // the hello's peerAddress limit
  return value;
}

/** --ca, --tls-cert, --tls-key: read and checked here, so a wrong file is a usage error before anything starts. */
function tlsOptions(ca: string | undefined, cert: string | undefined, key: string | undefined): { ca?: string[]; tls?: ServerTls } {
  try {
    const problems = tlsPairProblems(cert, key);
    if (problems.length) throw new Error(problems.join('; '));
    return { ...(ca !== undefined ? { ca: loadTrust(ca) } : {}), ...(cert !== undefined && key !== undefined ? { tls: loadServerTls(cert, key) } : {}) };
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (err instanceof UsageError) {
    process.stderr.write(`node-agent: ${err.message}\nRun 'node-agent --help' for usage.\n`);
    process.exitCode = 2;
  } else if (err instanceof AgentError) {
    process.stderr.write(`node-agent: ${err.code}: ${err.message}\n`);
    process.exitCode = err.code === 'AGT_ERR_UNREACHABLE' ? 3 : err.code === 'AGT_ERR_UNAUTHORIZED' || err.code === 'AGT_ERR_REVOKED' || err.code === 'AGT_ERR_VERSION_MISMATCH' ? 2 : 1;
  } else {
    process.stderr.write(`node-agent: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exitCode = 1;
  }
}
// Timers and sockets are closed on the way out; exit explicitly so a straggling handle cannot keep us alive.
setTimeout(() => process.exit(), 100).unref();
