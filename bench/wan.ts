/**
 * npm run bench -- wan [--mbit 100] [--rtt-ms 50] [--steps 80] [--inner-steps 20] [--batch 8] [--ways f32,bf16,diloco]
 *                      [--seed 1] [--quick]
 *
 * Training over slow, distant links, three ways, on real processes. Two agents run in network namespaces joined by
 * veth pairs to a bridge (test/support/netns.ts); each link is capped at --mbit both ways with tbf. These kernels
 * have no netem, so latency comes from a delaying TCP proxy (test/support/delay-proxy.ts): one per agent, in the
 * root namespace on the bridge, in front of the agent's peer port, adding --rtt-ms / 2 each way. Every agent
 * advertises its proxy (--peer-advertise), so every agent-to-agent byte crosses both agents' shaped links and gains
 * the round-trip time. The coordinator sits on the bridge too (control traffic is shaped, not delayed).
 * The same model is trained for the same tokens (steps, batch, seqLen, seed) three ways, one after the other:
 *   f32      plain data parallelism, gradients all-reduced as float32 every step (training.gradientWire 'f32')
 *   bf16     the same with the all-reduce traffic in bf16 (gradientWire 'bf16')
 *   diloco   DiLoCo: each replica takes --inner-steps (H) AdamW steps alone, then the replicas all-reduce their
 *            pseudo-gradients in bf16 and take one outer Nesterov step (training.diloco, gradientWire 'bf16')
 * Each way evaluates the held-out split at its last step (evalEvery = steps, a multiple of H). Per way:
 *   wall_s               training wall time: the end of the last step − the first step's start, on the coordinator's
 *                        clock (first step: its report's time − its stepMs; last: the report before it + its stepMs,
 *                        because its own report waits for the held-out evaluation every job ends with: the same
 *                        forward passes in every way, reported apart as final_eval_s)
 *   compute_utilisation  per rank: Σ over steps of its computeMs (forward + backward + optimizer, the agent's own
 *                        meshtrain_agent_step_phase_seconds{phase="compute"} sum) ÷ wall_s; the mean over ranks
 *   bytes_per_step       bytes the agents sent each other, per step per rank: what the delay proxies delivered
 *                        during the job (both directions, every agent-to-agent connection: gradient or
 *                        pseudo-gradient ring, the per-step world sums, ws framing) ÷ steps ÷ ranks
 *   ring_bytes_per_step  the same as the agents account it (meshtrain_agent_allreduce_bytes_total{ring="data"})
 *   compute_s_per_step, allreduce_s_per_step  the mean rank's phases per step (allreduce: rings, waits included);
 *                        step_s its whole step; between_steps_s wall_s ÷ steps − step_s: time outside any step
 *   heldout_loss         the job's held-out loss at the last step; train_loss the last step's training loss
 *   tokens_per_s         steps × batch × seqLen ÷ wall_s; job_s submission → succeeded (data prep, start-up,
 *                        the final checkpoint's upload included)
 *   wire_check           bytes_per_step ÷ f32's against what the way should send (bf16 ½, DiLoCo ½ ÷ H): a way
 *                        whose code has not landed runs as plain f32 and is flagged here, not silently counted
 * A way that fails is reported as {ok: false, error} and the others still run.
 * Targets (judged on the ways that ran): f32 communication-bound (allreduce_s_per_step > compute_s_per_step) with
 * compute_utilisation < 0.5, DiLoCo's ≥ 0.9, DiLoCo's heldout_loss at most 5 % above f32's; foreign_cores says how
 * busy other processes kept the machine (a busy machine slows compute, not the shaped links, and moves every ratio).
 * Sizes: the model (4 × 256, vocabulary 4096: 4.2 M parameters, a 16.8 MB float32 gradient: ~1.7–2 s to all-reduce
 * at 100 Mbit/s) and batch (8 × 64: 256 tokens a rank, 6.5 GFLOP a step: ~0.75 s at the 8.8 model GFLOP/s that
 * `bench train-step` measures on an idle core) make f32 data parallelism all-reduce for longer than it computes; H = 20
 * makes a DiLoCo round's bf16 pseudo-gradient (~1 s) a small share of its 20 steps, and 80 steps give it 4 rounds.
 * Other work on the machine slows compute but not the links, so it moves every ratio: --batch (global sequences)
 * resizes the compute per step. --quick: 20 steps, H 10 (a smoke run: too few rounds to judge).
 * Needs root, iproute2 (ip, tc) and nftables (nft): `npm run setup` installs them.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { intOption, parseCli, UsageError } from '../common/cli.ts';
import type { JobRecord } from '../coordinator/store/job-store.ts';
import { startCluster, type LocalCluster } from '../scripts/local-cluster.ts';
import { DelayProxy } from '../test/support/delay-proxy.ts';
import { writeCorpus, type JobView } from '../test/support/jobs.ts';
import { createNetwork, netnsProblems, type Network } from '../test/support/netns.ts';
import { parseExposition } from '../test/support/prometheus.ts';
import { cpuSeconds, foreignCores } from './plan.ts';

const AGENTS = 2;
const PEER_PORT = 7070; // every agent has its own namespace, so they can all listen on the same one
const MODEL = { vocabSize: 4096, nCtx: 64, nLayer: 4, nHead: 4, nEmbd: 256 }; // 4.2 M parameters: 16.8 MB of float32 gradient
const BATCH = 8; // global batch, sequences (4 per rank: 256 tokens)
const SEQ_LEN = 64;
const WAYS = ['f32', 'bf16', 'diloco'] as const;
type Way = (typeof WAYS)[number];
const TARGETS = { f32_utilisation_below: 0.5, diloco_utilisation_at_least: 0.9, diloco_loss_within: 0.05 };

const round3 = (x: number) => Math.round(x * 1000) / 1000;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Setup {
  steps: number;
  batch: number; // global, sequences
  innerSteps: number;
  seed: number;
  corpus: string;
}

interface AgentFigures {
  computeS: number; // Σ computeMs of the job's steps on this rank, in seconds
  allreduceS: number;
  stepS: number; // Σ stepMs
  steps: number;
  ringBytes: number; // data ring bytes sent to the successor
  outerSteps: number; // DiLoCo synchronisations
}

export type WayResult =
  | { ok: true; [k: string]: unknown }
  | { ok: false; error: string; [k: string]: unknown };

function jobSpec(way: Way, s: Setup): object {
  return {
    name: `wan-${way}`,
    model: MODEL,
    data: { corpus: s.corpus, heldOutFraction: 0.1 },
    training: {
      steps: s.steps, batchSize: s.batch, seqLen: SEQ_LEN, seed: s.seed, lr: 2e-3, warmupSteps: Math.min(5, s.steps),
      evalEvery: s.steps, checkpointEvery: 0,
      evalBatches: 32, // enough held-out tokens that a 5 % gap is more than the noise
      gradientWire: way === 'f32' ? 'f32' : 'bf16',
      ...(way === 'diloco' ? { diloco: { innerSteps: s.innerSteps } } : {}),
    },
    parallel: { data: AGENTS },
  };
}

/** One job's figures from each agent's own counters (GET /metrics on its peer port, reached directly, not proxied). */
async function agentFigures(net: Network, jobId: string): Promise<AgentFigures[]> {
  return Promise.all(net.hosts.map(async (h) => {
    const res = await fetch(`http://${h.address}:${PEER_PORT}/metrics`);
    const families = parseExposition(await res.text());
    const series = (name: string, labels: Record<string, string>) =>
      families.get(name)?.series.find((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v));
    const phase = (p: string) => series('meshtrain_agent_step_phase_seconds', { job: jobId, phase: p })?.sum ?? 0;
    const step = series('meshtrain_agent_step_duration_seconds', { job: jobId });
    return {
      computeS: phase('compute'),
      allreduceS: phase('allreduce'),
      stepS: step?.sum ?? 0,
      steps: step?.count ?? 0,
      ringBytes: series('meshtrain_agent_allreduce_bytes_total', { job: jobId, ring: 'data' })?.value ?? 0,
      outerSteps: series('meshtrain_agent_diloco_outer_steps_total', { job: jobId })?.value ?? 0,
    };
  }));
}

