/**
 * coordinator start [--port 7070] [--data DIR] [--token T] …   run the coordinator
 * coordinator nodes [--url U] [--token T] [--json]             list agents
 * coordinator nodes revoke ID                                  revoke an agent's credential
 * coordinator selfcheck [--url U] [--token T] [--agents N]      check every collective on a ring of the agents
 * coordinator submit job.json | jobs | job ID | plan ID         training jobs
 * coordinator models [quantize NAME VERSION [--scheme int8]]     registered models; register a version's INT8 variant
 * coordinator models merge NAME VERSION                         fold a LoRA adapter version into its base (a new version)
 * coordinator models import DIR --name NAME                     register a Hugging Face GPT-2 folder as a new version
 * coordinator runs list|compare|export …, sweep submit|status|list …   experiment tracking and sweeps (coordinator/cli/runs.ts)
 *
 * Entry point of bin/coordinator.js. Exit codes: 0 ok, 1 error or failed self-check, 2 bad arguments.
 */
import { describeGpu } from '../../protocol/gpu.ts';
import { createLogger } from '../../common/log.ts';
import { httpUrl, intOption, parseCli, UsageError } from '../../common/cli.ts';
import { resolveConfig, DEFAULT_CONFIG, type CoordinatorConfig } from '../config.ts';
import type { PlanReport } from '../jobs/plan-report.ts';
import { CoordinatorError } from '../errors.ts';
import { createCoordinator } from '../api/server.ts';
import type { NodeView } from '../cluster/agent-hub.ts';
import { printSelfcheck, type SelfcheckReport } from '../cluster/selfcheck.ts';
import { FINAL_STATES, type CheckpointRecord, type JobRecord, type MetricRow } from '../store/job-store.ts';
import type { JobLive, NodeRole } from '../jobs/runner.ts';
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { IMPORT_FILES } from '../registry/import.ts';
import { initTracing } from '../../common/tracing.ts';
import { fetchTrusting, loadTrust } from '../../common/tls.ts';
import { runsCommand, sweepCommand, type CliIo } from './runs.ts';

