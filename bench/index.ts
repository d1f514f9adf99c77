/**
 * npm run bench -- NAME [options]
 *
 * Runs one benchmark. Each prints progress on stderr and one JSON object as the last line of stdout.
 *   codec       the protocol's decode path (decodeFrame + schema parse) with msgpackr's native extractor vs its JS decoder
 *   transport   raw TCP vs ws point-to-point throughput between two processes (tcp_gbps, ws_gbps, ratio)
 *   allreduce   ring all-reduce among real agent processes vs what the same ring's links carry
 *   matmul      wasm BatchMatMul: stock vs fast kernel (model/kernels) on a GPT step's shapes; GFLOP/s, speedup,
 *               whole-step time
 *   train-step  one agent's training step on the reference config: tokens/s, model FLOP/s vs the matmul peak
 *   pipeline    a pure-pipeline job on real agents: the measured bubble vs (p − 1)/(m + p − 1), per-stage busy time
 *   plan        the planner's predicted step time vs the measured one, for several pinned layouts on 4 agents
 *   share       how n processes training at once on this machine slow each other (the planner's agentCores)
 *   gateway     real gateway processes: overhead vs direct calls, throughput, batching, shadow cost, failures on switch
 *   recovery    an agent killed mid-job: detection and resume time, steps lost, checkpointing's cost per step
 *   stages      the model's life on a real cluster: data prep recalls, pretrain → SFT (exact-match) and LoRA (gain
 *               ratio, parameter share) → DPO (win-rate, perplexity change) and distillation (score ratio), INT8
 *   scale       a published-size model's life on 2 agents: import, data-parallel fine-tune, kill -9 and resume,
 *               register, INT8, serve, 2 pipeline stages; step time, peak RSS, checkpoint/resume/serve timings
 *               (--preset tiny | gpt2-small)
 *   wan         training over shaped links (tbf + a delaying proxy, agents in network namespaces): plain f32 data
 *               parallelism vs bf16 gradients vs DiLoCo; wall time, compute utilisation, bytes/step, held-out loss
 *               (--mbit 100 --rtt-ms 50; needs root)
 */
const benches: Record<string, () => Promise<{ default: (argv: string[]) => Promise<object> }>> = {
  codec: () => import('./codec.ts'),
  transport: () => import('./transport.ts'),
  allreduce: () => import('./allreduce.ts'),
  matmul: () => import('./matmul.ts'),
  'train-step': () => import('./train-step.ts'),
  pipeline: () => import('./pipeline.ts'),
  plan: () => import('./plan.ts'),
  share: () => import('./share.ts'),
  gateway: () => import('./gateway.ts'),
  recovery: () => import('./recovery.ts'),
  stages: () => import('./stages.ts'),
  scale: () => import('./scale.ts'),
  'serve-loop': () => import('./serve-loop.ts'),
  wan: () => import('./wan.ts'),
};

const [name, ...argv] = process.argv.slice(2);
const load = name ? benches[name] : undefined;
if (!load) {
  console.error(`usage: npm run bench -- NAME [options]\n  NAME: ${Object.keys(benches).join(', ')}`);
  process.exit(2);
}
const result = await (await load()).default(argv);
process.stdout.write(JSON.stringify(result) + '\n');
process.exit(0);
