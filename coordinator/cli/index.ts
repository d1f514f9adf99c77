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
 * Entry point of bin/coordinator.js. The commands that call a running coordinator live beside it (jobs.ts,
 * models.ts, nodes.ts, runs.ts), all through client.ts, the one API client; `start`'s options are declared in
 * ../config.ts. Exit codes: 0 ok, 1 error or failed self-check, 2 bad arguments.
 */
import { createLogger } from '../../common/log.ts';
import { UsageError } from '../../common/cli.ts';
import { parseCommandLine } from '../../common/options.ts';
import { initTracing } from '../../common/tracing.ts';
import { resolveConfig, COORDINATOR_OPTIONS } from '../config.ts';
import { CoordinatorError } from '../errors.ts';
import { createCoordinator } from '../api/server.ts';
import { CLIENT_OPTIONS, cliIo, type Values } from './client.ts';
import { listJobs, replan, showJob, showPlan, submit, watchJob } from './jobs.ts';
import { importModel, listModels, mergeModel, quantizeModel } from './models.ts';
import { nodes, revoke, selfcheck } from './nodes.ts';
import { runsCommand, sweepCommand } from './runs.ts';

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

Options for start (the coordinator's configuration, coordinator/config.ts):
${COORDINATOR_OPTIONS.help()}
Options for nodes, selfcheck, submit, jobs, job, plan, replan, models, runs and sweep:
${CLIENT_OPTIONS.help()}  -h, --help                show this help

Examples:
  coordinator start --data ./cluster
  node-agent join ws://127.0.0.1:7070 --token <token>
  coordinator selfcheck --token <token>
`;

async function main(argv: string[]): Promise<number> {
  // `data …` has its own options (a repeatable --source): coordinator/cli/data-prepare.ts parses them.
  if (argv[0] === 'data') return (await import('./data-prepare.ts')).dataCommand(argv.slice(1));
  const { values, positionals } = parseCommandLine('coordinator', argv, [COORDINATOR_OPTIONS, CLIENT_OPTIONS]);
  const [command, ...rest] = positionals;
  if (values.help || !command) {
    process.stdout.write(HELP);
    return values.help ? 0 : 2;
  }
  if (command === 'start') {
    if (rest.length) throw new UsageError(`unexpected argument '${rest[0]}'`);
    return start(values);
  }
  const io = cliIo(values);
  if (command === 'runs' || command === 'sweep') return command === 'runs' ? runsCommand(io, values, rest) : sweepCommand(io, values, rest);
  const args = command === 'models' && (rest[0] === 'quantize' || rest[0] === 'merge') ? 3 : command === 'models' && rest[0] === 'import' ? 2 : command === 'replan' || (command === 'nodes' && rest[0] === 'revoke') ? 2 : command === 'submit' || command === 'job' || command === 'plan' ? 1 : 0;
  if (rest.length !== args) throw new UsageError(args ? `'${command}' takes exactly ${args} argument${args > 1 ? 's' : ''}` : `unexpected argument '${rest[0]}'`);
  switch (command) {
    case 'submit':
      return submit(io, values, rest[0]!);
    case 'jobs':
      return listJobs(io, values);
    case 'job':
      return values.watch ? watchJob(io, values, rest[0]!) : showJob(io, values, rest[0]!);
    case 'plan':
      return showPlan(io, values, rest[0]!);
    case 'replan':
      return replan(io, values, rest[0]!, rest[1]!);
    case 'nodes':
      return rest[0] === 'revoke' ? revoke(io, values, rest[1]!) : nodes(io, values);
    case 'selfcheck':
      return selfcheck(io, values);
    case 'models':
      if (rest[0] === 'import') return importModel(io, values, rest[1]!);
      return rest[0] === 'quantize' ? quantizeModel(io, values, rest[1]!, rest[2]!) : rest[0] === 'merge' ? mergeModel(io, values, rest[1]!, rest[2]!) : listModels(io, values);
    default:
      throw new UsageError(`unknown command '${command}'; commands: start, nodes, selfcheck, submit, jobs, job, plan, replan, runs, sweep, models`);
  }
}

async function start(v: Values): Promise<number> {
  const cfg = resolveConfig(COORDINATOR_OPTIONS.fromArgs(v)); // flags (and MESHTRAIN_TOKEN) over the defaults, checked once
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
