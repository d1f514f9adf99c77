/**
 * npm run demo [-- --agents 2] [--steps 500] [--keep]
 *
 * The main job, on this machine alone: starts a coordinator and N node agents as separate processes on loopback,
 * checks the ring (all-reduce self-check), trains a small GPT data-parallel on real English text (the U.S. State
 * of the Union addresses), registers it, serves it with the gateway and prints a completion from it. Progress is
 * shown live throughout, in the terminal and on the coordinator's dashboard (its URL and login token are printed
 * first). Everything it starts, it stops: at the end, or with --keep when you press Ctrl-C.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { intOption, parseCli } from '../common/cli.ts';
import type { NodeView } from '../coordinator/agent-hub.ts';
import type { JobRecord, MetricRow } from '../coordinator/job-store.ts';
import { printSelfcheck, type SelfcheckReport } from '../coordinator/selfcheck.ts';
import { startCluster } from './local-cluster.ts';

const { values } = parseCli(process.argv.slice(2), { agents: { type: 'string' }, steps: { type: 'string' }, keep: { type: 'boolean' } });
const agents = intOption(values.agents, 'agents', 2, 1, 16);
const steps = intOption(values.steps, 'steps', 500, 1, 100_000);
const say = (line: string) => process.stdout.write(line + '\n');
const started = performance.now();
const elapsed = () => `${((performance.now() - started) / 1000).toFixed(0)} s`;

say(`▶ starting a coordinator and ${agents} node agents (separate processes, loopback ports)…`);
const cluster = await startCluster({ agents: 0, logLevel: 'info', stderr: 'capture' });
say(`  coordinator at ${cluster.url} (state in ${cluster.dataDir})`);
say(`  dashboard: open ${cluster.url}/ and log in with the cluster token ${cluster.token}`);
for (let i = 0; i < agents; i++) cluster.startAgent(`agent-${i}`);
let shown = 0;
const follow = setInterval(() => {
  // Live progress: the coordinator's own log lines about joins, the self-check and the dataset.
  const lines = cluster.coordinator.output;
  for (; shown < lines.length; shown++) {
    const m = /\[coordinator:agents\] (node joined: .*)|\[coordinator\] (selfcheck: .*)|\[coordinator:jobs:[^\]]*\] (.*dataset.*)/.exec(lines[shown]!);
    if (m) say(`  ${m[1] ?? m[2] ?? m[3]}`);
  }
}, 50);
let gateway: ReturnType<typeof spawn> | undefined;

try {
  await cluster.waitForNodes(agents, 120_000);
  const { nodes } = await cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes');
  say(`✔ ${nodes.length} agents joined: ${nodes.map((n) => `${n.name} ${n.capabilities.backend} ${n.capabilities.matmulGflops} GFLOP/s`).join(', ')}`);

  say('▶ ring self-check over direct agent-to-agent links…');
  const check = await cluster.api<SelfcheckReport>('POST', '/api/selfcheck', { elements: [0, 1, 1_000_003] });
  await new Promise((r) => setTimeout(r, 100)); // let the live lines above catch up
  const lines: string[] = [];
  printSelfcheck(check, (line) => lines.push(line));
  for (const line of lines.slice(1)) if (line.startsWith('FAIL') || line.startsWith('self-check')) say(`${check.ok ? '✔' : '✘'} ${line}`);
  if (!check.ok) throw new Error('the ring self-check failed');

  const spec = {
    name: 'demo-gpt',
    model: { vocabSize: 1024, nCtx: 64, nLayer: 2, nHead: 4, nEmbd: 64 },
    data: { corpus: 'demo' },
    training: { steps, batchSize: 8 * agents, seqLen: 64, lr: 3e-3, minLr: 3e-4, warmupSteps: Math.min(20, steps), evalEvery: Math.max(1, Math.floor(steps / 4)), evalBatches: 4, checkpointEvery: Math.max(1, Math.floor(steps / 2)) },
    parallel: { data: agents },
  };
  say(`▶ training a GPT (2 layers, d=64, context 64, vocabulary 1024) for ${steps} steps on the State of the Union corpus, data-parallel on ${agents} agents…`);
  const submitted = await cluster.api<JobRecord>('POST', '/api/jobs', spec);
  let lastStep = 0;
  let firstLoss: number | undefined;
  let lastLoss: number | undefined;
  let lastEval: number | undefined;
  const tty = process.stdout.isTTY;
  let lastStatus = '';
  for (;;) {
    const { job, metrics } = await cluster.api<{ job: JobRecord; metrics: MetricRow[] }>('GET', `/api/jobs/${submitted.id}?after=${lastStep}`);
    for (const m of metrics) {
      if (m.kind === 'eval') {
        lastEval = m.values.loss;
        say(`${tty ? '\r\x1b[K' : ''}  step ${m.step}: held-out loss ${m.values.loss!.toFixed(3)} (perplexity ${m.values.perplexity!.toFixed(1)})`);
        continue;
      }
      firstLoss ??= m.values.loss;
      lastLoss = m.values.loss;
      lastStep = Math.max(lastStep, m.step);
      const line = `  step ${String(m.step).padStart(String(steps).length)}/${steps}  loss ${m.values.loss!.toFixed(3)}  ${Math.round(m.values.tokensPerS!)} tokens/s  step ${Math.round(m.values.stepMs!)} ms (compute ${Math.round(m.values.computeMs!)}, all-reduce ${Math.round(m.values.allreduceMs!)})`;
      if (tty) process.stdout.write(`\r\x1b[K${line}`);
      else if (m.step % Math.max(1, Math.floor(steps / 20)) === 0 || m.step === steps) say(line);
    }
    if (job.state === 'succeeded') {
      if (tty) process.stdout.write('\n');
      say(`✔ trained in ${elapsed()}: loss ${firstLoss?.toFixed(3)} → ${lastLoss?.toFixed(3)}${lastEval !== undefined ? `, held-out ${lastEval.toFixed(3)}` : ''}; registered ${job.name} v${job.modelVersion} in ${join(cluster.dataDir, 'registry', job.name)}`);
      break;
    }
    if (job.state === 'failed' || job.state === 'cancelled') throw new Error(`training ${job.state}: ${job.stateReason}`);
    const status = `  ${job.state}: ${job.stateReason}`;
    if (lastStep === 0 && status !== lastStatus) say(status);
    lastStatus = status;
    await new Promise((r) => setTimeout(r, 500));
  }

  say('▶ serving it with the gateway (OpenAI-compatible /v1/completions)…');
  // Reading models through the coordinator's API with an admin key, the gateway announces itself to the
  // coordinator: the dashboard's Gateways panel shows its deployments.
  const gatewayArgs = ['serve', '--registry', cluster.url, '--port', '0', '--host', '127.0.0.1', '--name', 'demo-gateway'];
  gateway = spawn(process.execPath, [new URL('../bin/gateway.js', import.meta.url).pathname, ...gatewayArgs], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, LOG_LEVEL: 'warn', MESHTRAIN_TOKEN: cluster.token, MESHTRAIN_GATEWAY_ADMIN_KEY: randomBytes(16).toString('hex') },
  });
  const url = await new Promise<string>((resolve, reject) => {
    createInterface({ input: gateway!.stdout! }).on('line', (l) => {
      const m = /gateway listening on (\S+)/.exec(l);
      if (m) resolve(m[1]!);
    });
    gateway!.on('exit', (code) => reject(new Error(`the gateway exited with ${code}`)));
  });
  const prompt = 'The Congress of the United States';
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'demo-gpt', prompt, max_tokens: 48, temperature: 0.8, top_p: 0.95, seed: 7 }),
  });
  const completion = (await res.json()) as { choices?: Array<{ text: string }>; error?: { message: string } };
  if (!res.ok) throw new Error(`completion failed: ${completion.error?.message}`);
  say(`✔ ${url}/v1/completions → "${prompt}${completion.choices![0]!.text}"`);
  if (values.keep) {
    say(`✔ done in ${elapsed()}. The cluster keeps running: dashboard ${cluster.url}/ (token ${cluster.token}), gateway ${url}. Ctrl-C stops it.`);
    await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
  }
  say(`✔ done in ${elapsed()}; stopping the cluster.`);
} catch (err) {
  say(`✘ ${(err as Error).message}`);
  say('  coordinator log (last lines):\n' + cluster.coordinator.output.slice(-15).join('\n'));
  process.exitCode = 1;
} finally {
  clearInterval(follow);
  gateway?.kill('SIGTERM');
  await cluster.stop();
}
