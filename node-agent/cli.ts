/**
 * node-agent join <coordinator-url> --token TOKEN [options]
 *
 * Entry point of the node agent (bin/node-agent.js). Exit codes: 0 after a clean leave (SIGINT/SIGTERM),
 * 2 for bad arguments, a refused token, a revoked credential or a protocol mismatch, 3 when the coordinator stayed unreachable for
 * --max-retries attempts, 1 for anything else.
 */
import { hostname } from 'node:os';
import { createLogger } from '../common/log.ts';
import { UsageError, wsUrl } from '../common/cli.ts';
import { parseCommandLine } from '../common/options.ts';
import { AGENT_OPTIONS } from './options.ts';
import { Agent, DEFAULT_BACKOFF } from './agent.ts';
import { measureCapabilities } from './capabilities.ts';
import { AgentError } from './errors.ts';
import { loadServerTls, loadTrust, tlsPairProblems, type ServerTls } from '../common/tls.ts';
import { createStepTracer, initTracing } from '../common/tracing.ts';
import { AgentMetrics } from './metrics.ts';
import type { StepObserver } from '../common/step-report.ts';

const HELP = `Usage: node-agent join <coordinator-url> --token TOKEN [options]

Joins a meshtrain cluster: reports this machine's capabilities, heartbeats, and runs the work the coordinator
assigns (ring all-reduce with other agents over direct WebSocket links). Ctrl-C leaves the cluster cleanly.

Arguments:
  <coordinator-url>         ws://host:port or http://host:port of the coordinator

Options (node-agent/options.ts):
${AGENT_OPTIONS.help()}  -h, --help                show this help

Exit codes: 0 left cleanly, 1 error, 2 bad arguments / token refused / credential revoked / protocol mismatch,
3 coordinator unreachable.
Environment: LOG_LEVEL=debug|info|warn|error, MESHTRAIN_TOKEN.

Example:
  node-agent join ws://10.0.0.5:7070 --token 3f9c…
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine('node-agent', argv, [AGENT_OPTIONS]);
  if (values.help || positionals.length === 0) {
    process.stdout.write(HELP);
    return values.help ? 0 : 2;
  }
  const [command, url, ...extra] = positionals;
  if (command !== 'join') throw new UsageError(`unknown command '${command}'; the only command is 'join'`);
  if (!url) throw new UsageError('missing <coordinator-url>');
  if (extra.length) throw new UsageError(`unexpected argument '${extra[0]}'`);
  const o = { ...AGENT_OPTIONS.defaults, ...AGENT_OPTIONS.fromArgs(values) }; // flags and MESHTRAIN_TOKEN, checked
  const token = o.token;
  if (!token) throw new UsageError('missing --token (or MESHTRAIN_TOKEN); `coordinator start` prints the join token');
  const backend = o.backend;
  const name = o.name ?? `${hostname()}-${process.pid}`;
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
    peerHost: o.peerHost,
    ...(o.peerAdvertise !== undefined ? { peerAdvertise: o.peerAdvertise } : {}),
    peerListenHost: o.peerListen,
    relayOnly: o.relayOnly,
    peerPort: o.peerPort,
    maxRetries: o.maxRetries,
    backoff: DEFAULT_BACKOFF,
    collectiveIdleTimeoutMs: o.collectiveTimeoutMs,
    peerKeepaliveMs: o.peerKeepaliveMs,
    peerHelloTimeoutMs: o.peerHelloTimeoutMs,
    peerLimits: { headersTimeoutMs: o.headersTimeoutMs, maxConnections: o.maxConnections, maxPendingHellos: o.maxPendingHellos },
    backend,
    ...(o.workDir ? { workDir: o.workDir } : {}),
    ...tlsOptions(o.ca, o.tlsCert, o.tlsKey),
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

/** --ca, --tls-cert, --tls-key: read and checked here, so a wrong file is a usage error before anything starts. */
function tlsOptions(ca: string | undefined, cert: string | undefined, key: string | undefined): { ca?: string[]; tls?: ServerTls } {
  try {
    const problems = tlsPairProblems(cert, key);
    if (problems.length) throw new UsageError(problems.join('; '));
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
