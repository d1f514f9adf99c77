/**
 * node-agent join <coordinator-url> --token TOKEN [options]
 *
 * Entry point of the node agent (bin/node-agent.js). Exit codes: 0 after a clean leave (SIGINT/SIGTERM),
 * 2 for bad arguments, a refused token or a protocol mismatch, 3 when the coordinator stayed unreachable for
 * --max-retries attempts, 1 for anything else.
 */
import { hostname } from 'node:os';
import { createLogger } from '../common/log.ts';
import { intOption, parseCli, UsageError, wsUrl } from '../common/cli.ts';
import { Agent, DEFAULT_BACKOFF } from './agent.ts';
import { measureCapabilities } from './capabilities.ts';
import { BACKENDS, type BackendChoice } from './compute/backend.ts';
import { AgentError } from './errors.ts';
import { createStepTracer, initTracing } from '../common/tracing.ts';
import { AgentMetrics } from './metrics.ts';
import type { StepObserver } from './trainer/step-report.ts';

const HELP = `Usage: node-agent join <coordinator-url> --token TOKEN [options]

Joins a meshtrain cluster: reports this machine's capabilities, heartbeats, and runs the work the coordinator
assigns (ring all-reduce with other agents over direct WebSocket links). Ctrl-C leaves the cluster cleanly.

Arguments:
  <coordinator-url>        ws://host:port or http://host:port of the coordinator

Options:
  --token TOKEN            the cluster's join token (printed by 'coordinator start'; or set MESHTRAIN_TOKEN)
  --name NAME              how this agent appears in the cluster (default: the host name and process id)
  --backend B              compute backend: ${BACKENDS.join('|')} (default: auto = tfjs-node-gpu, tfjs-node, then wasm)
  --peer-port PORT         port for links from other agents, and for GET /metrics and /healthz (default: 0 = any free port)
  --peer-listen HOST       interface the peer listener binds (default: 0.0.0.0)
  --peer-host HOST         address other agents should dial (default: this machine's address toward the coordinator)
  --max-retries N          give up after N failed connection attempts in a row (default: never give up)
  --collective-timeout MS  fail a collective that makes no progress for this long (default: 30000)
  --work-dir DIR           job data, checkpoints and the artifact cache (default: a folder in the system temp dir)
  -h, --help               show this help

Exit codes: 0 left cleanly, 1 error, 2 bad arguments / token refused / protocol mismatch, 3 coordinator unreachable.
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
    'max-retries': { type: 'string' },
    'collective-timeout': { type: 'string' },
    'work-dir': { type: 'string' },
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
  if (!BACKENDS.includes(backend)) throw new UsageError(`--backend must be one of ${BACKENDS.join(', ')}, got '${backend}'`);
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
    capabilities: () => measureCapabilities(backend),
    peerHost: values['peer-host'],
    peerListenHost: values['peer-listen'] ?? '0.0.0.0',
    peerPort: intOption(values['peer-port'], 'peer-port', 0, 0, 65535),
    maxRetries: values['max-retries'] === undefined ? Infinity : intOption(values['max-retries'], 'max-retries', 0),
    backoff: DEFAULT_BACKOFF,
    collectiveIdleTimeoutMs: intOption(values['collective-timeout'], 'collective-timeout', 30_000, 1),
    backend,
    ...(values['work-dir'] ? { workDir: values['work-dir'] } : {}),
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

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (err instanceof UsageError) {
    process.stderr.write(`node-agent: ${err.message}\nRun 'node-agent --help' for usage.\n`);
    process.exitCode = 2;
  } else if (err instanceof AgentError) {
    process.stderr.write(`node-agent: ${err.code}: ${err.message}\n`);
    process.exitCode = err.code === 'AGT_ERR_UNREACHABLE' ? 3 : err.code === 'AGT_ERR_UNAUTHORIZED' || err.code === 'AGT_ERR_VERSION_MISMATCH' ? 2 : 1;
  } else {
    process.stderr.write(`node-agent: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exitCode = 1;
  }
}
// Timers and sockets are closed on the way out; exit explicitly so a straggling handle cannot keep us alive.
setTimeout(() => process.exit(), 100).unref();
