/**
 * The options of `node-agent join`, declared once (common/options.ts): node-agent/cli.ts parses them, `--help`
 * lists them and README's option table is checked against them (test/cli-options.test.ts).
 */
import { UsageError } from '../common/cli.ts';
import { DEFAULT_CONNECTION_LIMITS } from '../common/conn-limits.ts';
import { defineOptions, opt } from '../common/options.ts';
import { BACKENDS, type BackendChoice } from '../protocol/backends.ts';

export const AGENT_OPTIONS = defineOptions({
  token: opt.string({ arg: 'TOKEN', env: 'MESHTRAIN_TOKEN', doc: "the cluster's join token (printed by 'coordinator start')" }),
  // 1 to 64 characters: node-agent/cli.ts checks the name with its default (HOSTNAME-PID) in one place.
  name: opt.string({ arg: 'NAME', defaultText: 'HOSTNAME-PID', doc: 'how this agent appears in the cluster' }),
  backend: opt.choice<BackendChoice>(BACKENDS, {
    default: 'auto', arg: 'B', doc: 'compute backend; auto = a GPU through WebGPU, tfjs-node-gpu, tfjs-node, then wasm',
  }),
  peerPort: opt.int({ default: 0, min: 0, max: 65535, arg: 'PORT', doc: 'port for links from other agents, and for GET /metrics and /healthz (0 = any free port)' }),
  peerListen: opt.string({ default: '0.0.0.0', arg: 'HOST', doc: 'interface the peer listener binds' }),
  peerHost: opt.string({ arg: 'HOST', defaultText: "this machine's address toward the coordinator", doc: 'address other agents should dial' }),
  peerAdvertise: opt.string({
    arg: 'URL', parse: peerAdvertise,
    doc: 'the exact ws:// or wss:// URL other agents dial for this one, when it is not the peer listener itself (a proxy or port mapping in front of it); overrides --peer-host',
  }),
  relayOnly: opt.boolean({
    doc: 'this agent cannot be dialled (behind NAT or a firewall): skip the reachability check, and have peers reach it through the relay',
  }),
  maxRetries: opt.int({ default: Infinity, min: 0, arg: 'N', defaultText: 'never give up', doc: 'give up after N failed connection attempts in a row' }),
  collectiveTimeoutMs: opt.int({ default: 30_000, min: 1, arg: 'MS', aliases: ['collective-timeout'], doc: 'fail a collective that makes no progress for this long' }),
  peerKeepaliveMs: opt.int({
    default: 10_000, min: 100, arg: 'MS', aliases: ['peer-keepalive'], doc: 'drop a peer link that has been silent this long: no data, no answer to pings',
  }),
  peerHelloTimeoutMs: opt.int({ default: 10_000, min: 1, arg: 'MS', aliases: ['peer-hello-timeout'], doc: 'close a peer link that has not said peer.hello by then' }),
  headersTimeoutMs: opt.int({
    default: DEFAULT_CONNECTION_LIMITS.headersTimeoutMs, min: 1, arg: 'MS', aliases: ['headers-timeout'],
    doc: 'peer port: cut an HTTP client that has not sent its request head by then (slow-loris guard)',
  }),
  maxConnections: opt.int({ default: DEFAULT_CONNECTION_LIMITS.maxConnections, min: 1, arg: 'N', doc: 'peer port: open sockets beyond which new ones are dropped' }),
  maxPendingHellos: opt.int({ default: DEFAULT_CONNECTION_LIMITS.maxPendingHellos, min: 1, arg: 'N', doc: 'peer port: links still owing peer.hello beyond which new ones get 1013' }),
  workDir: opt.string({ arg: 'DIR', defaultText: 'a folder in the system temp dir', doc: 'job data, checkpoints and the artifact cache' }),
  ca: opt.string({ arg: 'PATH', doc: 'trust this PEM CA for a wss:// coordinator and wss:// peers (or set NODE_EXTRA_CA_CERTS)' }),
  tlsCert: opt.string({ arg: 'PATH', doc: 'serve the peer listener over TLS with this PEM certificate: peers dial wss://; needs --tls-key' }),
  tlsKey: opt.string({ arg: 'PATH', doc: 'the PEM private key of --tls-cert' }),
});

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
