/**
 * npm run demo [-- --agents 2] [--steps 500] [--preset tiny|gpt2-small] [--keep]
 *
 * The main job, on this machine alone: starts a coordinator and N node agents as separate processes on loopback,
 * checks the ring (all-reduce self-check), pre-trains a small GPT data-parallel on real English text (the U.S.
 * State of the Union addresses), fine-tunes it briefly with SFT on a handful of chat examples, registers both,
 * serves them with the gateway and prints a completion from the first and chat answers from the second. Progress
 * is shown live throughout, in the terminal and on the coordinator's dashboard (its URL and login token are
 * printed first). Everything it starts, it stops: at the end, or with --keep when you press Ctrl-C.
 *
 * `--preset gpt2-small` tells the same story at GPT-2-small's shape: tens of minutes on 2 cores, see the README.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { intOption, parseCli, UsageError } from '../common/cli.ts';
import type { NodeView } from '../coordinator/cluster/agent-hub.ts';
import type { JobRecord, MetricRow } from '../coordinator/store/job-store.ts';
import type { ModelVersion } from '../coordinator/registry/registry.ts';
import { printSelfcheck, type SelfcheckReport } from '../coordinator/cluster/selfcheck.ts';
import { SYSTEM, writeChatExamples } from './demo-chat.ts';
import { startCluster } from './local-cluster.ts';

/**
 * What each preset trains. Both use the demo's own byte-level BPE tokenizer, trained on the corpus when the job
 * starts (about a second); `gpt2-small` has GPT-2-small's blocks and context but not its 50,257-token vocabulary,
 * which would need GPT-2's tokenizer imported as a model version first (see the README).
 */
const PRESETS = {
  tiny: {
    model: { vocabSize: 1024, nCtx: 128, nLayer: 2, nHead: 4, nEmbd: 64 }, // 0.17 M parameters
    steps: 500,
    batchPerAgent: 4, // sequences per agent per step, × seqLen tokens
    seqLen: 128,
    lr: 3e-3, // peak, then cosine to minLr
    minLr: 3e-4,
    sft: { steps: 80, batchPerAgent: 4, seqLen: 96, lr: 3e-3, minLr: 3e-4 }, // the chat examples are ≤ 80 tokens
  },
  'gpt2-small': {
    model: { vocabSize: 8192, nCtx: 1024, nLayer: 12, nHead: 12, nEmbd: 768 }, // 92.1 M parameters (GPT-2's vocabulary: 124.4 M)
    steps: 40, // ~30–70 s a step on 2 cores
    batchPerAgent: 1, // a global batch of 2 on 2 agents
    seqLen: 256,
    lr: 6e-4, // GPT-2-small's
    minLr: 6e-5,
    sft: { steps: 20, batchPerAgent: 1, seqLen: 96, lr: 3e-4, minLr: 3e-5 }, // ~3 passes over the examples
  },
} as const;
type PresetName = keyof typeof PRESETS;

function options() {
  const { values } = parseCli(process.argv.slice(2), { agents: { type: 'string' }, steps: { type: 'string' }, preset: { type: 'string' }, keep: { type: 'boolean' } });
  const name = (values.preset ?? 'tiny') as PresetName;
  if (!Object.hasOwn(PRESETS, name)) throw new UsageError(`--preset must be one of ${Object.keys(PRESETS).join(', ')}, got '${values.preset}'`);
  const preset = PRESETS[name];
  return { preset, agents: intOption(values.agents, 'agents', 2, 1, 16), steps: intOption(values.steps, 'steps', preset.steps, 1, 100_000), keep: values.keep };
}
let opts: ReturnType<typeof options>;
try {
  opts = options();
} catch (err) {
  if (!(err instanceof UsageError)) throw err;
  process.stderr.write(`${err.message}\nusage: npm run demo [-- --agents 2] [--steps N] [--preset tiny|gpt2-small] [--keep]\n`);
  process.exit(2);
}
const { preset, agents, steps } = opts;
const seed = 1337; // initialisation, data order and which chat examples are held out
const say = (line: string) => process.stdout.write(line + '\n');
const started = performance.now();
const elapsed = () => `${((performance.now() - started) / 1000).toFixed(0)} s`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

say(`▶ starting a coordinator and ${agents} node agents (separate processes, loopback ports)…`);
const cluster = await startCluster({ agents: 0, logLevel: 'info', stderr: 'capture' });
say(`  coordinator at ${cluster.url} (state in ${cluster.dataDir})`);
say(`  dashboard: open ${cluster.url}/ and log in with the cluster token ${cluster.token}`);
for (let i = 0; i < agents; i++) cluster.startAgent(`agent-${i}`);
let shown = 0;
const follow = setInterval(() => {
  // Live progress: the coordinator's own log lines about joins, the self-check and the datasets.
  const lines = cluster.coordinator.output;
  for (; shown < lines.length; shown++) {
    const m = /\[coordinator:agents\] (node joined: .*)|\[coordinator\] (selfcheck: .*)|\[coordinator:jobs:[^\]]*\] (.*(?:dataset|examples).*)/.exec(lines[shown]!);
    if (m) say(`  ${m[1] ?? m[2] ?? m[3]}`);
  }
}, 50);
let gateway: ReturnType<typeof spawn> | undefined;
let stopping: Promise<void> | undefined;
const stopAll = () =>
  (stopping ??= (async () => {
    clearInterval(follow);
    gateway?.kill('SIGTERM');
    await cluster.stop();
  })());