const HELP = `Usage: coordinator <command> [options]

The brain of a meshtrain cluster: agents join it, it keeps cluster state in SQLite, forms rings of agents and
runs work on them.

Commands:
  start        run the coordinator (HTTP API, /metrics, agent endpoint /ws/agent)
  data prepare --source NAME=PATH[:RATIO] … --out DIR
               clean, de-duplicate, mask, mix and tokenize raw text into a dataset a job can train on
               ('coordinator data prepare --help' lists its options)
  nodes        list the agents the coordinator knows
  nodes revoke ID
               revoke an agent's credential: it is disconnected, its job re-queued, and its node id and secret
               are never accepted again (the agent exits with AGT_ERR_REVOKED)
  selfcheck    form a ring of the connected agents and check every collective against a serial sum
  submit FILE  submit a training job spec (JSON); prints the job id
  jobs         list training jobs
  job ID       show one job: state, step, latest metrics, layout, per-agent step breakdown, links, straggler;
               --watch follows it with a live line until it ends
  plan ID      the layout the planner chose for a job, the candidates it weighed, predicted vs measured step time
  models       list registered models
  models quantize NAME VERSION [--scheme int8]
               register the INT8 variant of a version (weight-only, per-channel) as a new version of NAME;
               prints its version and the size of its weights against the parent's
  models merge NAME VERSION
               fold the LoRA adapter version NAME VERSION into its base (W + alpha/r·A·B) and register the result
               as a new full version of NAME
  models import DIR --name NAME
               upload a Hugging Face GPT-2-family folder (config.json, model.safetensors in F32/F16/BF16,
               tokenizer.json or vocab.json + merges.txt; generation_config.json, tokenizer_config.json, special_tokens_map.json kept) and
               register it as a new version of NAME; every tensor is checked against config.json
  replan ID LAYOUT
               change a job's layout: 'auto' or data×pipeline×tensor such as 2x2x1; a running job resumes from
               its last checkpoint under it
  runs list [--name N|N*] [--state S]
               every run (job) with its final train and held-out loss, tokens/s, model version and code version
  runs compare ID ID…
               runs side by side: spec differences, final metrics, a train-loss sparkline each
  runs export ID [--format json|csv] [--out FILE]
               a run's spec, code version, artifacts and metrics history (json), or its metrics as CSV
  sweep submit FILE | sweep status ID | sweep list
               hyper-parameter sweeps: trials run as jobs, the best is the lowest held-out loss

Options for start:
  --port PORT                 HTTP and WebSocket port (default: ${DEFAULT_CONFIG.port}; 0 = any free port)
  --host HOST                 interface to bind (default: ${DEFAULT_CONFIG.host})
  --data DIR                  state database and artifact store (default: ${DEFAULT_CONFIG.dataDir})
  --token TOKEN               cluster join token (default: the one stored in DIR, or a new one, printed once)
  --heartbeat-ms MS           how often agents heartbeat (default: ${DEFAULT_CONFIG.heartbeatMs})
  --heartbeat-timeout MS      mark an agent dead after this long without a heartbeat (default: ${DEFAULT_CONFIG.heartbeatTimeoutMs})
  --step-timeout MS           stop and resume a job attempt that reports no step for this long (default: ${DEFAULT_CONFIG.stepTimeoutMs})
  --headers-timeout MS        cut an HTTP client that has not sent its request head by then (default: ${DEFAULT_CONFIG.headersTimeoutMs})
  --max-connections N         open sockets on the port beyond which new ones are dropped (default: ${DEFAULT_CONFIG.maxConnections})
  --max-pending-hellos N      agent connections still owing their hello beyond which new ones get 1013 (default: ${DEFAULT_CONFIG.maxPendingHellos})
  --tls-cert PATH             serve HTTPS and WSS with this PEM certificate (chain); needs --tls-key
  --tls-key PATH              the PEM private key of --tls-cert
  --backend B                 what the evaluation suites (SFT exact match, DPO, distillation) compute on:
                              cpu, wasm, webgpu, auto, … (default: ${DEFAULT_CONFIG.backend})

Options for nodes, selfcheck, submit, jobs, job, plan, replan, models, runs and sweep:
  --url URL                   coordinator address (default: http://127.0.0.1:${DEFAULT_CONFIG.port}; https://… for TLS)
  --token TOKEN               cluster token (or MESHTRAIN_TOKEN)
  --ca PATH                   trust this PEM CA for an https:// coordinator (or set NODE_EXTRA_CA_CERTS)
  --json                      print JSON instead of a table
  --agents N                  selfcheck: ring size (default: every connected agent)
  --name N, --state S         runs list: only runs named N (N* for a prefix) or in state S; models import: the model name
  --format json|csv           runs export: the whole run as JSON (default), or its metrics as CSV
  --out FILE                  runs export: write to FILE instead of stdout
  --scheme SCHEME             models quantize: the quantization scheme (default and only one: int8)
  --watch                     job: follow the job live until it ends (exit 0 if it succeeded, 1 if not);
                              with --json, one JSON object per new step and state change

  -h, --help                  show this help

Examples:
  coordinator start --data ./cluster
  node-agent join ws://127.0.0.1:7070 --token <token>
  coordinator selfcheck --token <token>
`;