const proxiedBytes = (proxies: DelayProxy[]) => proxies.reduce((a, p) => a + p.bytes.upstream + p.bytes.downstream, 0);

/** Submits one way's job, prints its steps on stderr as they come, and measures it. Throws if the job fails. */
async function runWay(way: Way, s: Setup, cluster: LocalCluster, net: Network, proxies: DelayProxy[]): Promise<WayResult> {
  const bytes0 = proxiedBytes(proxies);
  const cpu0 = cpuSeconds(cluster);
  const t0 = Date.now();
  const { id } = await cluster.api<JobRecord>('POST', '/api/jobs', jobSpec(way, s));
  let shown = 0, state = '';
  let v: JobView;
  for (;;) {
    v = await cluster.api<JobView>('GET', `/api/jobs/${id}`);
    if (v.job.state !== state) console.error(`${way}: job ${id} ${(state = v.job.state)}${v.job.stateReason ? ` (${v.job.stateReason})` : ''}`);
    for (const row of v.metrics.filter((m) => m.kind === 'train' && m.step > shown).sort((a, b) => a.step - b.step)) {
      const x = row.values;
      console.error(`${way}: step ${row.step}/${s.steps} loss ${x.loss!.toFixed(3)}, ${x.tokensPerS!.toFixed(0)} tokens/s ` +
        `(step ${(x.stepMs! / 1000).toFixed(2)} s: compute ${(x.computeMs! / 1000).toFixed(2)}, all-reduce ${(x.allreduceMs! / 1000).toFixed(2)})`);
      shown = row.step;
    }
    if (v.job.state === 'succeeded') break;
    if (v.job.state === 'failed' || v.job.state === 'cancelled') throw new Error(`the ${way} job ${v.job.state}: ${v.job.stateReason}`);
    if (Date.now() - t0 > 30 * 60_000) throw new Error(`the ${way} job did not finish in 30 minutes (state ${v.job.state}, step ${v.job.step})`);
    await sleep(250);
  }
  const jobS = (Date.now() - t0) / 1000;
  const foreign = foreignCores(cpu0, cpuSeconds(cluster));
  const wireBytes = proxiedBytes(proxies) - bytes0;
  const agents = await agentFigures(net, id);
  const train = v.metrics.filter((m) => m.kind === 'train').sort((a, b) => a.step - b.step);
  const first = train[0]!, last = train.at(-1)!;
  // The last step's report comes after the held-out evaluation that ends every job (the same forward passes in every
  // way: the bench's yardstick, not training), so training ends one step's time after the second-to-last report.
  const trainEndMs = train.length > 1 ? train.at(-2)!.atMs + last.values.stepMs! : last.atMs;
  const wallS = (trainEndMs - (first.atMs - first.values.stepMs!)) / 1000;
  const heldout = v.metrics.find((m) => m.kind === 'eval' && m.step === s.steps)?.values.loss;
  const perStep = (k: keyof AgentFigures) => mean(agents.map((a) => a[k] / Math.max(1, a.steps)));
  return {
    ok: true,
    job_id: id,
    steps: last.step,
    wall_s: round3(wallS),
    compute_utilisation: round3(mean(agents.map((a) => a.computeS / wallS))),
    bytes_per_step: Math.round(wireBytes / AGENTS / s.steps),
    ring_bytes_per_step: Math.round(perStep('ringBytes')),
    compute_s_per_step: round3(perStep('computeS')),
    allreduce_s_per_step: round3(perStep('allreduceS')),
    step_s: round3(perStep('stepS')),
    between_steps_s: round3(wallS / last.step - perStep('stepS')), // per step, outside every rank's step timeline
    heldout_loss: heldout === undefined ? null : round3(heldout),
    final_eval_s: round3((last.atMs - trainEndMs) / 1000),
    train_loss: round3(last.values.loss!),
    tokens_per_s: Math.round((s.steps * s.batch * SEQ_LEN) / wallS),
    job_s: round3(jobS),
    foreign_cores: foreign,
    agents_steps: agents.map((a) => a.steps),
    outer_steps: agents.map((a) => a.outerSteps),
  };
}