// Ctrl-C in the middle (the gpt2-small preset takes a while) still stops everything this script started. It comes
// twice (the terminal signals the whole process group, and tsx relays it), so the handler stays for both.
let keepWaiting: (() => void) | undefined; // set while --keep waits for Ctrl-C
process.on('SIGINT', () => {
  if (keepWaiting) return keepWaiting();
  if (stopping) return;
  say('\n✘ interrupted; stopping the cluster.');
  void stopAll().then(() => process.exit(130));
});

/** Submits a job and shows its steps live until it ends; returns it once it has registered its model. */
async function runJob(spec: { name: string; training: { steps: number } }): Promise<{ job: JobRecord; firstLoss?: number; lastLoss?: number; lastEval?: number }> {
  const total = spec.training.steps;
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
        if (m.values.loss === undefined) continue; // a suite's row (sft: exact match), read from the version below
        lastEval = m.values.loss;
        say(`${tty ? '\r\x1b[K' : ''}  step ${m.step}: held-out loss ${m.values.loss.toFixed(3)} (perplexity ${m.values.perplexity!.toFixed(1)})`);
        continue;
      }
      firstLoss ??= m.values.loss;
      lastLoss = m.values.loss;
      lastStep = Math.max(lastStep, m.step);
      const line = `  step ${String(m.step).padStart(String(total).length)}/${total}  loss ${m.values.loss!.toFixed(3)}  ${Math.round(m.values.tokensPerS!)} tokens/s  step ${Math.round(m.values.stepMs!)} ms (compute ${Math.round(m.values.computeMs!)}, all-reduce ${Math.round(m.values.allreduceMs!)})`;
      if (tty) process.stdout.write(`\r\x1b[K${line}`);
      else if (m.step % Math.max(1, Math.floor(total / 20)) === 0 || m.step === total || m.step === 1) say(line);
    }
    if (job.state === 'succeeded') {
      if (tty) process.stdout.write('\n');
      return { job, firstLoss, lastLoss, lastEval };
    }
    if (job.state === 'failed' || job.state === 'cancelled') throw new Error(`${spec.name} ${job.state}: ${job.stateReason}`);
    const status = `  ${job.state}: ${job.stateReason}`;
    if (lastStep === 0 && status !== lastStatus) say(status);
    lastStatus = status;
    await sleep(500);
  }
}

/** POST /v1/chat/completions with stream: true, writing each piece of the answer as it arrives; returns the whole. */
async function streamChat(url: string, body: object, write: (text: string) => void): Promise<string> {
  const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }) });
  if (!res.ok) throw new Error(`chat failed: ${((await res.json()) as { error?: { message: string } }).error?.message}`);
  let text = '';
  let pending = '';
  for await (const bytes of res.body!.pipeThrough(new TextDecoderStream())) {
    pending += bytes;
    const events = pending.split('\n\n');
    pending = events.pop()!; // an event may arrive in pieces: keep the unfinished one
    for (const event of events) {
      const data = event.replace(/^data: /, '');
      if (data === '[DONE]') return text;
      const piece = (JSON.parse(data) as { choices: Array<{ delta: { content?: string } }> }).choices[0]?.delta.content ?? '';
      text += piece;
      write(piece);
    }
  }
  return text;
}