async function main(argv: string[]): Promise<number> {
  // `data …` has its own options (a repeatable --source): coordinator/cli/data-prepare.ts parses them.
  if (argv[0] === 'data') return (await import('./data-prepare.ts')).dataCommand(argv.slice(1));
  const { values, positionals } = parseCli(argv, {
    port: { type: 'string' },
    host: { type: 'string' },
    data: { type: 'string' },
    token: { type: 'string' },
    'heartbeat-ms': { type: 'string' },
    backend: { type: 'string' },
    'heartbeat-timeout': { type: 'string' },
    'step-timeout': { type: 'string' },
    'headers-timeout': { type: 'string' },
    'max-connections': { type: 'string' },
    'max-pending-hellos': { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    ca: { type: 'string' },
    url: { type: 'string' },
    json: { type: 'boolean' },
    watch: { type: 'boolean' },
    agents: { type: 'string' },
    scheme: { type: 'string' },
    name: { type: 'string' },
    state: { type: 'string' },
    format: { type: 'string' },
    out: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  const [command, ...rest] = positionals;
  if (values.help || !command) {
    process.stdout.write(HELP);
    return values.help ? 0 : 2;
  }
  if (command === 'runs' || command === 'sweep') {
    const io: CliIo = {
      api: (method, path, body) => api(values, method, path, body),
      text: (path) => api<string>(values, 'GET', path, undefined, 'text'),
      print: (s) => void process.stdout.write(s),
      table: printTable,
    };
    return command === 'runs' ? runsCommand(io, values, rest) : sweepCommand(io, values, rest);
  }
  const args = command === 'models' && (rest[0] === 'quantize' || rest[0] === 'merge') ? 3 : command === 'models' && rest[0] === 'import' ? 2 : command === 'replan' || (command === 'nodes' && rest[0] === 'revoke') ? 2 : command === 'submit' || command === 'job' || command === 'plan' ? 1 : 0;
  if (rest.length !== args) throw new UsageError(args ? `'${command}' takes exactly ${args} argument${args > 1 ? 's' : ''}` : `unexpected argument '${rest[0]}'`);
  switch (command) {
    case 'submit':
      return submit(values, rest[0]!);
    case 'jobs':
      return listJobs(values);
    case 'job':
      return values.watch ? watchJob(values, rest[0]!) : showJob(values, rest[0]!);
    case 'plan':
      return showPlan(values, rest[0]!);
    case 'replan':
      return replan(values, rest[0]!, rest[1]!);
    case 'start':
      return start(values);
    case 'nodes':
      return rest[0] === 'revoke' ? revoke(values, rest[1]!) : nodes(values);
    case 'selfcheck':
      return selfcheck(values);
    case 'models':
      if (rest[0] === 'import') return importModel(values, rest[1]!);
      return rest[0] === 'quantize' ? quantizeModel(values, rest[1]!, rest[2]!) : rest[0] === 'merge' ? mergeModel(values, rest[1]!, rest[2]!) : listModels(values);
    default:
      throw new UsageError(`unknown command '${command}'; commands: start, nodes, selfcheck, submit, jobs, job, plan, replan, runs, sweep, models`);
  }
}

type Values = Record<string, string | boolean | undefined>;

const IMPORT_FILE_NAMES = Object.keys(IMPORT_FILES);
const str = (v: Values, k: string) => v[k] as string | undefined;

async function start(v: Values): Promise<number> {
  const cfg = resolveConfig({
    port: intOption(str(v, 'port'), 'port', DEFAULT_CONFIG.port, 0, 65535),
    host: str(v, 'host'),
    dataDir: str(v, 'data'),
    token: str(v, 'token') ?? process.env.MESHTRAIN_TOKEN,
    heartbeatMs: intOption(str(v, 'heartbeat-ms'), 'heartbeat-ms', DEFAULT_CONFIG.heartbeatMs, 1),
    heartbeatTimeoutMs: intOption(str(v, 'heartbeat-timeout'), 'heartbeat-timeout', DEFAULT_CONFIG.heartbeatTimeoutMs, 1),
    stepTimeoutMs: intOption(str(v, 'step-timeout'), 'step-timeout', DEFAULT_CONFIG.stepTimeoutMs, 1),
    headersTimeoutMs: intOption(str(v, 'headers-timeout'), 'headers-timeout', DEFAULT_CONFIG.headersTimeoutMs, 1),
    maxConnections: intOption(str(v, 'max-connections'), 'max-connections', DEFAULT_CONFIG.maxConnections, 1),
    maxPendingHellos: intOption(str(v, 'max-pending-hellos'), 'max-pending-hellos', DEFAULT_CONFIG.maxPendingHellos, 1),
    tlsCert: str(v, 'tls-cert'),
    tlsKey: str(v, 'tls-key'),
    backend: (str(v, 'backend') ?? DEFAULT_CONFIG.backend) as CoordinatorConfig['backend'],
  });
  const log = createLogger('coordinator');
  const tracing = await initTracing('coordinator'); // off unless OTEL_* asks for traces (common/tracing.ts)
  const coordinator = createCoordinator(cfg, log);
  const { port } = await coordinator.listen();
  const shown = cfg.host === '0.0.0.0' ? '127.0.0.1' : cfg.host;
  // Machine-readable first line: tests and scripts wait for it.
  const tls = cfg.tlsCert !== undefined;
  process.stdout.write(`coordinator listening on ${tls ? 'https' : 'http'}://${shown}:${port}\n`);
  if (coordinator.generatedToken) {
    process.stdout.write(`join token (generated, shown once; stored as a hash in ${cfg.dataDir}): ${coordinator.generatedToken}\n`);
    process.stdout.write(`agents join with: node-agent join ${tls ? 'wss' : 'ws'}://${shown}:${port} --token ${coordinator.generatedToken}${tls ? ' --ca <the CA that signed --tls-cert>' : ''}\n`);
  } else if (!cfg.token) {
    process.stdout.write(`using the join token stored in ${cfg.dataDir} (pass --token to replace it)\n`);
  }
  log.info(`data in ${cfg.dataDir}; heartbeat every ${cfg.heartbeatMs} ms, dead after ${cfg.heartbeatTimeoutMs} ms`);
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      log.info(`${sig}: shutting down`);
      void coordinator.close().then(() => tracing.shutdown()).then(resolve); // flush the attempts' spans
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  return 0;
}

/** The coordinator's address, the token and a fetch that trusts --ca, from the command line. */
function connection(v: Values): { base: string; token: string; fetch: typeof fetch } {
  const token = str(v, 'token') ?? process.env.MESHTRAIN_TOKEN;
  if (!token) throw new UsageError('missing --token (or MESHTRAIN_TOKEN)');
  const base = httpUrl(str(v, 'url') ?? `http://127.0.0.1:${DEFAULT_CONFIG.port}`);
  try {
    return { base, token, fetch: fetchTrusting(str(v, 'ca') === undefined ? undefined : loadTrust(str(v, 'ca')!)) };
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** fetch, with an unreachable coordinator said as such (and what to check). */
async function send(c: ReturnType<typeof connection>, path: string, init: RequestInit): Promise<Response> {
  try {
    return await c.fetch(`${c.base}${path}`, init);
  } catch (err) {
    const code = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    const hint = /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO/.test(code) ? 'pass --ca with the CA that signed its certificate, or set NODE_EXTRA_CA_CERTS' : "is 'coordinator start' running?";
    throw new Error(`cannot reach the coordinator at ${c.base} (${code}); ${hint}`);
  }
}

async function api<T>(v: Values, method: string, path: string, body?: unknown, as: 'json' | 'text' = 'json'): Promise<T> {
  const c = connection(v);
  const res = await send(c, path, {
    method,
    headers: { authorization: `Bearer ${c.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text().catch(() => '');
  let json: { error?: { code: string; message: string; details?: string[] } } = {};
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON (a CSV export, or a proxy's error page): the status says what happened
  }
  if (res.ok && as === 'text') return text as T;
  if (!res.ok) {
    const details = json.error?.details?.length ? `\n  - ${json.error.details.join('\n  - ')}` : '';
    throw new Error(`${json.error?.code ?? res.status}: ${details ? (json.error?.message ?? '').split(':')[0] : (json.error?.message ?? res.statusText)}${details}`);
  }
  return json as T;
}

async function nodes(v: Values): Promise<number> {
  const { nodes } = await api<{ nodes: Array<NodeView & { role: NodeRole | null; straggler: boolean }> }>(v, 'GET', '/api/nodes');
  if (v.json) {
    process.stdout.write(JSON.stringify(nodes, null, 2) + '\n');
    return 0;
  }
  const rows = nodes.map((n) => [
    n.id,
    n.name,
    n.status + (n.status === 'alive' && !n.connected ? ' (reconnecting)' : ''),
    n.capabilities.backend + (n.capabilities.gpu ? ` on ${describeGpu(n.capabilities.gpu)}` : ''),
    String(n.capabilities.cores),
    `${(n.capabilities.memoryBytes / 2 ** 30).toFixed(1)} GiB`,
    n.capabilities.matmulGflops.toFixed(1),
    `${(n.heartbeatAgeMs / 1000).toFixed(1)} s`,
    n.role ? `${n.role.jobId} rank ${n.role.rank} (dp ${n.role.dp}, stage ${n.role.pp}, shard ${n.role.tp})${n.straggler ? ' STRAGGLER' : ''}` : '—',
    n.peerAddress,
  ]);
  printTable(['ID', 'NAME', 'STATUS', 'BACKEND', 'CORES', 'MEMORY', 'GFLOP/S', 'HEARTBEAT', 'ROLE', 'PEER ADDRESS'], rows);
  return 0;
}

async function revoke(v: Values, id: string): Promise<number> {
  const { node } = await api<{ node: NodeView }>(v, 'POST', `/api/nodes/${encodeURIComponent(id)}/revoke`);
  if (v.json) process.stdout.write(JSON.stringify(node, null, 2) + '\n');
  else process.stdout.write(`revoked ${node.id} (${node.name}): disconnected; its node id and secret are no longer accepted\n`);
  return 0;
}

async function selfcheck(v: Values): Promise<number> {
  const agents = str(v, 'agents');
  const report = await api<SelfcheckReport>(v, 'POST', '/api/selfcheck', agents ? { agents: intOption(agents, 'agents', 0, 1) } : {});
  if (v.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  else printSelfcheck(report, (line) => process.stdout.write(line + '\n'));
  return report.ok ? 0 : 1;
}

async function submit(v: Values, file: string): Promise<number> {
  let spec: unknown;
  try {
    spec = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new UsageError(`cannot read job spec ${file}: ${(err as Error).message}`);
  }
  const job = await api<JobRecord>(v, 'POST', '/api/jobs', spec);
  if (v.json) process.stdout.write(JSON.stringify(job, null, 2) + '\n');
  else process.stdout.write(`submitted ${job.id} (${job.name}): ${job.state}\n`);
  return 0;
}

async function listJobs(v: Values): Promise<number> {
  const { jobs } = await api<{ jobs: Array<Omit<JobRecord, 'spec'> & { totalSteps: number }> }>(v, 'GET', '/api/jobs');
  if (v.json) process.stdout.write(JSON.stringify(jobs, null, 2) + '\n');
  else printTable(['ID', 'NAME', 'STATE', 'STEP', 'WHY', 'UPDATED'], jobs.map((j) => [j.id, j.name, j.state, `${j.step}/${j.totalSteps}`, j.stateReason, new Date(j.updatedMs).toISOString()]));
  return 0;
}

async function showJob(v: Values, id: string): Promise<number> {
  const res = await api<{ job: JobRecord; metrics: MetricRow[]; checkpoints: CheckpointRecord[] }>(v, 'GET', `/api/jobs/${encodeURIComponent(id)}`);
  const live = await api<JobLive>(v, 'GET', `/api/jobs/${encodeURIComponent(id)}/live`);
  if (v.json) {
    process.stdout.write(JSON.stringify({ ...res, live }, null, 2) + '\n');
    return 0;
  }
  const { job, metrics } = res;
  const last = (kind: string) => metrics.filter((m) => m.kind === kind).at(-1);
  const fmt = (m: MetricRow | undefined) => (m ? Object.entries(m.values).map(([k, x]) => `${k} ${Number(x.toPrecision(4))}`).join(', ') : '—');
  process.stdout.write(
    [
      `${job.id} (${job.name}): ${job.state} — ${job.stateReason}`,
      `step ${job.step} of ${job.spec.training.steps}`,
      `model: vocab ${job.spec.model.vocabSize}, ctx ${job.spec.model.nCtx}, ${job.spec.model.nLayer} layers, ${job.spec.model.nHead} heads, d ${job.spec.model.nEmbd}`,
      `last train: ${fmt(last('train'))}`,
      `last eval:  ${fmt(last('eval'))}`,
      `checkpoints: ${res.checkpoints.length ? res.checkpoints.map((c) => c.step).join(', ') : '—'}`,
    ].join('\n') + '\n',
  );
  if (live.layout) {
    const b = live.breakdown;
    process.stdout.write(`\nlayout ${live.layout.data}×${live.layout.pipeline}×${live.layout.tensor} (data × pipeline × tensor), attempt ${live.attempt}` +
      (b ? `; a typical step: ${b.stepMs.toFixed(0)} ms = compute ${b.computeMs.toFixed(0)} + all-reduce ${b.allreduceMs.toFixed(0)} + bubble ${b.bubbleMs.toFixed(0)} + waiting ${b.waitMs.toFixed(0)}` : '') + '\n');
    const ms = (x: number) => x.toFixed(0);
    const byRank = new Map(live.ranks.map((r) => [r.rank, r]));
    printTable(
      ['RANK', 'AGENT', 'DP', 'STAGE', 'SHARD', 'LAYERS', 'STEP', 'STEP MS', 'COMPUTE', 'ALL-REDUCE', 'BUBBLE', 'WAIT'],
      live.placement.map((c) => {
        const r = byRank.get(c.rank);
        return [String(c.rank), c.nodeName, String(c.dp), String(c.pp), String(c.tp), `${c.layers[0]}–${c.layers[1]}`,
          r ? String(r.step) : '—', r ? ms(r.stepMs) : '—', r ? ms(r.computeMs) : '—', r ? ms(r.allreduceMs) : '—', r ? ms(r.bubbleMs) : '—', r ? ms(r.waitMs) : '—'];
      }),
    );
    for (const l of live.links) process.stdout.write(`link ${l.fromName} → ${l.toName}: ${(l.bytes / 1e6).toFixed(2)} MB in ${l.ms.toFixed(1)} ms = ${l.gbps.toFixed(3)} GB/s\n`);
    if (live.straggler) process.stdout.write(`straggler: ${live.straggler.reason}\n`);
  }
  return 0;
}

/** The live line of `job ID --watch`: step, progress, loss, tokens/s, the step's split and the straggler. */
function watchLine(job: Pick<JobRecord, 'state' | 'step'> & { totalSteps: number }, live: JobLive | null, lastTrain?: MetricRow, lastEval?: MetricRow): string {
  const frac = job.totalSteps > 0 ? Math.min(1, job.step / job.totalSteps) : 0;
  const width = 20, filled = Math.round(frac * width);
  const parts = [`${job.state} step ${job.step}/${job.totalSteps} ${'█'.repeat(filled)}${'░'.repeat(width - filled)} ${(frac * 100).toFixed(0)}%`];
  if (lastTrain) parts.push(`loss ${lastTrain.values.loss!.toFixed(4)}`);
  if (lastEval) parts.push(`eval ${lastEval.values.loss!.toFixed(4)}`);
  if (lastTrain?.values.tokensPerS !== undefined) parts.push(`${Math.round(lastTrain.values.tokensPerS).toLocaleString('en-US')} tok/s`);
  const b = live?.breakdown;
  if (b) parts.push(`${b.stepMs.toFixed(0)} ms/step (compute ${b.computeMs.toFixed(0)}, all-reduce ${b.allreduceMs.toFixed(0)}, bubble ${b.bubbleMs.toFixed(0)}, wait ${b.waitMs.toFixed(0)})`);
  if (live?.straggler) parts.push(`straggler ${live.straggler.nodeName} ${live.straggler.ratio.toFixed(1)}×`);
  return parts.join(' · ');
}

/** Polls the job once a second and shows its live line (one JSON object per change with --json) until it ends. */
async function watchJob(v: Values, id: string): Promise<number> {
  const path = `/api/jobs/${encodeURIComponent(id)}`;
  const tty = process.stdout.isTTY && !v.json;
  let after = -1, lastState = '', lastTrain: MetricRow | undefined, lastEval: MetricRow | undefined;
  for (;;) {
    const res = await api<{ job: JobRecord; metrics: MetricRow[] }>(v, 'GET', `${path}?after=${after}`);
    const live = await api<JobLive>(v, 'GET', `${path}/live`);
    const { job } = res;
    const totalSteps = job.spec.training.steps;
    for (const row of res.metrics) {
      if (row.kind === 'train') lastTrain = row;
      else lastEval = row;
      if (v.json) process.stdout.write(JSON.stringify({ jobId: id, ...row }) + '\n');
    }
    after = Math.max(after, ...res.metrics.map((m) => m.step));
    const line = watchLine({ state: job.state, step: job.step, totalSteps }, live, lastTrain, lastEval);
    if (v.json) {
      if (job.state !== lastState) process.stdout.write(JSON.stringify({ jobId: id, state: job.state, reason: job.stateReason, step: job.step }) + '\n');
    } else if (tty) process.stdout.write(`\r\x1b[2K${line}`);
    else if (res.metrics.length || job.state !== lastState) process.stdout.write(line + '\n');
    lastState = job.state;
    if (FINAL_STATES.has(job.state)) {
      if (tty) process.stdout.write(`\n${job.state}: ${job.stateReason}\n`);
      else if (!v.json) process.stdout.write(`${job.state}: ${job.stateReason}\n`);
      return job.state === 'succeeded' ? 0 : 1;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function listModels(v: Values): Promise<number> {
  const { models } = await api<{ models: Array<{ name: string; versions: number; latest: number; updatedMs: number }> }>(v, 'GET', '/api/models');
  if (v.json) process.stdout.write(JSON.stringify(models, null, 2) + '\n');
  else printTable(['NAME', 'VERSIONS', 'LATEST', 'UPDATED'], models.map((m) => [m.name, String(m.versions), `v${m.latest}`, new Date(m.updatedMs).toISOString()]));
  return 0;
}

/** `models quantize NAME VERSION`: the coordinator registers the variant; this prints its version and sizes. */
async function quantizeModel(v: Values, name: string, version: string): Promise<number> {
  type Created = { name: string; version: number; lineage: { quantization?: { scheme: string; f32Bytes: number; int8Bytes: number; sizeRatio: number } } };
  const path = `/api/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/quantize`;
  const created = await api<Created>(v, 'POST', path, { scheme: str(v, 'scheme') ?? 'int8' });
  if (v.json) process.stdout.write(JSON.stringify(created, null, 2) + '\n');
  else {
    const q = created.lineage.quantization!;
    const ratio = `${(q.sizeRatio * 100).toFixed(1)} %, ${(1 / q.sizeRatio).toFixed(2)}× smaller`;
    process.stdout.write(`registered ${created.name} v${created.version}: ${q.scheme} variant of v${version.replace(/^v/, '')}; weights ${q.int8Bytes} bytes vs ${q.f32Bytes} in float32 (${ratio})\n`);
  }
  return 0;
}

/**
 * `models import DIR --name NAME`: uploads each importable file of DIR to the artifact store (streamed, skipped
 * when the coordinator already has those bytes), then asks the coordinator to check and register them.
 */
async function importModel(v: Values, dir: string): Promise<number> {
  const name = str(v, 'name');
  if (!name) throw new UsageError('models import needs --name NAME: the model the folder becomes a version of');
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new UsageError(`${dir} is not a folder`);
  const present = IMPORT_FILE_NAMES.filter((f) => existsSync(join(dir, f)));
  const gpt2Tokenizer = present.includes('vocab.json') && present.includes('merges.txt');
  const missing = ['config.json', 'model.safetensors', ...(gpt2Tokenizer ? [] : ['tokenizer.json'])].filter((f) => !present.includes(f));
  if (missing.length) throw new UsageError(`${dir} lacks ${missing.join(', ')}: a GPT-2 folder needs config.json, model.safetensors and tokenizer.json (or vocab.json + merges.txt)`);
  const c = connection(v);
  const files: Record<string, string> = {};
  for (const file of present) {
    const path = join(dir, file);
    const hash = createHash('sha256');
    for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
    const digest = hash.digest('hex');
    const bytes = statSync(path).size;
    const auth = { authorization: `Bearer ${c.token}` };
    const head = await send(c, `/api/artifacts/${digest}`, { method: 'HEAD', headers: auth });
    if (head.status === 404) {
      process.stderr.write(`uploading ${file} (${(bytes / 1e6).toFixed(1)} MB)\n`);
      const put = await send(c, `/api/artifacts/${digest}`, {
        method: 'PUT',
        headers: { ...auth, 'content-type': 'application/octet-stream', 'content-length': String(bytes) },
        body: Readable.toWeb(createReadStream(path)) as ReadableStream,
        duplex: 'half',
        redirect: 'error', // following redirects makes fetch tee the body and keep all of it (a whole model file)
      } as RequestInit);
      if (!put.ok) throw new Error(`uploading ${file} failed: ${put.status} ${await put.text().catch(() => '')}`);
    } else if (!head.ok) throw new Error(`checking ${file} on the coordinator failed: ${head.status}`);
    files[file] = digest;
  }
  type Created = { name: string; version: number; files: Record<string, { bytes: number }>; lineage: { metrics?: { params?: number }; imported?: { weightDtypes?: string[] } } };
  const created = await api<Created>(v, 'POST', `/api/models/${encodeURIComponent(name)}/import`, { files, source: resolve(dir) });
  if (v.json) process.stdout.write(JSON.stringify(created, null, 2) + '\n');
  else {
    const params = created.lineage.metrics?.params;
    process.stdout.write(`registered ${created.name} v${created.version}: imported from ${resolve(dir)} (${params === undefined ? '?' : (params / 1e6).toFixed(2)} M parameters, weights ${created.lineage.imported?.weightDtypes?.join('/') ?? '?'} stored as F32)\n`);
  }
  return 0;
}

/** `models merge NAME VERSION`: the coordinator merges the adapter into its base and registers the result. */
async function mergeModel(v: Values, name: string, version: string): Promise<number> {
  type Created = { name: string; version: number; lineage: { parents?: Array<{ name: string; version: number }> } };
  const created = await api<Created>(v, 'POST', `/api/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/merge`);
  if (v.json) process.stdout.write(JSON.stringify(created, null, 2) + '\n');
  else {
    const [adapter, base] = created.lineage.parents ?? [];
    process.stdout.write(`registered ${created.name} v${created.version}: adapter ${adapter?.name} v${adapter?.version} merged into ${base?.name} v${base?.version}\n`);
  }
  return 0;
}

/** 'auto' or d×p×t (x or ×) → the job spec's `parallel`. */
function parseLayout(text: string): 'auto' | { data: number; pipeline: number; tensor: number } {
  if (text === 'auto') return 'auto';
  const m = /^(\d+)[x×](\d+)[x×](\d+)$/.exec(text);
  if (!m) throw new UsageError(`layout '${text}' is neither 'auto' nor data×pipeline×tensor such as 2x2x1`);
  return { data: Number(m[1]), pipeline: Number(m[2]), tensor: Number(m[3]) };
}

async function replan(v: Values, id: string, layout: string): Promise<number> {
  const job = await api<JobRecord>(v, 'POST', `/api/jobs/${encodeURIComponent(id)}/replan`, { parallel: parseLayout(layout) });
  if (v.json) process.stdout.write(JSON.stringify(job, null, 2) + '\n');
  else process.stdout.write(`${job.id}: ${job.state} — ${job.stateReason}\n`);
  return 0;
}

async function showPlan(v: Values, id: string): Promise<number> {
  const report = await api<PlanReport>(v, 'GET', `/api/jobs/${encodeURIComponent(id)}/plan`);
  if (v.json) {
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    return 0;
  }
  const plan = report.plan;
  if (!plan) {
    process.stdout.write(`${id}: not planned yet\n`);
    return 0;
  }
  const ms = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(1));
  process.stdout.write(`${plan.explanation}\n${plan.refused ? `refused: ${plan.refused}\n` : ''}\n`);
  printTable(
    ['LAYOUT', 'MICRO', 'STAGES', 'STEP MS', 'BUBBLE MS', 'DP MS', 'TP MS', 'MEM MB', 'FITS'],
    plan.candidates.map((c) => [
      `${c.layout.data}×${c.layout.pipeline}×${c.layout.tensor}`, String(c.microBatches), c.stages.map(([a, b]) => `${a}-${b}`).join(','),
      ms(c.predicted.stepMs), ms(c.predicted.bubbleMs), ms(c.predicted.dataAllreduceMs), ms(c.predicted.tensorCommMs),
      ms(c.predicted.memoryBytesPerAgent / 1e6), c.feasible ? 'yes' : `no: ${c.reason ?? ''}`,
    ]),
  );
  process.stdout.write(`\npredicted ${ms(report.predictedStepMs)} ms per step, measured ${ms(report.measuredStepMs)} ms (median of ${report.measuredSteps} steps)\n`);
  return 0;
}

function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  process.stdout.write([line(header), ...rows.map(line)].join('\n') + '\n');
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (err instanceof UsageError) {
    process.stderr.write(`coordinator: ${err.message}\nRun 'coordinator --help' for usage.\n`);
    process.exitCode = 2;
  } else if (err instanceof CoordinatorError) {
    process.stderr.write(`coordinator: ${err.code}: ${err.message}\n`);
    process.exitCode = err.code === 'CRD_ERR_BAD_ARGS' ? 2 : 1;
  } else {
    process.stderr.write(`coordinator: ${(err as Error).message}\n`);
    process.exitCode = 1;
  }
}
setTimeout(() => process.exit(), 100).unref();