/**
 * What each way should send per step, relative to f32, and whether its bytes say it did (within 20 %: the per-step
 * world sums and framing are the rest). A way whose code is missing runs as something else and is named here.
 */
function wireCheck(way: Way, result: WayResult, f32: WayResult | undefined, innerSteps: number): object | null {
  if (way === 'f32' || !result.ok || !f32?.ok) return null;
  const expected = way === 'bf16' ? 0.5 : 0.5 / innerSteps;
  const ratio = (result.bytes_per_step as number) / (f32.bytes_per_step as number);
  const behaves = Math.abs(ratio / expected - 1) <= 0.2;
  const note = behaves ? null
    : ratio > 0.8 ? `sends as much as plain f32 data parallelism: the ${way} code looks absent (the job ran as f32 data parallelism)`
    : Math.abs(ratio / (2 * expected) - 1) <= 0.2 ? `sends twice what it should: its ${way === 'bf16' ? 'gradients' : 'pseudo-gradients'} travel as float32`
    : 'differs from what it should send';
  return { ratio_to_f32: round3(ratio), expected_ratio: round3(expected), as_expected: behaves, ...(note ? { note } : {}) };
}

export default async function main(argv: string[]): Promise<object> {
  const { values } = parseCli(argv, {
    mbit: { type: 'string' }, 'rtt-ms': { type: 'string' }, steps: { type: 'string' }, 'inner-steps': { type: 'string' },
    ways: { type: 'string' }, seed: { type: 'string' }, batch: { type: 'string' }, quick: { type: 'boolean' },
  });
  const quick = values.quick ?? false;
  const mbit = intOption(values.mbit, 'mbit', 100, 1, 100_000);
  const rttMs = intOption(values['rtt-ms'], 'rtt-ms', 50, 0, 10_000);
  const innerSteps = intOption(values['inner-steps'], 'inner-steps', quick ? 10 : 20, 1, 100_000);
  const steps = intOption(values.steps, 'steps', quick ? 20 : 80, 1, 1_000_000);
  if (steps % innerSteps !== 0) throw new UsageError(`--steps ${steps} must be a multiple of --inner-steps ${innerSteps}: every way evaluates at its last step, and DiLoCo's replicas agree on the weights only after a synchronisation`);
  const ways = (values.ways ?? WAYS.join(',')).split(',').map((w) => w.trim());
  for (const w of ways) if (!(WAYS as readonly string[]).includes(w)) throw new UsageError(`--ways: '${w}' is not one of ${WAYS.join(', ')}`);
  const seed = intOption(values.seed, 'seed', 1, 0, 2 ** 31 - 1);
  const batch = intOption(values.batch, 'batch', BATCH, AGENTS, 4096);
  if (batch % AGENTS !== 0) throw new UsageError(`--batch ${batch} must divide over the ${AGENTS} agents`);
  const problems = netnsProblems();
  if (problems.length) throw new Error(`the wan bench needs network namespaces: ${problems.join('; ')}`);

  const dir = mkdtempSync(join(tmpdir(), 'bench-wan-'));
  let net: Network | undefined, cluster: LocalCluster | undefined;
  const proxies: DelayProxy[] = [];
  let cleaned: Promise<void> | undefined;
  const cleanup = () => (cleaned ??= (async () => {
    await cluster?.stop().catch(() => {});
    await Promise.all(proxies.map((p) => p.close().catch(() => {})));
    net?.close();
    rmSync(dir, { recursive: true, force: true });
  })());
  // Ctrl-C or a kill: the namespaces, bridge and agents would outlive us otherwise.
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals) => {
    interrupted = true; // the ways still to run are not started; the one running fails as its cluster goes
    console.error(`wan: ${signal}, cleaning up…`);
    void cleanup().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const corpus = writeCorpus(dir, 0, 40);
    net = createNetwork('wan', Array.from({ length: AGENTS }, () => ({ mbit })));
    console.error(`wan: ${AGENTS} hosts on bridge ${net.bridgeAddress}, links ${mbit} Mbit/s, RTT ${rttMs} ms between agents (delay proxies)`);
    cluster = await startCluster({ agents: 0, coordinatorHost: net.bridgeAddress, stderr: 'capture', logLevel: 'info' });
    for (const [i, host] of net.hosts.entries()) {
      const proxy = await DelayProxy.listen({ host: net.bridgeAddress, port: 0, targetHost: host.address, targetPort: PEER_PORT, delayMs: rttMs / 2 });
      proxies.push(proxy);
      cluster.startAgent(`wan-${i}`, ['--peer-host', host.address, '--peer-port', String(PEER_PORT), '--peer-advertise', `ws://${net.bridgeAddress}:${proxy.port}`], {
        exec: host.exec, peerListen: '0.0.0.0',
      });
    }
    console.error('wan: waiting for the agents to join (each measures itself first)…');
    await cluster.waitForNodes(AGENTS, 300_000);
    const setup: Setup = { steps, batch, innerSteps, seed, corpus };
    const results: Partial<Record<Way, WayResult>> = {};
    for (const way of ways as Way[]) {
      if (interrupted) break;
      console.error(`wan: ${way}: ${steps} steps of ${batch} × ${SEQ_LEN} tokens${way === 'diloco' ? `, H = ${innerSteps} (${steps / innerSteps} rounds)` : ''}`);
      try {
        results[way] = await runWay(way, setup, cluster, net, proxies);
      } catch (err) {
        if (interrupted) break;
        results[way] = { ok: false, error: (err as Error).message };
        console.error(`wan: ${way} failed: ${(err as Error).message}`);
      }
      const r = results[way]!;
      if (r.ok) console.error(`wan: ${way}: wall ${r.wall_s} s, compute utilisation ${r.compute_utilisation}, ${r.bytes_per_step} bytes/step/rank, held-out loss ${r.heldout_loss}`);
    }
    for (const way of Object.keys(results) as Way[]) {
      const check = wireCheck(way, results[way]!, results.f32, innerSteps);
      if (check) results[way] = { ...results[way]!, wire_check: check };
    }
    return {
      bench: 'wan',
      link_mbit: mbit,
      rtt_ms: rttMs,
      agents: AGENTS,
      model: MODEL,
      batch_size: batch,
      seq_len: SEQ_LEN,
      steps,
      inner_steps: innerSteps,
      tokens: steps * batch * SEQ_LEN,
      ways: results,
      ...verdict(results),
    };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

/** The targets, judged where the ways they need ran (null where one did not). */
function verdict(r: Partial<Record<Way, WayResult>>): object {
  const f32 = r.f32?.ok ? r.f32 : undefined, diloco = r.diloco?.ok ? r.diloco : undefined;
  const num = (x: unknown) => (typeof x === 'number' ? x : NaN);
  const lossGap = f32 && diloco && f32.heldout_loss !== null && diloco.heldout_loss !== null
    ? round3(num(diloco.heldout_loss) / num(f32.heldout_loss) - 1) : null;
  return {
    targets: {
      f32_compute_utilisation: `< ${TARGETS.f32_utilisation_below}`,
      f32_comm_bound: 'allreduce_s_per_step > compute_s_per_step',
      diloco_compute_utilisation: `≥ ${TARGETS.diloco_utilisation_at_least}`,
      diloco_heldout_loss_vs_f32: `≤ +${TARGETS.diloco_loss_within * 100} %`,
    },
    diloco_heldout_loss_vs_f32: lossGap,
    met: {
      f32_compute_utilisation: f32 ? num(f32.compute_utilisation) < TARGETS.f32_utilisation_below : null,
      f32_comm_bound: f32 ? num(f32.allreduce_s_per_step) > num(f32.compute_s_per_step) : null,
      diloco_compute_utilisation: diloco ? num(diloco.compute_utilisation) >= TARGETS.diloco_utilisation_at_least : null,
      diloco_heldout_loss: lossGap === null ? null : lossGap <= TARGETS.diloco_loss_within,
    },
  };
}