try {
  await cluster.waitForNodes(agents, 120_000);
  const { nodes } = await cluster.api<{ nodes: NodeView[] }>('GET', '/api/nodes');
  say(`✔ ${nodes.length} agents joined: ${nodes.map((n) => `${n.name} ${n.capabilities.backend} ${n.capabilities.matmulGflops} GFLOP/s`).join(', ')}`);

  say('▶ ring self-check over direct agent-to-agent links…');
  const check = await cluster.api<SelfcheckReport>('POST', '/api/selfcheck', { elements: [0, 1, 1_000_003] });
  await sleep(100); // let the live lines above catch up
  const lines: string[] = [];
  printSelfcheck(check, (line) => lines.push(line));
  for (const line of lines.slice(1)) if (line.startsWith('FAIL') || line.startsWith('self-check')) say(`${check.ok ? '✔' : '✘'} ${line}`);
  if (!check.ok) throw new Error('the ring self-check failed');

  // 1. Pre-training on the corpus.
  const { model } = preset;
  const shape = `${model.nLayer} layers, d=${model.nEmbd}, ${model.nHead} heads, context ${model.nCtx}, vocabulary ${model.vocabSize}`;
  const batchSize = preset.batchPerAgent * agents;
  const pretrain = {
    name: 'demo-gpt',
    model,
    data: { corpus: 'demo' },
    training: { steps, batchSize, seqLen: preset.seqLen, seed, lr: preset.lr, minLr: preset.minLr, warmupSteps: Math.min(20, Math.ceil(steps / 10)), evalEvery: Math.max(1, Math.floor(steps / 4)), evalBatches: 4, checkpointEvery: Math.max(1, Math.floor(steps / 2)) },
    parallel: { data: agents },
  };
  say(`▶ pre-training a GPT (${shape}) for ${steps} steps of ${batchSize} × ${preset.seqLen} tokens on the State of the Union corpus, data-parallel on ${agents} agents…`);
  const base = await runJob(pretrain);
  say(`✔ trained in ${elapsed()}: loss ${base.firstLoss?.toFixed(3)} → ${base.lastLoss?.toFixed(3)}${base.lastEval !== undefined ? `, held-out ${base.lastEval.toFixed(3)}` : ''}; registered demo-gpt v${base.job.modelVersion} in ${join(cluster.dataDir, 'registry', 'demo-gpt')}`);

  // 2. SFT from it on a handful of chat examples; the job's suite asks the ones it holds out.
  const heldOutFraction = 0.1;
  const chat = writeChatExamples(join(cluster.dataDir, 'demo-chat.jsonl'), seed, heldOutFraction);
  const { sft } = preset;
  const sftSpec = {
    name: 'demo-chat',
    kind: 'sft',
    init: { from: `demo-gpt@${base.job.modelVersion}` },
    model,
    data: { corpus: chat.path, heldOutFraction },
    training: { steps: sft.steps, batchSize: sft.batchPerAgent * agents, seqLen: sft.seqLen, seed, lr: sft.lr, minLr: sft.minLr, evalBatches: 1 },
    parallel: { data: agents },
    eval: { maxNewTokens: 24 },
  };
  say(`▶ fine-tuning it (SFT) for ${sft.steps} steps on ${chat.taught.length} chat examples (system + question → answer; ${chat.heldOut.length} more held out), loss on the answers only…`);
  const tuned = await runJob(sftSpec);
  const version = await cluster.api<ModelVersion>('GET', `/api/models/demo-chat/versions/${tuned.job.modelVersion}`);
  const suite = version.lineage.metrics ?? {};
  say(`✔ fine-tuned in ${elapsed()}: answer loss ${tuned.firstLoss?.toFixed(3)} → ${tuned.lastLoss?.toFixed(3)}; exact match on the held-out questions ${Math.round((suite.exactMatch ?? 0) * (suite.examples ?? 0))} of ${suite.examples ?? 0}; registered demo-chat v${tuned.job.modelVersion}, its lineage's parent ${version.lineage.parent ? `${version.lineage.parent.name} v${version.lineage.parent.version}` : 'missing'}`);

  // 3. Serving both.
  say('▶ serving both with the gateway (OpenAI-compatible /v1/completions and /v1/chat/completions)…');
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
  say(`✔ demo-gpt, ${url}/v1/completions → "${prompt}${completion.choices![0]!.text}"`);

  // A taught question, answered whole, then a held-out one (never trained on), streamed as it is generated.
  const ask = (question: string) => ({ model: 'demo-chat', messages: [{ role: 'system', content: SYSTEM }, { role: 'user', content: question }], max_tokens: 32, temperature: 0 });
  const taught = chat.taught[0]!.question;
  const chatRes = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(ask(taught)) });
  const answer = (await chatRes.json()) as { choices?: Array<{ message: { content: string }; finish_reason: string }>; error?: { message: string } };
  if (!chatRes.ok) throw new Error(`chat failed: ${answer.error?.message}`);
  say(`✔ demo-chat, ${url}/v1/chat/completions (system: "${SYSTEM}")`);
  say(`  user: ${taught}   (taught)`);
  say(`  assistant: ${answer.choices![0]!.message.content}   (finish_reason ${answer.choices![0]!.finish_reason})`);
  for (const { question, answer: expected } of chat.heldOut.slice(0, 1)) {
    say(`  user: ${question}   (held out, never trained on; its example's answer: "${expected}")`);
    process.stdout.write('  assistant (streamed): ');
    await streamChat(url, ask(question), (piece) => process.stdout.write(piece));
    process.stdout.write('\n');
  }
  if (opts.keep) {
    say(`✔ done in ${elapsed()}. The cluster keeps running: dashboard ${cluster.url}/ (token ${cluster.token}), gateway ${url}. Ctrl-C stops it.`);
    await new Promise<void>((resolve) => (keepWaiting = resolve));
  }
  say(`✔ done in ${elapsed()}; stopping the cluster.`);
} catch (err) {
  if (stopping) await stopping.then(() => process.exit(130)); // interrupted: what failed was the cluster going away
  say(`✘ ${(err as Error).message}`);
  say('  coordinator log (last lines):\n' + cluster.coordinator.output.slice(-15).join('\n'));
  process.exitCode = 1;
} finally {
  await stopAll();
}
